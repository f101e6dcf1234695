"""The one boundary to the ``openai`` SDK: streaming chat, model discovery, error mapping.

Every ``openai`` exception is converted here, and only here, into the ``ModelError`` tree of
``orchestrator.errors`` (plus ``ToolsUnsupportedError``, defined below so the session can fall
back from tool calls to markdown fences)::

    connection refused / timeout          -> ModelUnavailableError
    404 naming a model                    -> ModelNotFoundError (lists what the server serves)
    400 "maximum context length" & co.    -> ContextOverflowError
    400 "auto" tool choice requires ...   -> ToolsUnsupportedError
    anything else                         -> ModelError (HTTP status and server message)

vLLM has sent errors in two JSON shapes: flat before 0.10.1
(``{"object": "error", "message": ..., "type": ..., "param": ..., "code": 400}``) and nested
since (``{"error": {"message": ..., "type": ..., "param": ..., "code": 400}}``). The SDK
unwraps both to the inner object; mapping reads the message from it.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import openai

from orchestrator.errors import (
    ContextOverflowError,
    ModelError,
    ModelNotFoundError,
    ModelUnavailableError,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

    from orchestrator.settings import Settings

MAX_RETRIES = 1  # one retry rides out a restarting server; more only delays a clear error
CONNECT_TIMEOUT_S = 5.0  # a local server accepts at once; do not wait the whole request timeout

_CONTEXT_MARKERS = (
    "maximum context length",  # "This model's maximum context length is N tokens. However..."
    "longer than the maximum model length",  # "The decoder prompt (length N) is longer ..."
    "please reduce the length",
    "context_length_exceeded",
)
_TOOLS_MARKERS = (
    "tool choice requires",  # '"auto" tool choice requires --enable-auto-tool-choice and ...'
    "--enable-auto-tool-choice",
    "does not support tools",
)
_MESSAGE_LIMIT = 300


class ToolsUnsupportedError(ModelError):
    """The server refuses tool calls (vLLM started without ``--enable-auto-tool-choice``).

    In tool mode "auto" the session catches this and continues with markdown fences.
    """


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
        """The reply as a chat message, to append to the conversation history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["content"] = self.text or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


StreamEvent = TextDelta | ToolCallComplete | Usage | Finished


@dataclass
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}},
}


