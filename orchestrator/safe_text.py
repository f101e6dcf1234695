"""The one sanitizer for untrusted text on its way to a terminal. Pure.

Text from the model, a block, a session record or a file name must never act on the screen
(move the cursor, clear it, set the window title or the clipboard, open a hyperlink) and must
never hide what it contains (bidi overrides that reorder a line, zero-width characters).
Three cleaners, one table of what is hidden:

- ``visible_code`` / ``show_code``: code shown for approval. Every hidden character is
  replaced by its escape (``\\x1b``, ``\\r``, ``\\u202e``) and each kind gets a warning with
  its line numbers. Only the display changes: the caller runs and hashes the raw code.
- ``clean_text`` (prose: keeps newlines and tabs) and ``clean_line`` (one line: newlines and
  tabs shown as ``\\n``/``\\t``, so a file name cannot start a fake ``oi:`` line): model text,
  notices, reasons, file names, record contents. Hidden characters become escapes.
- ``clean_output``: block output. Keeps SGR colour (optional) and ``\\r`` (progress bars),
  drops every other control sequence and control character, escapes bidi/zero-width.

Escapes use Python's notation (``\\x1b``, ``\\u200b``, ``\\U000e0041``), which people who read
code recognise; renderers highlight them so they are not mistaken for typed text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["control", "bidi", "invisible", "separator", "surrogate"]

# Bidi controls reorder how a line displays (Trojan Source, CVE-2021-42574).
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# Unicode category Cf (format characters) as of Unicode 15, so that a newer Python's data still
# finds them all (tests/unit/test_safe_text.py checks this against unicodedata), minus bidi.
_FORMAT = (
    "\u00ad\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200d\u2060-\u2064"
    "\u206a-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f"
)
# Not category Cf, but shown as nothing by terminals and editors, which is how they are used to
# hide text: Hangul fillers, the combining grapheme joiner, Mongolian free variation selectors,
# Khmer inherent vowels, the braille blank, the variation selectors supplement (byte smuggling).
# U+FE00-FE0F stay: they pick a glyph form (emoji) and hide nothing.
_FILLERS = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164\uffa0\U000e0100-\U000e01ef"
)
_SEPARATORS = "\u2028\u2029"  # line/paragraph separator: a line break for some tools only
_SURROGATES = "\ud800-\udfff"  # lone surrogates (from JSON): not text, and unprintable
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0, DEL and C1, except tab and newline

_HIDDEN_UNICODE = _BIDI + _FORMAT + _FILLERS + _SEPARATORS + _SURROGATES
_HIDDEN = re.compile(f"[{_CONTROLS}{_HIDDEN_UNICODE}]")
_HIDDEN_IN_LINE = re.compile(f"[\t\n{_CONTROLS}{_HIDDEN_UNICODE}]")
# The same for ASCII text, the common case: a small class scans about three times faster.
_HIDDEN_ASCII = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_HIDDEN_IN_LINE_ASCII = re.compile("[\x00-\x1f\x7f]")
# Block output is decoded from bytes with errors="replace", so it holds no lone surrogates;
# leaving them out keeps xml_text (batch.py) free to show them its own way.
_HIDDEN_IN_OUTPUT = re.compile(f"[{_BIDI}{_FORMAT}{_FILLERS}{_SEPARATORS}]")
_IS_BIDI = re.compile(f"[{_BIDI}]")

_CONTROL_NAMES = {
    0x00: "NUL",
    0x07: "BEL",
    0x08: "BS",
    0x0B: "VT",
    0x0C: "FF",
    0x0D: "CR",
    0x1B: "ESC",
    0x7F: "DEL",
    0x90: "DCS",
    0x9B: "CSI",
    0x9D: "OSC",
}

_CONSEQUENCE: dict[Kind, str] = {
    "control": "a terminal would act on it (move, erase, redraw) instead of showing it",
    "bidi": "the code may display in another order than it runs",
    "invisible": "it is in the code but shows as nothing",
    "separator": "some editors break the line here, the interpreter may not",
    "surrogate": "not valid text; it cannot be displayed",
}
_MAX_LINES_LISTED = 6
_MAX_WARNINGS = 10


def escape_char(char: str) -> str:
    """The visible form of one hidden character: ``\\r``, ``\\x1b``, ``\\u202e``, ``\\U000e0041``
    (newline and tab too, for ``clean_line``)."""
    code = ord(char)
    if char in "\r\n\t":
        return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def char_kind(char: str) -> Kind:
    """Why a hidden character is hidden (for the warning)."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "control"
    if _IS_BIDI.match(char):
        return "bidi"
    if 0xD800 <= code <= 0xDFFF:
        return "surrogate"
    if char in _SEPARATORS:
        return "separator"
    return "invisible"


def _escape_match(match: re.Match[str]) -> str:
    return escape_char(match.group(0))


# --- prose and one-line messages ----------------------------------------------------------------


def clean_text(text: str) -> str:
    """Prose for a terminal (model text, record contents): newlines and tabs stay, every other
    control, bidi, invisible character becomes its escape; no escape sequence survives."""
    return (_HIDDEN_ASCII if text.isascii() else _HIDDEN).sub(_escape_match, text)


def clean_line(text: str) -> str:
    """One line for a terminal (notices, reasons, file names, error messages, table cells):
    like ``clean_text``, and newlines and tabs are shown as ``\\n``/``\\t`` so untrusted text
    cannot start a line of its own (a fake ``oi: finished``)."""
    pattern = _HIDDEN_IN_LINE_ASCII if text.isascii() else _HIDDEN_IN_LINE
    return pattern.sub(_escape_match, text)


