"""Rendering session events for people (rich, on a terminal or not) and for scripts (JSON).

Model text and block stdout go to stdout; prompts, progress, notices and block stderr to stderr.
Every untrusted string passes through ``orchestrator.safe_text`` on its way out and is printed
as ``rich.text.Text`` (never inside markup), so nothing from a model, a block, a record or a file
name acts on the screen. The helpers ``oi_line``, ``error_text`` and ``safe_cell`` are for the
CLI's own messages that quote untrusted parts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from markdown_it import MarkdownIt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from orchestrator.approval import Approval, parse_answer
from orchestrator.code_hider import CodeHider, hide_code
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    Event,
    ModelReply,
    ModelRestarted,
    ModelText,
    ModelWaiting,
    Notice,
    SessionEnded,
)
from orchestrator.languages import LANGUAGES, Language
from orchestrator.safe_text import (
    SGR_RESET,
    clean_line,
    clean_output,
    clean_text,
    has_sgr,
    show_code,
)

LEXERS = {"python": "python", "javascript": "javascript", "shell": "bash"}
PROMPT = "Run it? [y]es / [n]o / [e]dit / [a]lways / [q]uit: "
ESCAPE_STYLE = "bold reverse red"  # escapes of hidden characters in code: not typed text


class JsonRenderer:
    """One JSON object per line on stdout, for scripts and CI."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def render(self, event: Event) -> None:
        self.out.write(json.dumps(event.to_dict(), default=str) + "\n")
        self.out.flush()

    def interrupt(self) -> None:
        pass


END_WORDS = {
    "finished": "finished",
    "max_turns": "stopped: too many model turns",
    "quit": "stopped: you quit",
    "loop_guard": "stopped: the same failure again and again",
    "interrupted": "interrupted",
    "length": "stopped: the reply hit the model's token limit",
    "error": "stopped by an error",
}
"""How each way a session ends is said to a person (the status names are for scripts)."""


