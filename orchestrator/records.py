"""The session record's lines as typed models: the contract between the writer (the session,
``wiring.record_header``) and every reader (``oi sessions list/show``, ``oi chat --resume``,
``oi replay``, batch, the demo).

Each line is one JSON object with ``type``; ``event`` lines carry the session event's own
``event`` kind. ``Record`` is a discriminated union over both (``event:<kind>`` tags), with a
lenient catch-all for events no reader needs, so old and new oi versions read each other's
files. The header carries the record format's version ``v`` (absent in files before it: 0).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from orchestrator.llm.extract import history_arguments

RECORD_VERSION = 1


class _Line(BaseModel):
    model_config = ConfigDict(extra="allow")

    t: float = 0.0


class SessionHeader(_Line):
    """The first line of a session (and of each resumption)."""

    type: Literal["session"]
    v: int = 0
    session_id: str = ""
    resumed: bool = False
    oi_version: str = ""
    model: str = "?"
    api_base: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    note: str | None = None
    batch: dict[str, Any] | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: str = "function"
    function: ToolFunction


class ChatMessage(BaseModel):
    """A message of the conversation, as sent to the model."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def for_model(self) -> dict[str, Any]:
        """The message as it was recorded (only the keys it had), tool-call arguments as JSON
        objects (a record from before ``history_arguments`` may hold malformed ones)."""
        message = self.model_dump(exclude_unset=True)
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = history_arguments(call["function"]["arguments"])
        return message


class MessageRecord(_Line):
    type: Literal["message"]
    message: ChatMessage


class TruncateRecord(_Line):
    """``%undo``/``%reset``: the history was cut to ``length`` messages."""

    type: Literal["history_truncate"]
    length: int = Field(ge=0)


class CodeProposedRecord(_Line):
    type: Literal["event"]
    event: Literal["code_proposed"]
    index: int
    language: str
    code: str
    sha256: str
    source: str = ""
    sandbox: dict[str, Any] = Field(default_factory=dict)


class DecisionRecord(_Line):
    type: Literal["event"]
    event: Literal["decision"]
    index: int
    decision: Literal["run", "declined", "edited", "quit", "skipped"]
    sha256: str
    by: str = "user"
    reason: str = ""


class ResultRecord(_Line):
    type: Literal["event"]
    event: Literal["result"]
    index: int
    sha256: str
    language: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_s: float = 0.0
    interrupted: bool = False
    for_model: str = ""
    result: dict[str, Any] = Field(default_factory=dict)


class EndRecord(_Line):
    type: Literal["event"]
    event: Literal["end"]
    status: str
    reason: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OtherEvent(_Line):
    """Events readers show but need nothing typed of (notices, usage, model replies)."""

    type: Literal["event"]
    event: str


_TYPED_EVENTS = ("code_proposed", "decision", "result", "end")


def _tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "event":
        event = value.get("event")
        return f"event:{event}" if event in _TYPED_EVENTS else "event:other"
    return kind if isinstance(kind, str) else None


Record = Annotated[
    Annotated[SessionHeader, Tag("session")]
    | Annotated[MessageRecord, Tag("message")]
    | Annotated[TruncateRecord, Tag("history_truncate")]
    | Annotated[CodeProposedRecord, Tag("event:code_proposed")]
    | Annotated[DecisionRecord, Tag("event:decision")]
    | Annotated[ResultRecord, Tag("event:result")]
    | Annotated[EndRecord, Tag("event:end")]
    | Annotated[OtherEvent, Tag("event:other")],
    Discriminator(_tag),
]
_ADAPTER: TypeAdapter[Record] = TypeAdapter(Record)


class BadRecord(ValueError):
    """A line that is JSON but not a record oi wrote (its first problem in words)."""


def parse_record(data: Any) -> Record:
    """One record line (already JSON-decoded) as its model; ``BadRecord`` if it is none."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "record"
        kind = _tag(data) or "record"
        raise BadRecord(f"a {kind.removeprefix('event:')} line: {where}: {err['msg']}") from None


def parse_records(lines: list[dict[str, Any]]) -> tuple[list[Record], list[str]]:
    """The records that parse, and one problem line for each that does not (skipped)."""
    records: list[Record] = []
    problems: list[str] = []
    for number, data in enumerate(lines, start=1):
        try:
            records.append(parse_record(data))
        except BadRecord as exc:
            problems.append(f"record {number}: {exc}")
    return records, problems


def rebuild_history(records: list[Record]) -> list[dict[str, Any]]:
    """The chat history at the end of a session, honouring %undo and %reset."""
    history: list[dict[str, Any]] = []
    for record in records:
        if isinstance(record, MessageRecord):
            history.append(record.message.for_model())
        elif isinstance(record, TruncateRecord):
            del history[record.length :]
    return history
