"""One message being worked on by a session, driven on a worker thread for HTTP clients.

The session (``session.py``) is a generator; here ``drive.drive`` runs it on a thread of its
own, so an HTTP request never blocks the server's event loop. Each event becomes one JSON
line, serialised by the CLI's own ``render.JsonRenderer`` (so the API's events are exactly
``oi run --json``'s), kept in the turn's log and pushed to every subscriber (an SSE response).

A ``CodeProposed`` that awaits approval parks the thread until ``answer`` brings an
``Approval``: approving or editing must name the sha256 of the code waiting, and another hash
is refused (``ConflictError``) without touching the session. ``stop`` (a Stop button, or the
client of the turn going away) kills the running block, whose container is removed before the
block's ``run`` returns, and ends the turn as Ctrl-C ends ``oi run``.

A slow client cannot make the server hold a fast block's output: each subscriber holds at most
``MAX_PENDING_BYTES`` of unsent output events; beyond that output is dropped and the client is
told how much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.approval import Approval
from orchestrator.drive import drive
from orchestrator.errors import ConflictError, OiError
from orchestrator.events import CodeProposed, EndStatus, Event, SessionEnded
from orchestrator.render import JsonRenderer
from orchestrator.session import Session

MAX_PENDING_BYTES = 4 << 20
MAX_LOG_LINES = 5000
CANCEL_EVERY_S = 0.25  # a stopped turn's block may only be starting: kill again until it ends


class _Lines:
    """A text stream (what ``JsonRenderer`` writes to) cut into lines for ``publish``."""

    def __init__(self, publish: Callable[[str], None]) -> None:
        self._publish = publish
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._publish(line)
        return len(text)

    def flush(self) -> None:
        pass


@dataclass(eq=False)
class Subscriber:
    """One listener (an SSE response): lines go to its asyncio queue, ``None`` ends it."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    pending: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, line: str | None, *, droppable: bool = False) -> None:
        with self.lock:
            if line is not None and droppable and self.pending > MAX_PENDING_BYTES:
                self.dropped += len(line)
                return
            if self.dropped and line is not None:
                note = {
                    "event": "notice",
                    "message": f"{self.dropped} bytes of block output were not sent: this "
                    "client read slower than the block wrote (the model still got it)",
                }
                self.dropped = 0
                self._enqueue(json.dumps(note))
            self._enqueue(line)

    def _enqueue(self, line: str | None) -> None:
        self.pending += len(line or "")
        with contextlib.suppress(RuntimeError):  # its event loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, line)

    def taken(self, line: str) -> None:
        with self.lock:
            self.pending -= len(line)


