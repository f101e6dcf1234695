"""The model's prose without the code blocks oi is about to show on the approval screen. Pure.

On a terminal, a reply that proposes code would otherwise show it twice: streamed as fenced
text, then highlighted in the approval panel. A fence whose info string names a language oi
runs (```python, ```sh, ...) is replaced by one line saying the code follows; any other fence
(```json, ```text, an unlabelled one) is prose and stays. Text arrives in chunks, so
``CodeHider`` decides per line: a partial line that cannot open a fence (its first character
after indentation is not ` or ~) is prose and shows at once, as it streams; one that may is
held until it ends (a model's long sentence must not wait for its newline).
"""

from __future__ import annotations

import re

from orchestrator.errors import UnknownLanguageError
from orchestrator.languages import parse_language

_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")


def _runnable(info: str) -> str | None:
    """The language a fence's info string names, if oi runs it."""
    if not info:
        return None
    try:
        return parse_language(info).value
    except UnknownLanguageError:
        return None


class CodeHider:
    """Feed it the reply as it streams; it returns what to print."""

    def __init__(self) -> None:
        self._partial = ""  # the current line, held: it may open or close a fence
        self._prose = False  # the current line is prose and was partly shown already
        self._closing: str | None = None  # the fence that ends the code being hidden

    def feed(self, text: str) -> str:
        shown: list[str] = []
        *ended, rest = text.split("\n")
        for piece in ended:
            if self._prose:
                shown.append(piece + "\n")
            else:
                line = self._line(self._partial + piece)
                if line is not None:
                    shown.append(line + "\n")
            self._partial, self._prose = "", False
        if self._prose:
            shown.append(rest)
        else:
            self._partial += rest
            start = self._partial.lstrip(" \t")
            if self._closing is None and start and start[0] not in "`~":
                shown.append(self._partial)
                self._partial, self._prose = "", True
        return "".join(shown)

    def flush(self) -> str:
        """The end of the reply: a held partial line, unless it is hidden code."""
        rest, self._partial, self._prose = self._partial, "", False
        if self._closing is not None:
            self._closing = None
            return ""
        return rest

    def _line(self, line: str) -> str | None:
        """What to print for one whole line (None: nothing, not even its newline)."""
        match = _FENCE.match(line)
        if self._closing is not None:
            if match and match.group("fence").startswith(self._closing) and not match.group("info"):
                self._closing = None
            return None
        if match:
            language = _runnable(match.group("info"))
            if language is not None:
                self._closing = match.group("fence")
                return f"({language} code: shown below)"
        return line


def hide_code(text: str) -> str:
    """The whole (or partial) reply with runnable code blocks replaced (for markdown views)."""
    hider = CodeHider()
    return hider.feed(text) + hider.flush()
