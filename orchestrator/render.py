"""Rendering session events for people (rich, on a terminal or not) and for scripts (JSON).

Model text and block stdout go to stdout; prompts, progress, notices and block stderr to stderr.
Block output is sanitised (terminal escapes neutralised) before it reaches a terminal.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.text import Text

from orchestrator.approval import Approval, parse_answer
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    Event,
    ModelReply,
    ModelText,
    ModelWaiting,
    Notice,
    SessionEnded,
    TokenUsage,
)
from orchestrator.languages import LANGUAGES, Language
from orchestrator.sandbox.output import TerminalSanitizer

LEXERS = {"python": "python", "javascript": "javascript", "shell": "bash"}
PROMPT = "Run it? [y]es / [n]o / [e]dit / [a]lways / [q]uit: "


class JsonRenderer:
    """One JSON object per line on stdout, for scripts and CI."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def render(self, event: Event) -> None:
        self.out.write(json.dumps(event.to_dict(), default=str) + "\n")
        self.out.flush()

    def interrupt(self) -> None:
        pass


class HumanRenderer:
    """Streams the model's reply (as markdown on a terminal), shows code and results."""

    def __init__(self, *, markdown: bool = True) -> None:
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.tty = self.out.is_terminal
        self.markdown = markdown and self.tty
        self._sanitizer = TerminalSanitizer()
        self._live: Live | None = None
        self._spinner: Live | None = None
        self._reply = ""

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

    # --- events -------------------------------------------------------------------------------

    def render(self, event: Event) -> None:
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
            self._stop_spinner()
            self._reply += event.text
            if self.markdown:
                if self._live is None:
                    self._live = Live(
                        console=self.out, refresh_per_second=8, vertical_overflow="visible"
                    )
                    self._live.start()
                self._live.update(Markdown(self._reply))
            else:
                self.out.file.write(event.text)
                self.out.file.flush()
        elif isinstance(event, ModelReply):
            self._stop_spinner()
            self._stop_live()
            if not self.markdown and event.text and not event.text.endswith("\n"):
                self.out.file.write("\n")
        elif isinstance(event, CodeProposed):
            self._show_code(event)
        elif isinstance(event, Decision):
            self._show_decision(event)
        elif isinstance(event, BlockOutput):
            target = sys.stdout if event.stream == "stdout" else sys.stderr
            text = self._sanitizer.clean(event.text) if target.isatty() else event.text
            target.write(text)
            target.flush()
        elif isinstance(event, BlockResult):
            self._show_result(event)
        elif isinstance(event, Notice):
            self.err.print(f"[yellow]oi:[/] {event.message}")
        elif isinstance(event, TokenUsage):
            pass
        elif isinstance(event, SessionEnded):
            self._stop_spinner()
            self._stop_live()
            style = "green" if event.status == "finished" else "yellow"
            self.err.print(
                f"[{style}]oi: {event.status}[/] - {event.reason} "
                f"({event.turns} turn(s), {event.prompt_tokens}+{event.completion_tokens} tokens)"
            )

    def _show_code(self, event: CodeProposed) -> None:
        box = event.sandbox
        network = box.network
        network_style = "bold red" if network == "open" else "cyan"
        title = f"block {event.index} · {event.language}"
        subtitle = Text.assemble(
            (
                f"{box.image} · {box.memory} · {box.cpus:g} CPU · {box.pids} pids · "
                f"{box.timeout_s:g} s · {box.isolation} · network ",
                "dim",
            ),
            (network + (" (full internet)" if network == "open" else ""), network_style),
            (f" · {box.workdir} → /workspace", "dim"),
        )
        syntax = Syntax(
            event.code, LEXERS.get(event.language, "text"), line_numbers=False, word_wrap=True
        )
        self.err.print(Panel(syntax, title=title, subtitle=subtitle, subtitle_align="left"))

    def _show_decision(self, event: Decision) -> None:
        if event.decision == "run" and event.by == "auto":
            self.err.print(f"[dim]running block {event.index} (auto-run: sandboxed)[/]")
        elif event.decision == "declined":
            self.err.print(f"[yellow]block {event.index} declined[/]")

    def _show_result(self, event: BlockResult) -> None:
        if event.interrupted:
            self.err.print(f"[yellow]block {event.index} interrupted: its container was killed[/]")
            return
        if event.timed_out or event.oom_killed or event.result.get("workdir_exceeded"):
            self.err.print(f"[red]block {event.index}: {event.for_model.splitlines()[0]}[/]")
        elif event.exit_code == 0:
            self.err.print(f"[dim]block {event.index}: exit 0 · {event.duration_s:.2f} s[/]")
        else:
            self.err.print(
                f"[red]block {event.index}: exit {event.exit_code}[/]"
                f" [dim]· {event.duration_s:.2f} s[/]"
            )


