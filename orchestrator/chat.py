"""``oi chat``: the conversation loop and its %commands (a thin adapter over ``Session``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.cli_common import err_console, error_line, plain
from orchestrator.errors import OiError
from orchestrator.session import Session

CHAT_HELP = """commands:
  %reset          forget the conversation (keeps the system prompt)
  %undo           forget your last message and everything after it
  %tokens         tokens used so far
  %auto on|off    run blocks without asking (sandboxed) / ask again
  %save [FILE]    save the conversation as markdown (default: oi-chat-SESSION.md here)
  %instructions   the standing instructions in force, and where they come from
  %image FILE     send an image with your next message (with --vision)
  %help           this help
  exit, quit, Ctrl-D   leave (Ctrl-C stops a running block or reply)"""


@contextlib.contextmanager
def errors_in_chat() -> Iterator[None]:
    """In chat, a failed turn is reported and the conversation goes on."""
    try:
        yield
    except OiError as exc:
        err_console.print(error_line(exc))


def chat_loop(
    session: Session, send: Callable[[str], object], read: Callable[[str], str] = input
) -> None:
    """Read lines until the person leaves; ``send`` runs one turn (rendering it)."""
    while True:
        try:
            line = read("oi> ")
        except EOFError:
            err_console.print()
            return
        except KeyboardInterrupt as exc:
            if exc.args:  # SIGTERM or SIGHUP, not Ctrl-C: stop (exit 3), not goodbye
                raise
            err_console.print("\nbye")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("exit", "quit"):
            return
        if text.startswith("%"):
            chat_command(session, text)
            continue
        kept = len(session.messages)
        try:
            send(text)
        except OiError as exc:
            err_console.print(error_line(exc))
            if len(session.messages) > kept and not _any_reply(session.messages[kept:]):
                # Nothing came back: forget the message, so sending it again is not a repeat.
                session.truncate(kept)
                plain("your message was not kept: send it again once that is fixed")


def _session_name(session: Session) -> str:
    transcript = session.transcript
    return transcript.path.stem if transcript is not None else time.strftime("%Y%m%dT%H%M%S")


def _gist(message: dict[str, object], limit: int = 60) -> str:
    """A message's first line, quoted and cut to ``limit`` characters (for %undo)."""
    content = message.get("content")
    if isinstance(content, list):  # a message with images: its text parts
        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    lines = str(content or "").strip().splitlines()
    first = lines[0] if lines else ""
    cut = first if len(first) <= limit and len(lines) <= 1 else first[: limit - 1] + "…"
    return f'"{cut}"'


def _any_reply(messages: list[dict[str, object]]) -> bool:
    return any(message.get("role") in ("assistant", "tool") for message in messages)


def chat_command(session: Session, text: str) -> None:
    command, _, argument = text.partition(" ")
    argument = argument.strip()
    if command == "%reset":
        session.reset()
        err_console.print("conversation reset")
    elif command == "%undo":
        before = list(session.messages)
        if session.undo():
            forgotten = before[len(session.messages) :]
            plain(
                f"forgot your message {_gist(forgotten[0])} and the {len(forgotten) - 1} "
                "message(s) after it (replies, block results); the files its blocks changed "
                "stay as they are"
            )
        else:
            err_console.print("nothing to undo")
    elif command == "%tokens":
        totals = session.totals
        err_console.print(
            f"prompt {totals.prompt_tokens} + completion {totals.completion_tokens} tokens; "
            f"{totals.blocks} block(s) run; ~{len(session.messages)} messages in context"
        )
    elif command == "%auto" and argument in ("on", "off"):
        session.auto_run = argument == "on"
        err_console.print(f"auto-run {argument}")
    elif command == "%auto":
        err_console.print("%auto takes on or off (%auto on: run blocks without asking)")
    elif command == "%save":
        from orchestrator.transcript import save_markdown  # noqa: PLC0415

        if not any(m.get("role") != "system" for m in session.messages):
            plain("nothing to save yet: the conversation is empty")
            return
        name = argument or f"oi-chat-{_session_name(session)}.md"
        with errors_in_chat():
            path = save_markdown(session.messages, Path(name))
            plain(f"saved the conversation to {path}")
    elif command == "%instructions":
        from orchestrator.instruction_view import show_instructions  # noqa: PLC0415

        show_instructions(session.instructions, err_console)
    elif command == "%image" and not argument:
        err_console.print("%image takes a file: %image chart.png", markup=False)
    elif command == "%image":
        with errors_in_chat():
            plain(f"with your next message: {session.images.queue(Path(argument)).describe()}")
    elif command == "%help":
        err_console.print(CHAT_HELP, markup=False)
    else:
        err_console.print(f"unknown command {text!r}\n{CHAT_HELP}", markup=False)