class Turn:
    """``session.send(text)`` on a thread; events out to subscribers, approvals in."""

    def __init__(self, session: Session, cancel_blocks: Callable[[], None], text: str) -> None:
        self.session = session
        self.text = text
        self._cancel_blocks = cancel_blocks
        self._cond = threading.Condition()
        self._answer: Approval | None = None
        self._stop_reason: str | None = None
        self._subscribers: set[Subscriber] = set()
        self.lines: list[str] = []
        self.pending: CodeProposed | None = None
        self.status: EndStatus | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="oi-serve-turn", daemon=True)

    def start(self) -> Turn:
        self._thread.start()
        return self

    # --- listeners ------------------------------------------------------------------------

    def subscribe(self, loop: asyncio.AbstractEventLoop, *, replay: bool = True) -> Subscriber:
        subscriber = Subscriber(loop)
        with self._cond:
            for line in self.lines if replay else []:
                subscriber.push(line)
            if self.done.is_set():
                subscriber.push(None)
            else:
                self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._cond:
            self._subscribers.discard(subscriber)

    def _publish(self, line: str) -> None:
        droppable = line.startswith('{"event": "output"')
        with self._cond:
            if not droppable:
                self.lines.append(line)
                del self.lines[:-MAX_LOG_LINES]
            for subscriber in self._subscribers:
                subscriber.push(line, droppable=droppable)

    # --- control --------------------------------------------------------------------------

    def answer(self, approval: Approval) -> None:
        """Hand an answer to the block waiting; a hash other than the waiting code's is
        refused (the client showed other code than what would run)."""
        with self._cond:
            waiting = self.pending
            if waiting is None or self._answer is not None:
                raise ConflictError("no block is waiting for approval in this session")
            if approval.kind in ("run", "edit") and approval.sha256 != waiting.sha256:
                raise ConflictError(
                    f"sha256 {approval.sha256 or '(none)'} is not the code waiting for "
                    f"approval (block {waiting.index}, sha256 {waiting.sha256}); show that "
                    "code and approve it by its hash"
                )
            if approval.kind == "edit":  # the edited code is proposed again under its own hash
                approval = Approval("edit", code=approval.code, reason=approval.reason)
            self._answer = approval
            self._cond.notify_all()

    def stop(self, reason: str) -> None:
        """Stop the turn: kill its block (again and again until the turn ends), refuse the
        block waiting for approval."""
        with self._cond:
            if self._stop_reason is not None or self.done.is_set():
                return
            self._stop_reason = reason
            self.session.interrupt_reason = reason
            self._cond.notify_all()
        threading.Thread(target=self._keep_cancelling, daemon=True).start()

    def _keep_cancelling(self) -> None:
        while not self.done.is_set():
            self._cancel_blocks()
            self.done.wait(CANCEL_EVERY_S)

    def _wait_for_answer(self, proposal: CodeProposed) -> Approval:
        with self._cond:
            while True:
                if self._stop_reason is not None:
                    self.pending = None
                    raise KeyboardInterrupt  # drive: stop at the question, as Ctrl-C does
                if self._answer is not None:
                    answer, self._answer, self.pending = self._answer, None, None
                    return answer
                self._cond.wait()

    # --- the worker -----------------------------------------------------------------------

    def _render(self, renderer: JsonRenderer) -> Callable[[Event], None]:
        def render(event: Event) -> None:
            if isinstance(event, CodeProposed) and event.awaits_approval:
                with self._cond:
                    self.pending = event  # before clients see it, so their answer finds it
            renderer.render(event)

        return render

    def _work(self) -> None:
        renderer = JsonRenderer(out=_Lines(self._publish))  # type: ignore[arg-type]
        status: EndStatus = "error"
        try:
            status = drive(
                self.session.send(self.text),
                render=self._render(renderer),
                approve=self._wait_for_answer,
                stop=lambda: self._stop_reason is not None,
            )
        except OiError as exc:
            self._publish(json.dumps({"event": "error", "message": str(exc)}))
        except Exception as exc:  # a bug must end the turn, not leave clients waiting
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._publish(json.dumps({"event": "error", "message": message}))
        finally:
            self._finish(renderer, status)

    def _finish(self, renderer: JsonRenderer, status: EndStatus) -> None:
        if not self.lines or not self.lines[-1].startswith('{"event": "end"'):
            # drive ended by an interrupt or an error: the session recorded its end but
            # yielded nothing; clients get the same end event the record holds.
            totals = self.session.totals
            reason = self._stop_reason or "stopped by an error (see the error event)"
            end = SessionEnded(status, reason, 0, totals.prompt_tokens, totals.completion_tokens)
            renderer.render(end)
        with self._cond:
            self.status = status
            self.pending = None
            self.done.set()
            for subscriber in self._subscribers:
                subscriber.push(None)
            self._subscribers.clear()

    def state(self) -> dict[str, Any]:
        waiting = self.pending
        return {
            "running": not self.done.is_set(),
            "status": self.status,
            "awaiting_approval": None if waiting is None else json.loads(_json(waiting)),
        }


def _json(event: Event) -> str:
    return json.dumps(event.to_dict(), default=str)