class HumanRenderer:
    """Streams the model's reply (as markdown on a terminal), shows code and results.

    Everything untrusted (model text, code, block output, notices, reasons) passes through
    ``orchestrator.safe_text`` and is printed as ``rich.text.Text`` or with markup off, so no
    escape sequence, bidi trick or rich markup from it acts on the screen. ``out``/``err``
    default to the process's stdout/stderr; tests pass consoles writing to a buffer.
    """

    def __init__(
        self, *, markdown: bool = True, out: Console | None = None, err: Console | None = None
    ) -> None:
        self.out = out or Console(highlight=False)
        self.err = err or Console(stderr=True, highlight=False)
        self.tty = self.out.is_terminal
        self.markdown = markdown and self.tty
        self._live: Live | None = None
        self._spinner: Live | None = None
        self._reply = ""
        # On a terminal the approval panel shows the code: the prose does not repeat it.
        self._hider: CodeHider | None = CodeHider() if self.tty else None
        self._streams: dict[str, _OutputState] = {}

    # --- lifecycle of live displays ---------------------------------------------------------

    def _stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def interrupt(self) -> None:
        self._stop_spinner()
        self._stop_live()
        self._end_output()

    # --- events -------------------------------------------------------------------------------

    def render(self, event: Event) -> None:
        if isinstance(event, BlockOutput):
            self._show_output(event)
            return
        self._end_output()
        if isinstance(event, ModelWaiting):
            self._reply = ""
            if self.err.is_terminal:
                self._spinner = Live(
                    Spinner("dots", text=Text("waiting for the model...", style="dim")),
                    console=self.err,
                    transient=True,
                )
                self._spinner.start()
        elif isinstance(event, ModelText):
            self._show_model_text(event.text)
        elif isinstance(event, ModelReply):
            self._stop_spinner()
            self._stop_live()
            if not self.markdown:
                self._write_prose(self._hider.flush() if self._hider else "")
            if not self.markdown and event.text and not event.text.endswith("\n"):
                self.out.file.write("\n")
        elif isinstance(event, ModelRestarted):
            self._stop_live()
            if self._hider is not None:
                self._hider = CodeHider()  # the partial reply is asked again from the start
            if not self.markdown and event.partial_text and not event.partial_text.endswith("\n"):
                self.out.file.write("\n")
            self._reply = ""
            self.err.print(oi_line(f"the reply was cut ({event.reason}); asking again", "yellow"))
        elif isinstance(event, CodeProposed):
            self.err.print(approval_panel(event))
        elif isinstance(event, Decision):
            self._show_decision(event)
        elif isinstance(event, BlockResult):
            self._show_result(event)
        elif isinstance(event, Notice):
            self.err.print(oi_line(event.message, style="yellow"))
        elif isinstance(event, SessionEnded):
            self._stop_spinner()
            self._stop_live()
            style = "green" if event.status == "finished" else "yellow"
            self.err.print(
                Text.assemble(
                    (f"oi: {END_WORDS.get(event.status, clean_line(event.status))}", style),
                    f" - {clean_line(event.reason)} · {event.turns} model turn(s), "
                    f"{event.prompt_tokens} prompt + {event.completion_tokens} reply tokens",
                )
            )

    def _show_model_text(self, text: str) -> None:
        self._stop_spinner()
        self._reply += text
        if self.markdown:
            if self._live is None:
                self._live = Live(
                    console=self.out, refresh_per_second=8, vertical_overflow="visible"
                )
                self._live.start()
            self._live.update(safe_markdown(hide_code(self._reply)))
        else:
            self._write_prose(self._hider.feed(text) if self._hider else text)

    def _write_prose(self, text: str) -> None:
        if text:
            # Escapes are per character, so cleaning each piece equals cleaning the whole.
            self.out.file.write(clean_text(text))
            self.out.file.flush()

    def _show_output(self, event: BlockOutput) -> None:
        self._stop_spinner()
        console = self.out if event.stream == "stdout" else self.err
        text = clean_output(event.text, keep_color=console.is_terminal)
        if not text:
            return
        state = self._streams.setdefault(event.stream, _OutputState(console))
        state.coloured = state.coloured or has_sgr(text)
        state.at_line_start = text.endswith("\n")
        console.file.write(text)
        console.file.flush()

    def _end_output(self) -> None:
        """After a block's output, reset any colour it set and end its last line, so nothing
        it printed tints, conceals or shares a line with what oi draws next (the next
        approval panel included)."""
        for state in self._streams.values():
            ending = (SGR_RESET if state.coloured else "") + ("" if state.at_line_start else "\n")
            if ending:
                state.console.file.write(ending)
                state.console.file.flush()
        self._streams.clear()

    def _show_decision(self, event: Decision) -> None:
        if event.decision == "run" and event.by == "auto":
            self.err.print(Text(f"running block {event.index} (auto-run: sandboxed)", style="dim"))
        elif event.decision == "declined":
            self.err.print(Text(f"block {event.index} declined", style="yellow"))

    def _show_result(self, event: BlockResult) -> None:
        if event.interrupted:
            self.err.print(
                Text(f"block {event.index} interrupted: its container was killed", style="yellow")
            )
            return
        if event.timed_out or event.oom_killed or event.result.get("workdir_exceeded"):
            first = event.for_model.splitlines()[0] if event.for_model else "killed"
            self.err.print(Text(f"block {event.index}: {clean_line(first)}", style="red"))
        elif event.exit_code == 0:
            self.err.print(
                Text(f"block {event.index}: exit 0 · {event.duration_s:.2f} s", style="dim")
            )
        else:
            self.err.print(
                Text.assemble(
                    (f"block {event.index}: exit {event.exit_code}", "red"),
                    (f" · {event.duration_s:.2f} s", "dim"),
                )
            )


@dataclass
class _OutputState:
    """What the last output of a block left on one stream."""

    console: Console
    coloured: bool = False
    at_line_start: bool = True


# --- pieces for people: the approval panel, safe lines, markdown --------------------------------