class ModelClient:
    """Chat with one model on an OpenAI-compatible server (vLLM first).

    Takes a ready ``openai.OpenAI`` client, so tests point it at a fake server; does no I/O
    until a method is called. ``from_settings`` is the production factory.
    """

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        model: str,
        temperature: float | None = 0.7,
        top_p: float | None = 0.8,
        top_k: int | None = 20,
        max_tokens: int | None = None,
    ) -> None:
        self._client = client
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_tokens = max_tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelClient:
        """The client for ``settings.api_base`` / ``settings.model`` with Qwen's sampling."""
        client = openai.OpenAI(
            base_url=settings.api_base,
            api_key=settings.api_key,
            timeout=openai.Timeout(settings.request_timeout, connect=CONNECT_TIMEOUT_S),
            max_retries=MAX_RETRIES,
        )
        return cls(
            client,
            model=settings.model,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_tokens=settings.max_tokens,
        )

    @property
    def api_base(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Stream one reply: ``TextDelta``s, then ``ToolCallComplete``s, ``Usage``, ``Finished``.

        Raises a ``ModelError`` (see the module docstring) on the first ``next()`` when the
        request fails, or later when the stream breaks. ``close()`` on the generator stops the
        reply early and closes the HTTP response.
        """
        started = False
        try:
            for event in self._stream_chat(messages, tools):
                started = True
                yield event
        except openai.APIConnectionError as exc:
            if not started or isinstance(exc, openai.APITimeoutError):
                raise self._map_error(exc) from exc
            reason = _one_line(str(exc.__cause__ or exc), 120)
            raise ModelUnavailableError(
                f"the model server at {self.api_base} closed the connection mid-reply "
                f"({reason}): check that vLLM is still running (make up) and try again"
            ) from exc
        except openai.OpenAIError as exc:
            raise self._map_error(exc) from exc
        except json.JSONDecodeError as exc:  # the SDK parses each SSE event itself
            raise ModelError(
                f"the model server at {self.api_base} sent data that is not JSON "
                f"({exc.msg}); is OI_API_BASE an OpenAI-compatible endpoint?"
            ) from exc

    def _stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> Iterator[StreamEvent]:
        extra_body: dict[str, Any] = {}
        if self.top_k is not None:
            extra_body["top_k"] = self.top_k  # not in the OpenAI API; vLLM reads it from the body
        optional: dict[str, Any] = {}
        if self.temperature is not None:
            optional["temperature"] = self.temperature
        if self.top_p is not None:
            optional["top_p"] = self.top_p
        if self.max_tokens is not None:
            optional["max_tokens"] = self.max_tokens
        if tools:
            optional["tools"] = cast("list[ChatCompletionToolUnionParam]", tools)
            # Explicit, so a server without tool parsing refuses at once (ToolsUnsupportedError)
            # instead of letting tool-call JSON leak into the text.
            optional["tool_choice"] = "auto"
        stream = self._client.chat.completions.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra_body or None,
            **optional,
        )
        text: list[str] = []
        partial: dict[int, _PartialToolCall] = {}
        finish_reason: str | None = None
        with stream:
            for chunk in stream:
                if chunk.usage is not None:
                    yield Usage(
                        prompt_tokens=chunk.usage.prompt_tokens or 0,
                        completion_tokens=chunk.usage.completion_tokens or 0,
                    )
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue  # we never ask for n > 1
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        yield TextDelta(delta.content)
                    for fragment in delta.tool_calls or ():
                        call = partial.setdefault(fragment.index, _PartialToolCall())
                        # id and name come once, first; some servers repeat them: keep the first.
                        if fragment.id and not call.id:
                            call.id = fragment.id
                        if fragment.function is not None:
                            if fragment.function.name and not call.name:
                                call.name = fragment.function.name
                            if fragment.function.arguments:
                                call.arguments.append(fragment.function.arguments)
                    if choice.finish_reason is not None and finish_reason is None:
                        finish_reason = choice.finish_reason
                        yield from _complete_calls(partial)
        if finish_reason is None:
            raise ModelError(
                f"the model server at {self.api_base} ended the reply without a finish "
                "reason: the connection was cut or the server is not OpenAI-compatible"
            )
        yield Finished(finish_reason, "".join(text), tuple(_complete_calls(partial)))

    def list_models(self) -> list[str]:
        """The model ids the server serves (GET /models)."""
        try:
            return [model.id for model in self._client.models.list().data]
        except openai.OpenAIError as exc:
            raise self._map_error(exc) from exc

    def model_max_len(self) -> int | None:
        """The configured model's context length from GET /models (vLLM's ``max_model_len``).

        ``None`` when the server does not say (not vLLM) or does not list the model; a
        missing model is reported by the chat request itself with a precise error.
        """
        try:
            models = self._client.models.list().data
        except openai.OpenAIError as exc:
            raise self._map_error(exc) from exc
        for model in models:
            if model.id == self.model:
                value = (model.model_extra or {}).get("max_model_len")
                return value if isinstance(value, int) and value > 0 else None
        return None

    def supports_tools(self) -> bool:
        """Whether the server accepts tool calls (a one-token request; for ``oi doctor``)."""
        try:
            self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Say OK."}],
                tools=cast("list[ChatCompletionToolUnionParam]", [_PROBE_TOOL]),
                tool_choice="auto",
                max_tokens=1,
            )
        except openai.OpenAIError as exc:
            mapped = self._map_error(exc)
            if isinstance(mapped, ToolsUnsupportedError):
                return False
            raise mapped from exc
        return True

    def _map_error(self, exc: openai.OpenAIError) -> ModelError:
        """Convert one SDK exception into the oi error a person (or the session) acts on."""
        url = self.api_base
        if isinstance(exc, openai.APITimeoutError):
            return ModelUnavailableError(
                f"the model server at {url} did not answer in time: check that vLLM is up "
                "and not overloaded (make up), or raise OI_REQUEST_TIMEOUT"
            )
        if isinstance(exc, openai.APIConnectionError):
            reason = _one_line(str(exc.__cause__ or exc), 120)
            return ModelUnavailableError(
                f"cannot reach the model server at {url} ({reason}): start vLLM (make up) "
                "or set OI_API_BASE"
            )
        if not isinstance(exc, openai.APIError):
            return ModelError(f"the model request to {url} failed: {_one_line(str(exc))}")

        status = _status_of(exc)
        message = _server_message(exc)
        lowered = message.lower()
        if any(marker in lowered for marker in _CONTEXT_MARKERS) or exc.code == (
            "context_length_exceeded"
        ):
            return ContextOverflowError(
                f"the conversation no longer fits the context of {self.model} ({message}): "
                "start a new session, or serve the model with a larger --max-model-len"
            )
        if any(marker in lowered for marker in _TOOLS_MARKERS):
            return ToolsUnsupportedError(
                f"the model server at {url} does not accept tool calls ({message}): start "
                "vLLM with --enable-auto-tool-choice --tool-call-parser hermes, or set "
                "OI_TOOL_MODE=markdown"
            )
        if status == 404 and "model" in lowered:
            return ModelNotFoundError(
                f"the model server at {url} does not serve {self.model!r}{self._served_hint()}"
            )
        if status == 404:
            return ModelError(
                f"the server at {url} has no such endpoint (HTTP 404: {message}): check "
                "OI_API_BASE, which usually ends in /v1"
            )
        if status in (401, 403):
            return ModelError(
                f"the model server at {url} refused the API key (HTTP {status}: {message}): "
                "set OI_API_KEY"
            )
        where = f"HTTP {status}" if status else "an error mid-reply"
        return ModelError(f"the model server at {url} answered {where}: {message}")

    def _served_hint(self) -> str:
        try:
            served = [model.id for model in self._client.models.list().data]
        except openai.OpenAIError:
            return "; set OI_MODEL to a model it serves"
        if not served:
            return "; it serves no models yet"
        names = ", ".join(served)
        return f"; it serves: {names}. Set OI_MODEL to one of them"


def _complete_calls(partial: dict[int, _PartialToolCall]) -> Iterator[ToolCallComplete]:
    for index in sorted(partial):
        call = partial[index]
        yield ToolCallComplete(
            id=call.id or f"call_{index}", name=call.name, arguments="".join(call.arguments)
        )


def _status_of(exc: openai.APIError) -> int | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code
    # An error event inside the stream has no HTTP status; vLLM puts it in "code".
    body = exc.body
    if isinstance(body, Mapping):
        code = body.get("code")
        if isinstance(code, int):
            return code
        if isinstance(code, str) and code.isdigit():
            return int(code)
    return None


def _server_message(exc: openai.APIError) -> str:
    """The server's own message, whichever vLLM error shape carried it."""
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)  # the SDK unwraps "error"; stream events may not
        if isinstance(inner, Mapping):
            message = inner.get("message")
            if isinstance(message, str) and message:
                return _one_line(message)
        detail = body.get("detail")  # FastAPI's own 404 for an unknown path
        if isinstance(detail, str) and detail:
            return _one_line(detail)
    if isinstance(body, str) and body.strip():
        return _one_line(body)
    return _one_line(exc.message)


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
