"""Typed events the session core yields; the CLI (or batch, or a server) renders them.

Every event has ``kind`` and ``to_dict()`` so ``--json`` can print one JSON object per line and
the transcript can store it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from orchestrator.sandbox.config import SandboxDescription

EndStatus = Literal["finished", "max_turns", "quit", "loop_guard", "interrupted", "length", "error"]


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Notice(Event):
    """Something the person should know that is not an error (fallbacks, trimming, warnings)."""

    kind: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True)
class ModelWaiting(Event):
    """A request went to the model; nothing has streamed back yet (show a spinner)."""

    kind: ClassVar[str] = "model_waiting"
    turn: int


@dataclass(frozen=True)
class ModelText(Event):
    """A piece of the model's reply text, as it streams."""

    kind: ClassVar[str] = "model_text"
    text: str


@dataclass(frozen=True)
class ModelRestarted(Event):
    """The model's reply was cut mid-stream and is asked for again from the start: the text
    shown so far (``partial_text``) is not part of the conversation."""

    kind: ClassVar[str] = "model_restarted"
    partial_text: str
    reason: str


@dataclass(frozen=True)
class ModelReply(Event):
    """The model's whole reply, once it ended."""

    kind: ClassVar[str] = "model_reply"
    text: str
    finish_reason: str
    tool_calls: int
    seconds: float


@dataclass(frozen=True)
class TokenUsage(Event):
    kind: ClassVar[str] = "usage"
    prompt_tokens: int
    completion_tokens: int
    total_prompt_tokens: int
    total_completion_tokens: int


SandboxSummary = SandboxDescription
"""Where a block will run, shown on the approval screen. Chosen by settings, never the model."""


@dataclass(frozen=True)
class CodeProposed(Event):
    """A block the model wants to run, with the sandbox it would run in.

    With ``awaits_approval`` the session waits for the answer to be sent back (``Approval``).
    """

    kind: ClassVar[str] = "code_proposed"
    index: int
    language: str
    code: str
    sha256: str
    sandbox: SandboxSummary
    source: str
    awaits_approval: bool = False
    edited: bool = False  # the person changed the model's code: this is their version


@dataclass(frozen=True)
class Decision(Event):
    """What the person (or the auto-run setting) decided for a block.

    ``sha256`` is the hash of exactly the code that will run (after any edit).
    """

    kind: ClassVar[str] = "decision"
    index: int
    decision: Literal["run", "declined", "edited", "quit", "skipped"]
    sha256: str
    by: Literal["user", "auto", "policy"]
    reason: str = ""


@dataclass(frozen=True)
class BlockOutput(Event):
    """Output of the running block, live."""

    kind: ClassVar[str] = "output"
    index: int
    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class BlockResult(Event):
    """How a block ended, and exactly what the model is told about it."""

    kind: ClassVar[str] = "result"
    index: int
    language: str
    sha256: str
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    duration_s: float
    interrupted: bool
    for_model: str
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionEnded(Event):
    """The task ended: finished, or stopped (and why)."""

    kind: ClassVar[str] = "end"
    status: EndStatus
    reason: str
    turns: int
    prompt_tokens: int
    completion_tokens: int
    session_id: str = ""  # the record's id: `oi sessions show ID`, `oi chat --resume ID`