def approval_panel(event: CodeProposed) -> Panel:
    """The approval screen: the code (hidden characters shown as highlighted escapes, with a
    warning per kind), then the sandbox it runs in, one line each, wrapped and never cut, so
    the network and the workdir stay visible at 80 columns and in a pipe."""
    shown = show_code(event.code)
    # Trailing newlines would only add empty rows; every other character is shown.
    syntax = Syntax(
        shown.text.rstrip("\n"),
        LEXERS.get(event.language, "text"),
        line_numbers=False,
        word_wrap=True,
    )
    for mark in shown.marks:
        syntax.stylize_range(ESCAPE_STYLE, (mark.line, mark.start), (mark.line, mark.end))
    parts: list[RenderableType] = [syntax, Text("")]
    parts += [Text(f"! {warning}", style="bold yellow") for warning in shown.warnings]
    if shown.warnings:
        parts.append(Text(""))
    parts.append(sandbox_details(event))
    box = event.sandbox
    return Panel(
        Group(*parts),
        title=Text(
            f"block {event.index} · {clean_line(event.language)}"
            + (" · edited by you: run this version?" if event.edited else "")
        ),
        title_align="left",
        border_style="red" if box.network == "open" else "none",
    )


def sandbox_details(event: CodeProposed) -> Table:
    """``sandbox``, ``network``, ``workdir``, each extra ``mount``, the ``env`` names passed in
    and ``sha256``: the lines of the approval panel."""
    box = event.sandbox
    hosts: Sequence[str] = box.allow_hosts
    lines = event.code.count("\n") + (0 if event.code.endswith("\n") else 1)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = [
        (
            "sandbox",
            Text(
                f"{clean_line(box.image)} · {clean_line(box.memory)} · {box.cpus:g} CPU · "
                f"{box.pids} pids · {box.timeout_s:g} s · {clean_line(box.isolation)}"
            ),
        ),
        ("network", network_text(box.network, hosts)),
        ("workdir", Text(f"{clean_line(box.workdir)} → /workspace")),
        *(
            (
                "mount",
                Text(clean_line(mount), style="yellow" if mount.endswith("(read-write)") else ""),
            )
            for mount in box.mounts
        ),
        *([("env", Text(", ".join(clean_line(name) for name in box.env)))] if box.env else []),
        ("sha256", Text(f"{event.sha256[:16]} · {lines} line{'' if lines == 1 else 's'}")),
    ]
    for label, value in rows:
        value.overflow = "fold"  # a long path wraps; nothing is ever cut off
        grid.add_row(Text(label), value)
    return grid


def network_text(network: str, hosts: Sequence[str] = ()) -> Text:
    """The network line: ``open (full internet)`` in bold red, ``none``, or the allowlist."""
    if network == "open":
        return Text("open (full internet)", style="bold red")
    if network == "allowlist":
        named = ", ".join(clean_line(host) for host in hosts)
        return Text(f"allowlist: {named}" if named else "allowlist", style="yellow")
    return Text(clean_line(network), style="green" if network == "none" else "yellow")


def oi_line(message: str, style: str = "") -> Text:
    """``oi: <message>`` as one line, the message made safe (no escapes, no markup, newlines
    shown as ``\\n``). For notices, status lines and warnings that may carry untrusted parts."""
    return Text.assemble(("oi:", style), " ", Text(clean_line(message), style=style))


def error_text(error: BaseException | str) -> Text:
    """``oi: error: <message>`` for a person. Messages may quote logs over several lines
    (image builds), so newlines stay, but every continuation line is indented: no untrusted
    line can start at the margin and pass for one of oi's own (``oi: finished``)."""
    body = clean_text(str(error)).replace("\n", "\n  ")
    return Text.assemble(("oi: error:", "bold red"), " ", body)


def safe_cell(value: object) -> Text:
    """A table cell from untrusted data (a recorded task, a session id, a file name)."""
    return Text(clean_line(str(value)))


def safe_markdown(text: str) -> Markdown:
    """Model text as rich Markdown that cannot act on the screen: cleaned text, no hyperlinks
    (OSC 8 would hide the target behind the words), and raw HTML shown as text instead of
    vanishing (rich drops HTML blocks and comments, which would hide part of the reply)."""
    cleaned = clean_text(text)
    markdown = Markdown("", hyperlinks=False)
    markdown.markup = cleaned
    markdown.parsed = _MARKDOWN_PARSER.parse(cleaned)
    return markdown


