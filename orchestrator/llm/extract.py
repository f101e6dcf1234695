"""Find the code a model proposes in its finished reply. Pure: text in, blocks out.

Small models propose code in several ways; all of them are accepted:

1. Markdown fences: ```python ... ``` (also ``~~~`` fences, and longer fences such as
   ````` ```` ````` so the code itself may contain ```).
2. Hermes tool calls written as plain text (what Qwen writes when the server did not parse
   them): ``<tool_call>{"name": "execute", "arguments": {...}}</tool_call>``.
3. A bare ``{"name": "execute", "arguments": {...}}`` object in the prose or in a ```json fence.
4. OpenAI ``tool_calls`` assembled by the client: ``parse_tool_arguments`` turns one into a block.

Choices callers can rely on:

- A fence with no language, or with a display-only language (``DISPLAY_ONLY_LANGUAGES``: text,
  output, json, yaml, csv, diff, ...) is not code to run: models use those to show data, file
  contents and expected output. It is still searched for a tool call written as JSON (3.).
  Any other language is returned as written (lower-cased), known to oi or not, so the caller
  can tell the model "oi cannot run ruby" rather than silently ignoring the block.
- ``console`` / ``shell-session`` / ``terminal`` fences are transcripts: only the lines that
  start with ``$ `` are commands (plus their ``\\`` continuation lines); the rest is output.
  Such a block comes back as language ``shell-session`` (an alias of shell) with only the
  commands as code; a transcript without any ``$ `` line is skipped.
- A fence still open when the reply ends is extracted (the stream ended, nothing more is
  coming) and flagged ``unterminated=True``: if the reply was cut by the token limit
  (finish reason "length") the caller should not run it.
- Line endings become ``\\n`` (a CRLF shell script does not run); a fence's own indentation
  (fences inside list items) is removed from its lines.
- Blocks whose code is only whitespace are dropped.
- Text inside a code fence is never searched again: a Python string holding "<tool_call>" is
  code. A ``<tool_call>`` or JSON object that is not a usable execute call stays prose.
- Blocks come back in the order they appear in the reply.
- Tool-call arguments missing only their closing braces (vLLM's hermes parser drops them while
  streaming Qwen3-2507's calls, vLLM issue 22885) are repaired when that is unambiguous:
  ``repair_tool_arguments``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import UnknownLanguageError
from orchestrator.languages import parse_language

BlockSource = Literal["tool_call", "markdown", "tool_call_text", "bare_json"]

EXECUTE_TOOL_NAME = "execute"

# Fence languages that show things rather than ask for them to be run.
DISPLAY_ONLY_LANGUAGES = frozenset(
    {
        *("text", "txt", "plain", "plaintext", "none", "nohighlight", "ansi"),
        *("output", "console-output", "stdout", "stderr", "log", "logs", "result", "results"),
        *("json", "jsonc", "json5", "jsonl", "ndjson", "yaml", "yml", "toml", "ini", "cfg"),
        *("conf", "env", "dotenv", "properties", "csv", "tsv", "xml", "html", "css", "svg"),
        *("markdown", "md", "rst", "tex", "latex", "diff", "patch", "mermaid"),
        *("dockerfile", "makefile", "tree"),
    }
)

# Fence languages holding a terminal transcript: "$ command" lines mixed with output.
TRANSCRIPT_LANGUAGES = frozenset({"console", "shell-session", "sh-session", "terminal"})
TRANSCRIPT_LANGUAGE = "shell-session"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$", re.M)
_INFO_LANGUAGE = re.compile(r"[A-Za-z0-9_+#-]+")
_TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_CLOSE = "</tool_call>"
_BARE_JSON_START = re.compile(r'\{\s*"(?:name|arguments)"\s*:')
# strict=False accepts raw newlines and tabs inside strings: small models write code that way.
_LENIENT_JSON = json.JSONDecoder(strict=False)
_CODE_KEYS = ("code", "script", "command")
_LANGUAGE_KEYS = ("language", "lang")


@dataclass(frozen=True)
class ProposedBlock:
    """One block of code the model wants run, before any approval.

    ``language`` is as the model wrote it, lower-cased ("python", "bash", "js", "ruby"); map it
    with ``parse_language`` and report unknown ones back to the model. ``unterminated`` marks a
    fence the reply never closed: its code may be cut off.
    """

    language: str
    code: str
    source: BlockSource
    tool_call_id: str | None = None
    unterminated: bool = False


def extract_blocks(text: str) -> list[ProposedBlock]:
    """Every block of code proposed in a finished reply, in order (see the module docstring)."""
    return list(_scan(_normalize_newlines(text), fences=True))


def parse_tool_arguments(
    name: str, arguments: str, *, tool_call_id: str | None = None, repair: bool = True
) -> ProposedBlock | None:
    """Turn one OpenAI tool call into a block.

    Returns ``None`` when the call is not for oi's ``execute`` tool (or a tool named after a
    language, e.g. ``python(code=...)``, which small models invent): the caller decides what
    to tell the model about an unknown tool. Raises ``ValueError`` when it is an execute call
    whose arguments are unusable; the message is written for the model, to be sent back as
    the tool result so it can retry.

    Sloppy JSON is accepted where the intent is unambiguous: raw newlines inside strings,
    arguments encoded twice (a JSON string holding the object), text around the object,
    ``lang`` for ``language`` and ``script``/``command`` for ``code``, and (unless ``repair``
    is false) closing braces the server dropped (``repair_tool_arguments``). Pass
    ``repair=False`` when the reply was cut by the token limit (finish reason "length"): a
    missing brace then means lost code, not the parser's quirk.
    """
    if not _is_execute_name(name):
        return None
    try:
        decoded = _decode_arguments(arguments)
    except ValueError as exc:
        repaired = repair_tool_arguments(arguments) if repair else None
        if repaired is None:
            raise ValueError(
                f"the {EXECUTE_TOOL_NAME} arguments are not valid JSON ({exc}); send "
                '{"language": "python", "code": "..."}'
            ) from None
        decoded = _decode_arguments(repaired)
    return _block_from_call(name, decoded, "tool_call", tool_call_id)


def history_arguments(arguments: str) -> str:
    """Tool-call arguments as the conversation history keeps them: repaired when only closing
    braces are missing, kept when they are a JSON object, else wrapped as one
    (``{"unparsed": TEXT}``). vLLM parses the arguments of every earlier call as JSON and
    refuses the whole request when it cannot: one malformed call must not end the session."""
    repaired = repair_tool_arguments(arguments)
    if repaired is not None:
        return repaired
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    return arguments if isinstance(value, dict) else json.dumps({"unparsed": arguments})


def repair_tool_arguments(arguments: str) -> str | None:
    """``arguments`` with the closing braces the server dropped put back, or ``None``.

    vLLM's hermes tool parser can drop the final ``}`` of streamed tool-call arguments (``}}``
    when the last value is an object; vLLM issue 22885, seen with Qwen3-2507). The repair is
    made only when it is unambiguous: the text is one JSON object cut right after a complete
    value, or inside a string, and appending the closing quote of that string (if any) and
    the ``}`` of every object still open makes it parse, whole. An array left open, a dangling
    key, colon or comma, an escape cut in half, text before the object: ``None``.

    Callers that keep the arguments (the conversation history sent back to the server, which
    vLLM parses as JSON) should keep the repaired text.
    """
    text = arguments.strip()
    if not text.startswith("{"):
        return None
    suffix = _missing_closers(text)
    if not suffix:
        return None
    repaired = text + suffix
    try:
        value = _LENIENT_JSON.decode(repaired)  # the whole text, nothing after the object
    except ValueError:
        return None
    return repaired if isinstance(value, dict) else None


def _missing_closers(text: str) -> str | None:
    """The closing quote and braces ``text`` lacks at its end; ``None`` if it lacks more."""
    open_brackets: list[str] = []
    in_string = escaped = False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            open_brackets.append(char)
        elif char in "}]":
            if not open_brackets or open_brackets.pop() != {"}": "{", "]": "["}[char]:
                return None
            if not open_brackets and position < len(text) - 1:
                return None  # the object closed before the end: something else is wrong
    if escaped or "[" in open_brackets:
        return None  # half an escape, or an array: more than closing braces is missing
    return ('"' if in_string else "") + "}" * len(open_brackets)


def _scan(text: str, *, fences: bool) -> Iterator[ProposedBlock]:
    """Walk the text left to right, taking whichever construct starts first."""
    pos = 0
    while pos < len(text):
        fence = _next_fence(text, pos) if fences else None
        tag_at = text.find(_TOOL_CALL_OPEN, pos)
        bare = _BARE_JSON_START.search(text, pos)
        starts = [
            (fence.start() if fence else -1, "fence"),
            (tag_at, "tag"),
            (bare.start() if bare else -1, "bare"),
        ]
        found = [(start, kind) for start, kind in starts if start >= 0]
        if not found:
            return
        start, kind = min(found)
        if kind == "fence" and fence is not None:
            blocks, pos = _take_fence(text, fence)
            yield from blocks
        elif kind == "tag":
            block, pos = _take_tool_call_text(text, start)
            if block is not None:
                yield block
        else:
            block, pos = _take_bare_json(text, start)
            if block is not None:
                yield block


def _next_fence(text: str, pos: int) -> re.Match[str] | None:
    match = _FENCE_OPEN.search(text, pos)
    # A backtick fence's info string cannot contain a backtick (CommonMark): "```x```" on one
    # line is inline code, not a fence.
    while match and match["fence"][0] == "`" and "`" in match["info"]:
        match = _FENCE_OPEN.search(text, match.end())
    return match


def _take_fence(text: str, opening: re.Match[str]) -> tuple[list[ProposedBlock], int]:
    fence = opening["fence"]
    body_start = min(opening.end() + 1, len(text))
    # Closing fence: same character, at least as long, nothing else on the line. Any
    # indentation is accepted because models indent fences inside list items unevenly.
    closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
    close = closing.search(text, body_start)
    if close is None:
        body, end, unterminated = text[body_start:], len(text), True
    else:
        body, end, unterminated = text[body_start : close.start()], close.end(), False
    body = body.removesuffix("\n")
    width = len(opening["indent"])
    lines = [_dedent(line, width) for line in body.split("\n")]
    language = _info_language(opening["info"])

    if language in TRANSCRIPT_LANGUAGES:
        code = _transcript_commands(lines)
        blocks = [ProposedBlock(TRANSCRIPT_LANGUAGE, code, "markdown", None, unterminated)]
    elif not language or language in DISPLAY_ONLY_LANGUAGES:
        # Shown, not run; but a tool call written as JSON inside a ```json fence is a call.
        blocks = list(_scan("\n".join(lines), fences=False))
    else:
        code = "\n".join(lines)
        blocks = [ProposedBlock(language, code, "markdown", None, unterminated)]
    return [block for block in blocks if block.code.strip()], end


def _take_tool_call_text(text: str, start: int) -> tuple[ProposedBlock | None, int]:
    inner_start = start + len(_TOOL_CALL_OPEN)
    close = text.find(_TOOL_CALL_CLOSE, inner_start)
    inner = text[inner_start : close if close >= 0 else len(text)]
    decoded = _decode_object(inner)
    if decoded is None:
        return None, inner_start
    call, consumed = decoded
    end = close + len(_TOOL_CALL_CLOSE) if close >= 0 else inner_start + consumed
    return _block_from_text_call(call, "tool_call_text"), end


def _take_bare_json(text: str, start: int) -> tuple[ProposedBlock | None, int]:
    try:
        call, end = _LENIENT_JSON.raw_decode(text, start)
    except ValueError:
        return None, start + 1
    if not isinstance(call, dict):
        return None, start + 1
    return _block_from_text_call(call, "bare_json"), end


def _block_from_text_call(call: dict[str, object], source: BlockSource) -> ProposedBlock | None:
    name = call.get("name")
    arguments = call.get("arguments", call.get("parameters"))
    if not isinstance(name, str) or not _is_execute_name(name):
        return None
    try:
        if isinstance(arguments, str):
            arguments = _decode_arguments(arguments)
        block = _block_from_call(name, arguments, source, None)
    except ValueError:
        return None  # not a usable call: leave it as prose
    return block if block.code.strip() else None


def _block_from_call(
    name: str, arguments: object, source: BlockSource, tool_call_id: str | None
) -> ProposedBlock:
    usage = '; send {"language": "python", "code": "..."}'
    if not isinstance(arguments, dict):
        raise ValueError(f"the {EXECUTE_TOOL_NAME} arguments must be a JSON object{usage}")
    language = _first_str(arguments, _LANGUAGE_KEYS)
    if language is None and name.strip().lower() != EXECUTE_TOOL_NAME:
        language = name  # a tool named after its language: python(code=...)
    code = _first_code(arguments)
    if not language or not language.strip():
        raise ValueError(f'the {EXECUTE_TOOL_NAME} call has no "language"{usage}')
    if code is None:
        raise ValueError(f'the {EXECUTE_TOOL_NAME} call has no "code" string{usage}')
    if not code.strip():
        raise ValueError(f'the {EXECUTE_TOOL_NAME} call has empty "code"{usage}')
    return ProposedBlock(language.strip().lower(), _normalize_newlines(code), source, tool_call_id)


def _decode_arguments(arguments: str) -> object:
    decoded = _decode_object(arguments)
    if decoded is None:
        stripped = arguments.strip()
        if not stripped:
            raise ValueError("the arguments are empty")
        try:  # a JSON string that itself holds the object (arguments encoded twice)
            inner = _LENIENT_JSON.decode(stripped)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(inner, str):
            decoded = _decode_object(inner)
        if decoded is None:
            raise ValueError("expected a JSON object")
    return decoded[0]


def _decode_object(text: str) -> tuple[dict[str, object], int] | None:
    """The first JSON object in ``text`` and where it ends, ignoring text around it."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, end = _LENIENT_JSON.raw_decode(text, start)
    except ValueError:
        return None
    return (value, end) if isinstance(value, dict) else None