class InteractiveApprover:
    """Asks the person. With a terminal: a prompt; without one, one answer per stdin line
    (EOF means no). Edit opens $EDITOR on a temporary copy; the edited code is shown again."""

    def __init__(self, console: Console | None = None, stdin: IO[str] | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.stdin = stdin or sys.stdin

    def _ask(self) -> str | None:
        self.console.print(PROMPT, end="", markup=False)
        self.console.file.flush()
        line = self.stdin.readline()
        if line == "":
            self.console.print("(no answer: declined)")
            return None
        return line

    def decide(self, proposal: CodeProposed) -> Approval:
        while True:
            kind = parse_answer(self._ask())
            if kind is None:
                self.console.print("answer y, n, e, a or q")
                continue
            if kind == "edit":
                edited = edit_in_editor(proposal.code, proposal.language)
                if edited is None:
                    self.console.print("[yellow]editor failed or was cancelled; block unchanged[/]")
                    continue
                return Approval("edit", edited)
            return Approval(kind)


def edit_in_editor(code: str, language: str) -> str | None:
    """Open $VISUAL/$EDITOR on a private temporary file; return its content, None on failure."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    suffix = Path(LANGUAGES[Language(language)].filename).suffix
    fd, name = tempfile.mkstemp(prefix="oi-edit-", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(code)
        proc = subprocess.run([*shlex.split(editor), name], check=False)
        if proc.returncode != 0:
            return None
        # Read once: this string is what is shown, hashed and run; later changes to the file
        # cannot reach the sandbox.
        return Path(name).read_text(encoding="utf-8")
    except OSError:
        return None
    finally:
        Path(name).unlink(missing_ok=True)


def render_transcript(records: list[dict[str, Any]], console: Console) -> None:
    """A readable view of a recorded session (``oi sessions show``)."""
    for record in records:
        kind = record.get("type")
        if kind == "session":
            console.print(
                f"[bold]session {record.get('session_id')}[/] · model {record.get('model')}"
                f" · {record.get('api_base')}"
            )
        elif kind == "message":
            message = record["message"]
            role = message.get("role")
            if role == "system":
                continue
            content = message.get("content") or ""
            if message.get("tool_calls"):
                content += "".join(
                    f"\n[tool call {c['function']['name']}] {c['function']['arguments']}"
                    for c in message["tool_calls"]
                )
            console.print(Panel(Text(content), title=role, title_align="left"))
        elif kind == "event" and record.get("event") == "decision":
            console.print(
                f"[dim]block {record['index']}: {record['decision']} by {record['by']}"
                f" (sha256 {record['sha256'][:12]})[/]"
            )
        elif kind == "event" and record.get("event") == "end":
            console.print(f"[bold]{record['status']}[/]: {record['reason']}")


def passthrough() -> Callable[[str, bytes], None]:
    """Write block output to our stdout/stderr as it arrives (``oi exec``); terminal escapes
    are neutralised when the stream is a terminal."""
    sanitizers = {
        "stdout": TerminalSanitizer() if sys.stdout.isatty() else None,
        "stderr": TerminalSanitizer() if sys.stderr.isatty() else None,
    }
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}

    def write(stream: str, data: bytes) -> None:
        target = streams[stream]
        target.flush()
        sanitizer = sanitizers[stream]
        if sanitizer is None:
            target.buffer.write(data)
        else:
            target.buffer.write(sanitizer.clean(data.decode("utf-8", "replace")).encode())
        target.buffer.flush()

    return write