# --- code shown for approval --------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """Where an escape stands in the shown code: line (1-based), columns [start, end)."""

    line: int
    start: int
    end: int


@dataclass(frozen=True)
class ShownCode:
    """Code as displayed: ``text`` (escapes in place of hidden characters), one warning per
    kind of hidden character, and ``marks`` so a renderer can highlight each escape."""

    text: str
    warnings: list[str] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


def show_code(code: str) -> ShownCode:
    """The display form of code to approve (see ``visible_code``), with escape positions."""
    shown_lines: list[str] = []
    marks: list[Mark] = []
    seen: dict[str, list[int]] = {}  # warning key -> line numbers, in first-seen order
    for number, line in enumerate(code.split("\n"), start=1):
        parts: list[str] = []
        column = last = 0
        for match in _HIDDEN.finditer(line):
            before = line[last : match.start()]
            parts.append(before)
            column += len(before)
            escape = escape_char(match.group(0))
            parts.append(escape)
            marks.append(Mark(number, column, column + len(escape)))
            column += len(escape)
            last = match.end()
            lines = seen.setdefault(_warning_key(match.group(0)), [])
            if not lines or lines[-1] != number:
                lines.append(number)
        parts.append(line[last:])
        shown_lines.append("".join(parts))
    return ShownCode("\n".join(shown_lines), _warnings(seen), marks)


def visible_code(code: str) -> tuple[str, list[str]]:
    """``(shown text, warnings)`` for code to approve. Every control character but newline and
    tab, every bidi control and every invisible character is replaced by its escape, with one
    warning line per kind, e.g. ``line 3: bidi control U+202E (RIGHT-TO-LEFT OVERRIDE): the
    code may display in another order than it runs``. What runs stays ``code``."""
    shown = show_code(code)
    return shown.text, shown.warnings


def _warning_key(char: str) -> str:
    """One warning per character, except blocks used to spell hidden text, which are one kind."""
    code = ord(char)
    if 0xE0000 <= code <= 0xE007F:
        return "tags"
    if 0xE0100 <= code <= 0xE01EF:
        return "selectors"
    if 0xD800 <= code <= 0xDFFF:
        return "surrogates"
    return char


def _describe(key: str) -> str:
    if key == "tags":
        return "tag characters U+E0000-U+E007F: they are in the code but show as nothing"
    if key == "selectors":
        return "variation selectors U+E0100-U+E01EF: they are in the code but show as nothing"
    if key == "surrogates":
        return "lone surrogates: " + _CONSEQUENCE["surrogate"]
    kind = char_kind(key)
    code = ord(key)
    name = _CONTROL_NAMES.get(code) or unicodedata.name(key, "")
    label = {
        "control": "control character",
        "bidi": "bidi control",
        "invisible": "invisible character",
        "separator": "separator",
        "surrogate": "lone surrogate",
    }[kind]
    named = f" ({name})" if name else ""
    return f"{label} U+{code:04X}{named}: {_CONSEQUENCE[kind]}"


def _line_list(numbers: list[int]) -> str:
    word = "line" if len(numbers) == 1 else "lines"
    listed = ", ".join(str(n) for n in numbers[:_MAX_LINES_LISTED])
    more = len(numbers) - _MAX_LINES_LISTED
    return f"{word} {listed}" + (f" and {more} more" if more > 0 else "")


def _warnings(seen: dict[str, list[int]]) -> list[str]:
    warnings = [f"{_line_list(lines)}: {_describe(key)}" for key, lines in seen.items()]
    if len(warnings) > _MAX_WARNINGS:
        rest = len(warnings) - (_MAX_WARNINGS - 1)
        lines = sorted({n for numbers in list(seen.values())[_MAX_WARNINGS - 1 :] for n in numbers})
        warnings = [
            *warnings[: _MAX_WARNINGS - 1],
            f"{_line_list(lines)}: {rest} more kinds of hidden characters",
        ]
    return warnings


# --- block output -------------------------------------------------------------------------------

# One pass over every escape sequence, so that dropping one cannot splice a new one together:
# OSC/DCS/SOS/PM/APC strings (to BEL, ST or the end), CSI, other ESC sequences, a lone ESC.
_SEQUENCE = re.compile(
    r"\x1b[\]P^_X].*?(?:\x07|\x1b\\|\Z)"
    r"|\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[ -/]*[0-~]"
    r"|\x1b",
    re.DOTALL,
)
# Only plain SGR (colours, bold): `CSI ? ... m` and `CSI > ... m` are xterm queries and
# key-modifier settings, whose replies a terminal types into oi's own prompt.
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
# Every control but tab, newline and CR; ESC is left only in the SGR codes kept above.
_OUTPUT_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
SGR_RESET = "\x1b[0m"


def clean_output(text: str, *, keep_color: bool = True) -> str:
    """Block output for a terminal: printable text, newlines, tabs and ``\\r`` (progress bars)
    stay, and SGR colour codes when ``keep_color``; every other escape sequence and control
    character is dropped (cursor movement, screen clears, titles, clipboard, hyperlinks, DCS,
    8-bit C1); bidi and invisible characters become escapes."""

    def sequence(match: re.Match[str]) -> str:
        seq = match.group(0)
        return seq if keep_color and _SGR.fullmatch(seq) else ""

    text = _SEQUENCE.sub(sequence, text)
    text = _OUTPUT_CONTROLS.sub("", text)
    return text if text.isascii() else _HIDDEN_IN_OUTPUT.sub(_escape_match, text)


def has_sgr(text: str) -> bool:
    """Whether cleaned output set a colour that must be reset before oi draws again."""
    return "\x1b[" in text
