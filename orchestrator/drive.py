"""Driving a session: render its events, answer its questions, forward Ctrl-C. One driver for
the terminal (``oi run``/``oi chat``) and batch; a server answers approvals its own way.

The session (``session.py``) yields events and waits for an ``Approval`` to be sent back when
an event asks for one. Ctrl-C while an event is rendered or a question is asked is thrown into
the session at its next step (it kills a running block's container, or stops at the question);
Ctrl-C while the session itself works (waiting for the model) ends the turn.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.approval import Approval
from orchestrator.events import CodeProposed, EndStatus, Event
from orchestrator.session import SessionEvents

Render = Callable[[Event], None]
Approve = Callable[[CodeProposed], Approval]


def _decline(_proposal: CodeProposed) -> Approval:
    return Approval("decline", reason="nobody to ask")


def _nothing() -> None:
    pass


def drive(
    events: SessionEvents,
    *,
    render: Render,
    approve: Approve = _decline,
    on_interrupt: Callable[[], None] = _nothing,
    stop: Callable[[], bool] | None = None,
) -> EndStatus:
    """Run ``events`` to its end; the end status. ``stop`` (polled at each event) asks the
    session to stop as Ctrl-C would (batch budgets)."""
    pending_interrupt = False
    stopped = False  # ``stop`` is thrown in once; the session then winds down by itself
    answer: Approval | None = None
    while True:
        try:
            if not stopped and stop is not None and stop():
                stopped = pending_interrupt = True
            if pending_interrupt:
                pending_interrupt = False
                event = events.throw(KeyboardInterrupt())
            else:
                event = events.send(answer)
            answer = None
        except StopIteration as finished:
            status: EndStatus = finished.value
            return status
        except KeyboardInterrupt:
            on_interrupt()
            return "interrupted"
        try:
            render(event)
            if isinstance(event, CodeProposed) and event.awaits_approval:
                answer = approve(event)
        except KeyboardInterrupt:
            on_interrupt()
            pending_interrupt = True