_MARKDOWN_PARSER = MarkdownIt("commonmark", {"html": False}).enable("strikethrough").enable("table")


class InteractiveApprover:
    """Asks the person. With a terminal: a prompt; without one, one answer per stdin line.
    The end of input is no (``eof="decline"``), or, for ``oi run`` and ``oi chat``, a stop
    (``eof="quit"``: nobody is left to answer, and a CI job that forgot -y must not look green).
    Edit opens $EDITOR on a temporary copy; the edited code is shown again."""

    def __init__(
        self,
        console: Console | None = None,
        stdin: IO[str] | None = None,
        *,
        eof: Literal["decline", "quit"] = "decline",
    ) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.stdin = stdin or sys.stdin
        self.eof = eof

    def _say(self, message: str, style: str = "") -> None:
        self.console.print(Text(message, style=style))

    def _ask(self) -> str | None:
        self.console.print(PROMPT, end="", markup=False, highlight=False)
        self.console.file.flush()
        line = self.stdin.readline()
        if line == "":
            if self.eof == "quit":
                self._say("(no answer: the input ended; stopping - -y runs blocks without asking)")
            else:
                self._say("(no answer: declined)")
            return None
        return line

    def decide(self, proposal: CodeProposed) -> Approval:
        while True:
            answer = self._ask()
            if answer is None and self.eof == "quit":
                return Approval("quit", reason="no answer: the input ended (no -y)")
            kind = parse_answer(answer)
            if kind is None:
                self._say(
                    ANSWER_HELP
                    if (answer or "").strip() in ("?", "h", "help")
                    else "answer y, n, e, a or q (? explains them)"
                )
                continue
            if kind == "edit":
                editor = find_editor()
                if editor is None:
                    self._say(
                        "no editor: set $VISUAL or $EDITOR (e.g. export EDITOR=nano); "
                        "block unchanged",
                        "yellow",
                    )
                    continue
                edited, why = edit_failure(proposal.code, proposal.language, editor)
                if edited is None:
                    self._say(f"{why}; block unchanged", "yellow")
                    continue
                if not edited.strip():
                    self._say(
                        "the edited block is empty; block unchanged (n declines it)", "yellow"
                    )
                    continue
                return Approval("edit", edited)
            if kind == "always":
                self._say(
                    "from now on, blocks run without asking until this session ends "
                    "(%auto off turns that off in chat)",
                    "dim",
                )
            return Approval(kind)


ANSWER_HELP = """y  yes: run this block in its sandbox (as shown above)
n  no: do not run it; the model is told you declined
e  edit: open the code in $VISUAL/$EDITOR; the edited code is shown again before it runs
a  always: run this one and every later block of this session without asking
q  quit: run nothing and end the session"""


def find_editor() -> str | None:
    """$VISUAL, $EDITOR, else the first of sensible-editor, nano, vi that exists."""
    chosen = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if chosen:
        return chosen
    for name in ("sensible-editor", "nano", "vi"):
        if shutil.which(name):
            return name
    return None


def edit_in_editor(code: str, language: str, editor: str | None = None) -> str | None:
    """Open the editor on a private temporary file; return its content, None on failure (see
    ``edit_failure`` for why). The file ends with a newline, so an editor that appends to the
    last line cannot glue two."""
    result = _edit(code, language, editor or find_editor() or "vi")
    return result if not isinstance(result, _Failed) else None


class _Failed(str):
    """Why an edit failed (a string that is not the edited code)."""


def edit_failure(code: str, language: str, editor: str) -> tuple[str | None, str]:
    """``(edited code, "")``, or ``(None, why it failed)`` in words naming the editor."""
    result = _edit(code, language, editor)
    return (None, str(result)) if isinstance(result, _Failed) else (result, "")


