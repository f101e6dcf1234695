"""What a model client yields and raises, beyond the ``ModelError`` tree: the stream's events
(text deltas, complete tool calls, usage, the end, a restart) and the client's own errors. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ModelError, ModelUnavailableError
from orchestrator.llm.extract import history_arguments


class ToolsUnsupportedError(ModelError):
    """The server refuses tool calls (vLLM started without ``--enable-auto-tool-choice``).

    In tool mode "auto" the session catches this and continues with markdown fences.
    """


class ImagesUnsupportedError(ModelError):
    """The server refuses image input (a text-only model, or a vision model served with no
    images allowed). With ``--vision`` the session says so once and goes on without images."""


class ModelTimeoutError(ModelUnavailableError):
    """The server did not answer within one of the client's bounds; ``setting`` names it."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class MalformedReplyError(ModelError):
    """The server's reply is not OpenAI's streaming format (a chunk oi cannot read)."""


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text, as it streams in."""

    text: str


@dataclass(frozen=True)
class ToolCallComplete:
    """One tool call, assembled from its streamed fragments. ``arguments`` is raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    """Token counts the server reported for the whole request."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Finished:
    """The end of a reply: why it stopped, its whole text and its complete tool calls."""

    finish_reason: str
    text: str
    tool_calls: tuple[ToolCallComplete, ...] = ()

    def assistant_message(self) -> dict[str, Any]:
        """The reply as a chat message, to append to the conversation history.

        Tool-call arguments are kept as JSON objects (``history_arguments``: the closing
        braces vLLM's hermes parser drops put back, anything else wrapped): vLLM parses the
        arguments of earlier calls as JSON, and refuses the whole next request when they are
        not.
        """
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["content"] = self.text or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": history_arguments(call.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        return message


@dataclass(frozen=True)
class StreamRestarted:
    """The reply was cut mid-stream and is being asked for again, from the start.

    Every event this ``stream_chat`` call yielded before this one belongs to the abandoned
    reply; ``partial_text`` is its text (the ``TextDelta``s joined), already shown to the
    person. ``reason`` says in one line what happened to the connection.
    """

    partial_text: str
    reason: str


StreamEvent = TextDelta | ToolCallComplete | Usage | Finished | StreamRestarted