def _is_execute_name(name: str) -> bool:
    key = name.strip().lower()
    if key == EXECUTE_TOOL_NAME:
        return True
    try:
        parse_language(key)
    except UnknownLanguageError:
        return False
    return True


def _first_str(arguments: dict[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = arguments.get(key)
        if isinstance(value, str):
            return value
    return None


def _first_code(arguments: dict[str, object]) -> str | None:
    for key in _CODE_KEYS:
        value = arguments.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            return "\n".join(value)  # code sent as a list of lines
    return None


def _info_language(info: str) -> str:
    """``python title="x"`` -> "python"; ``{.py}`` -> "py"; ``js:main.js`` -> "js"."""
    info = info.strip().lstrip("{.").removeprefix("language-")
    match = _INFO_LANGUAGE.match(info)
    return match.group(0).lower() if match else ""


def _dedent(line: str, width: int) -> str:
    """Remove up to ``width`` leading blanks: the fence's indentation, not the code's."""
    index = 0
    while index < width and index < len(line) and line[index] in " \t":
        index += 1
    return line[index:]


def _transcript_commands(lines: list[str]) -> str:
    commands: list[str] = []
    continuing = False
    for line in lines:
        if continuing:
            command = line.removeprefix("> ")
        elif line.startswith("$ ") or line == "$":
            command = line[2:]
        else:
            continue
        commands.append(command)
        continuing = command.rstrip().endswith("\\")
    return "\n".join(commands)


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