def _edit(code: str, language: str, editor: str) -> str:
    suffix = Path(LANGUAGES[Language(language)].filename).suffix
    fd, name = tempfile.mkstemp(prefix="oi-edit-", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(code if code.endswith("\n") else code + "\n")
        try:
            proc = subprocess.run([*shlex.split(editor), name], check=False)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return _Failed(f"the editor {editor!r} could not start ({why})")
        if proc.returncode != 0:
            return _Failed(f"the editor {editor!r} exited with code {proc.returncode}")
        # Read once: this string is what is shown, hashed and run; later changes to the file
        # cannot reach the sandbox.
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _Failed(f"the edited file could not be read back ({exc})")
    finally:
        Path(name).unlink(missing_ok=True)


# --- oi sessions show ---------------------------------------------------------------------------


def render_transcript(records: list[dict[str, Any]], console: Console) -> None:
    """A readable view of a recorded session (``oi sessions show``).

    A record file may come from anyone (copied from a CI run, a colleague, a crafted repo), so
    every value in it is untrusted: cleaned, printed as ``Text``, and a record of the wrong
    shape is shown as what it is instead of crashing the view.
    """
    proposed: dict[object, object] = {}  # block index -> the sha256 first proposed
    for record in records:
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        event = record.get("event") if kind == "event" else None
        if kind == "session":
            console.print(
                Text.assemble(
                    (f"session {_field(record.get('session_id'))}", "bold"),
                    f" · model {_field(record.get('model'))} · {_field(record.get('api_base'))}",
                )
            )
        elif kind == "message":
            _show_message(record.get("message"), console)
        elif event == "code_proposed":
            first = proposed.setdefault(record.get("index"), record.get("sha256"))
            _show_recorded_code(record, console, edited=first != record.get("sha256"))
        elif event == "decision":
            console.print(
                Text(
                    f"block {_field(record.get('index'))}: {_field(record.get('decision'))} by "
                    f"{_field(record.get('by'))} (sha256 {_field(record.get('sha256'), 12)})",
                    style="dim",
                )
            )
        elif event == "end":
            console.print(
                Text.assemble(
                    (_field(record.get("status")), "bold"), f": {_field(record.get('reason'))}"
                )
            )


def _field(value: object, length: int | None = None) -> str:
    """One recorded value as a safe line (``?`` when absent), cut before cleaning."""
    text = "?" if value is None else str(value)
    return clean_line(text[:length] if length is not None else text)


def _show_message(message: object, console: Console) -> None:
    if not isinstance(message, dict):
        console.print(Text(f"(a message record of the wrong shape: {_field(message, 200)})"))
        return
    role = message.get("role")
    if role == "system":
        return
    content = message.get("content") or ""
    text = content if isinstance(content, str) else json.dumps(content)
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            text += f"\n[tool call {function.get('name')}] {function.get('arguments')}"
        else:
            text += f"\n[tool call] {call}"
    console.print(Panel(Text(clean_text(text)), title=Text(_field(role)), title_align="left"))


def _show_recorded_code(record: dict[str, Any], console: Console, *, edited: bool) -> None:
    """The proposed code itself is in the assistant message above; here what its display hid
    (the approval screen's warnings), and, when you edited the block, the code as edited (what
    was then asked about, and run if approved: it is in no message)."""
    code = record.get("code")
    if not isinstance(code, str):
        return
    shown = show_code(code)
    if edited:
        title = (
            f"block {_field(record.get('index'))} as edited by you "
            f"(sha256 {_field(record.get('sha256'), 12)})"
        )
        console.print(Panel(Text(shown.text), title=Text(title), title_align="left"))
    for warning in shown.warnings:
        console.print(
            Text(f"! block {_field(record.get('index'))}: {warning}", style="bold yellow")
        )


def passthrough() -> Callable[[str, bytes], None]:
    """Write block output to our stdout/stderr as it arrives (``oi exec``); terminal escapes
    are neutralised when the stream is a terminal."""
    tty = {"stdout": sys.stdout.isatty(), "stderr": sys.stderr.isatty()}
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}

    def write(stream: str, data: bytes) -> None:
        target = streams[stream]
        target.flush()
        if not tty[stream]:
            target.buffer.write(data)  # a pipe gets the block's bytes as they are
        else:
            target.buffer.write(clean_output(data.decode("utf-8", "replace")).encode())
        target.buffer.flush()

    return write


def reset_terminal() -> None:
    """After a block's live output: colours off, so the block cannot colour what follows."""
    for stream in (sys.stdout, sys.stderr):
        if stream.isatty():
            stream.write(SGR_RESET)
            stream.flush()
