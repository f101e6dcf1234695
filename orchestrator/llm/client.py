"""The one boundary to the ``openai`` SDK: streaming chat, model discovery, error mapping,
timeouts and retries.

Every ``openai`` exception is converted here, and only here, into the ``ModelError`` tree of
``orchestrator.errors`` (plus the subclasses below: ``ToolsUnsupportedError`` so the session
can fall back from tool calls to markdown fences, ``ModelTimeoutError``, ``MalformedReplyError``)::

    connection refused / dropped          -> ModelUnavailableError (once the retries are spent)
    no answer within a timeout            -> ModelTimeoutError (a ModelUnavailableError) naming
                                             the setting and its OI_* variable
    404 naming a model                    -> ModelNotFoundError (lists what the server serves)
    400 "maximum context length" & co.    -> ContextOverflowError
    400 "auto" tool choice requires ...   -> ToolsUnsupportedError
    400 "... is not a multimodal model"   -> ImagesUnsupportedError (and other servers' words)
    a chunk of unexpected shape, non-JSON -> MalformedReplyError
    anything else                         -> ModelError (HTTP status and server message)

vLLM has sent errors in two JSON shapes: flat before 0.10.1
(``{"object": "error", "message": ..., "type": ..., "param": ..., "code": 400}``) and nested
since (``{"error": {"message": ..., "type": ..., "param": ..., "code": 400}}``). The SDK
unwraps both to the inner object; mapping reads the message from it.

Time bounds (``ModelClient`` arguments; ``Settings`` fields and ``OI_*`` variables of the same
names). One ``request_timeout`` used to bound everything, so a server that accepted and never
answered was waited on for 600 s, twice. Now each phase has its own bound::

    connect_timeout       5 s    opening the TCP connection
    first_token_timeout  60 s    from sending the request to the reply's first chunk
    stream_idle_timeout  60 s    the longest silence between two chunks
    request_timeout     600 s    one whole reply, kept: a reply that streams steadily but never
                                 ends (a repetition loop without max_tokens) is still bounded
    models_timeout       10 s    GET /v1/models (``list_models``, ``model_max_len``)

The reply is read in a worker thread (``pump.py``) so these deadlines hold whatever the socket
does. Retries (``retry.py``; the SDK's own are off): HTTP 429/500/502/503/504 and refused or
dropped connections before the reply started, up to ``retry_attempts`` tries within
``retry_deadline`` seconds, with exponential backoff and jitter, honouring a sane
``Retry-After``. Timeouts are not retried. A reply cut after its text started streaming is
asked for again once, from the start, announced by ``StreamRestarted`` (see ``stream_chat``).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import openai

from orchestrator.errors import (
    ContextOverflowError,
    ModelError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from orchestrator.llm.chunks import ChunkParts, ChunkShapeError, parse_chunk
from orchestrator.llm.pump import Ended, StreamPump
from orchestrator.llm.retry import RETRYABLE_STATUSES, NextTry, RetryPolicy, next_try, retry_after_s
from orchestrator.llm.types import (
    Finished,
    ImagesUnsupportedError,
    MalformedReplyError,
    ModelTimeoutError,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    ToolCallComplete,
    ToolsUnsupportedError,
    Usage,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

# Defaults; Settings repeats them (a test checks they agree).
CONNECT_TIMEOUT_S = 5.0  # a local server accepts at once
FIRST_TOKEN_TIMEOUT_S = (
    60.0  # a 32k-token prompt prefills in seconds on one GPU; a queue may add more
)
STREAM_IDLE_TIMEOUT_S = 60.0  # vLLM streams every few tens of ms; a minute of silence is a stall
REQUEST_TIMEOUT_S = 600.0
MODELS_TIMEOUT_S = 10.0  # a list of models is instant when the server is up
RETRY_ATTEMPTS = 4
RETRY_DEADLINE_S = 30.0
RETRY_BACKOFF_S = 0.5
# The worker thread's own socket timeout lies this far beyond the reader's deadlines, so the
# reader always decides (and names the right setting); the thread is then interrupted.
_BACKSTOP_GRACE_S = 1.0

Phase = Literal["connect", "first_token", "idle", "reply", "models"]
_API_BASE_HINT = "--api-base / OI_API_BASE"  # a hint names the flag and the variable
_PHASE_SETTINGS: dict[Phase, str] = {
    "connect": "connect_timeout, OI_CONNECT_TIMEOUT",
    "first_token": "first_token_timeout, OI_FIRST_TOKEN_TIMEOUT",
    "idle": "stream_idle_timeout, OI_STREAM_IDLE_TIMEOUT",
    "reply": "request_timeout, OI_REQUEST_TIMEOUT",
    "models": "models_timeout, OI_MODELS_TIMEOUT",
}

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
_IMAGES_MARKERS = (
    "is not a multimodal model",  # vLLM serving a text-only model
    "at most 0 image",  # vLLM with --limit-mm-per-prompt image=0
    "image input is not supported",  # llama.cpp's server without a projector
    "does not support image",
    "image_url is only supported",  # OpenAI's own API
    "unknown part type: image_url",
)
_MESSAGE_LIMIT = 300


@dataclass
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Reply:
    """One reply as its chunks arrive: pure bookkeeping, chunk parts in, events out."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialToolCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def add(self, parts: ChunkParts) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if parts.usage is not None:
            events.append(Usage(*parts.usage))
        if parts.content:
            self.text.append(parts.content)
            events.append(TextDelta(parts.content))
        for fragment in parts.tool_fragments:
            call = self.calls.setdefault(fragment.index, _PartialToolCall())
            # id and name come once, first; some servers repeat them: keep the first.
            if fragment.id and not call.id:
                call.id = fragment.id
            if fragment.name and not call.name:
                call.name = fragment.name
            if fragment.arguments:
                call.arguments.append(fragment.arguments)
        if parts.finish_reason is not None and self.finish_reason is None:
            self.finish_reason = parts.finish_reason
            events.extend(_complete_calls(self.calls))
        return events

    def finished(self) -> Finished:
        return Finished(
            self.finish_reason or "", "".join(self.text), tuple(_complete_calls(self.calls))
        )


@dataclass(frozen=True)
class _ChatRequest:
    messages: list[dict[str, Any]]
    optional: dict[str, Any]
    extra_body: dict[str, Any] | None


class _Retryable(Exception):  # internal control flow: never leaves this module
    """A try failed in a way another try may fix; ``error`` is what to raise if none does."""

    def __init__(self, error: ModelError, reason: str, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Cut:
    """The connection broke; whether that ends the reply depends on how far it got."""

    failure: _Retryable


_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}},
}


class ModelClient:
    """Chat with one model on an OpenAI-compatible server (vLLM first).

    Takes a ready ``openai.OpenAI`` client, so tests point it at a fake server (its own
    retries are turned off: this class owns the loop); does no I/O until a method is called.
    The time bounds and retry settings are described in the module docstring; ``sleep`` and
    ``jitter`` (a number in [0, 1)) are seams for tests. ``wiring.model_client`` is the production
    factory.
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
        connect_timeout: float = CONNECT_TIMEOUT_S,
        first_token_timeout: float = FIRST_TOKEN_TIMEOUT_S,
        stream_idle_timeout: float = STREAM_IDLE_TIMEOUT_S,
        request_timeout: float = REQUEST_TIMEOUT_S,
        models_timeout: float = MODELS_TIMEOUT_S,
        retry_attempts: int = RETRY_ATTEMPTS,
        retry_deadline: float = RETRY_DEADLINE_S,
        retry_backoff: float = RETRY_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._client = client.with_options(max_retries=0)
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.request_timeout = request_timeout
        self.models_timeout = models_timeout
        self.retry = RetryPolicy(max(1, retry_attempts), retry_deadline, retry_backoff)
        self._sleep = sleep
        self._jitter = jitter

    @property
    def api_base(self) -> str:
        return str(self._client.base_url).rstrip("/")

    # --- chat -----------------------------------------------------------------------------

    def stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Stream one reply: ``TextDelta``s, then ``ToolCallComplete``s, ``Usage``, ``Finished``.

        Raises a ``ModelError`` (see the module docstring; one line, no traceback of the SDK's)
        on the first ``next()`` when the request fails, or later when the stream breaks.
        ``close()`` on the generator stops the reply early and closes the HTTP response.

        The restart contract: when the connection is cut after some ``TextDelta``s were
        yielded, the generator yields ``StreamRestarted(partial_text, reason)`` once, then
        asks again and yields the new reply's events from its first ``TextDelta`` to its
        ``Finished``. The caller must drop what it accumulated from the earlier events (text,
        and anything else: no ``ToolCallComplete`` or ``Usage`` precedes a cut, since they
        come with the finish) and may record ``partial_text`` as a reply that was cut. Only
        the events after the last ``StreamRestarted`` make up the reply. A second cut raises
        ``ModelUnavailableError``. A cut before any text was yielded is an ordinary retry and
        yields nothing.
        """
        request = self._chat_request(messages, tools)
        first_try = time.monotonic()
        tries = 0
        restarted = False
        while True:
            tries += 1
            shown: list[str] = []
            attempt = self._attempt(request)
            try:
                for event in attempt:
                    if isinstance(event, TextDelta):
                        shown.append(event.text)
                    yield event
                return
            except _Retryable as failure:
                cause = failure.__cause__
                if shown and restarted:
                    raise ModelUnavailableError(
                        f"the model server at {self.api_base} cut the reply twice "
                        f"({failure.reason}): check that vLLM is still running (make up) "
                        "and try again"
                    ) from cause
                if shown:
                    restarted = True
                    yield StreamRestarted("".join(shown), failure.reason)
                    first_try, tries = time.monotonic(), 0  # the new reply gets its own tries
                    continue
                elapsed = time.monotonic() - first_try
                decision = next_try(
                    self.retry,
                    tries=tries,
                    elapsed_s=elapsed,
                    retry_after_s=failure.retry_after,
                    unit=self._jitter(),
                )
                if decision.wait_s is None:
                    raise self._gave_up(failure.error, decision, tries, elapsed) from cause
                self._sleep(decision.wait_s)
            finally:
                attempt.close()

    def _chat_request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> _ChatRequest:
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
        return _ChatRequest(messages, optional, extra_body or None)

    def _attempt(self, request: _ChatRequest) -> Generator[StreamEvent, None, None]:
        """One try: the reply's chunks as events, each wait bounded by the deadline in force.

        Raises ``_Retryable`` when another try may succeed, a ``ModelError`` when not.
        """
        began = time.monotonic()
        pump: StreamPump[object] = StreamPump(
            partial(self._produce, request), name="oi-model-reply"
        ).start()
        reply = _Reply()
        last_chunk: float | None = None
        try:
            while True:
                phase, deadline = self._deadline(began, last_chunk)
                item = self._receive(pump, phase, deadline, started=last_chunk is not None)
                if isinstance(item, Ended):
                    break
                if isinstance(item, _Cut):
                    if reply.finish_reason is not None:
                        break  # the reply is whole; only its usage and [DONE] were lost
                    raise item.failure from item.failure.__cause__
                last_chunk = time.monotonic()
                try:
                    parts = parse_chunk(item)
                except ChunkShapeError as exc:
                    raise MalformedReplyError(
                        f"the model server at {self.api_base} sent a chunk oi cannot read "
                        f"({exc}): is {_API_BASE_HINT} an OpenAI-compatible endpoint such as vLLM?"
                    ) from None
                yield from reply.add(parts)
        finally:
            pump.cancel()
        if reply.finish_reason is None:
            raise _Retryable(
                ModelUnavailableError(
                    f"the model server at {self.api_base} ended the reply without a finish "
                    "reason: the connection was cut or the server is not OpenAI-compatible"
                ),
                "the reply ended without a finish reason",
            )
        yield reply.finished()

    def _receive(
        self, pump: StreamPump[object], phase: Phase, deadline: float, *, started: bool
    ) -> object:
        """The reply's next JSON value, ``Ended()``, or a ``_Cut``; every other failure raised
        as the ``ModelError`` (or ``_Retryable``) it maps to."""
        try:
            return pump.get(deadline - time.monotonic())
        except TimeoutError:
            raise self._timeout(phase) from None
        except openai.APITimeoutError as exc:
            # The thread's socket timeouts lie beyond the deadlines: before them, only the
            # connect timeout can fire.
            early = not started and time.monotonic() < deadline
            raise self._timeout("connect" if early else phase) from exc
        except openai.APIConnectionError as exc:
            failure = self._connection_failed(exc, started=started)
            failure.__cause__ = exc
            return _Cut(failure)
        except openai.APIStatusError as exc:
            mapped = self._map_error(exc)
            if exc.status_code in RETRYABLE_STATUSES:
                wait = retry_after_s(exc.response.headers, time.time())
                raise _Retryable(mapped, f"HTTP {exc.status_code}", wait) from exc
            raise mapped from exc
        except openai.OpenAIError as exc:  # an error event inside the stream
            raise self._map_error(exc) from exc
        except ValueError as exc:  # the SDK decodes each SSE event: UTF-8, then JSON
            raise self._undecodable(exc) from exc

    def _produce(
        self, request: _ChatRequest, pump: StreamPump[object]
    ) -> Generator[object, None, None]:
        """The worker thread's part: send the request, then each SSE event's JSON as sent."""
        backstop = (
            min(max(self.first_token_timeout, self.stream_idle_timeout), self.request_timeout)
            + _BACKSTOP_GRACE_S
        )
        timeout = openai.Timeout(
            connect=self.connect_timeout, read=backstop, write=backstop, pool=self.connect_timeout
        )
        with self._client.chat.completions.with_streaming_response.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", request.messages),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=request.extra_body,
            timeout=timeout,
            **request.optional,
        ) as response:
            http_response = response.http_response
            pump.on_cancel(partial(_interrupt, http_response))
            # cast_to=object: the chunks stay plain JSON for parse_chunk to check; the SDK
            # still decodes SSE, stops at [DONE], raises error events and maps socket errors.
            yield from openai.Stream(cast_to=object, response=http_response, client=self._client)

    def _deadline(self, began: float, last_chunk: float | None) -> tuple[Phase, float]:
        phase: Phase
        if last_chunk is None:
            phase, deadline = "first_token", began + self.first_token_timeout
        else:
            phase, deadline = "idle", last_chunk + self.stream_idle_timeout
        whole = began + self.request_timeout
        return ("reply", whole) if whole < deadline else (phase, deadline)

    # --- model discovery --------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """The model ids the server serves (GET /models), within ``models_timeout``."""
        return [model.id for model in self._models()]

    def model_max_len(self) -> int | None:
        """The configured model's context length from GET /models (vLLM's ``max_model_len``).

        ``None`` when the server does not say (not vLLM) or does not list the model; a
        missing model is reported by the chat request itself with a precise error.
        """
        for model in self._models():
            if model.id == self.model:
                value = (model.model_extra or {}).get("max_model_len")
                return value if isinstance(value, int) and value > 0 else None
        return None

    def _models(self) -> list[Any]:
        timeout = openai.Timeout(
            self.models_timeout, connect=min(self.connect_timeout, self.models_timeout)
        )
        try:
            return list(self._client.models.list(timeout=timeout).data)
        except openai.OpenAIError as exc:
            raise self._map_error(exc, timeout_phase="models") from exc

    def supports_tools(self) -> bool:
        """Whether the server accepts tool calls (a one-token request; for ``oi doctor``)."""
        try:
            self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Say OK."}],
                tools=cast("list[ChatCompletionToolUnionParam]", [_PROBE_TOOL]),
                tool_choice="auto",
                max_tokens=1,
                timeout=openai.Timeout(self.first_token_timeout, connect=self.connect_timeout),
            )
        except openai.OpenAIError as exc:
            mapped = self._map_error(exc)
            if isinstance(mapped, ToolsUnsupportedError):
                return False
            raise mapped from exc
        return True

    # --- errors -----------------------------------------------------------------------------

    def _timeout(self, phase: Phase) -> ModelTimeoutError:
        url = self.api_base
        setting = _PHASE_SETTINGS[phase]
        if phase == "connect":
            limit = self.connect_timeout
            text = (
                f"cannot connect to the model server at {url} within {limit:g} s ({setting}): "
                f"check {_API_BASE_HINT} and that the host is up"
            )
        elif phase == "first_token":
            limit = self.first_token_timeout
            text = (
                f"no reply from the model server at {url} within {limit:g} s ({setting}): "
                "it may be overloaded; raise it or check the server"
            )
        elif phase == "idle":
            limit = self.stream_idle_timeout
            text = (
                f"the model server at {url} stopped sending its reply for {limit:g} s "
                f"({setting}): it may have stalled; check the server or raise it"
            )
        elif phase == "reply":
            limit = self.request_timeout
            text = (
                f"the model server at {url} did not finish the reply within {limit:g} s "
                f"({setting}): it may be looping; set OI_MAX_TOKENS or raise it"
            )
        else:
            limit = self.models_timeout
            text = (
                f"the model server at {url} did not list its models within {limit:g} s "
                f"({setting}): check that vLLM is up (make up) or raise it"
            )
        return ModelTimeoutError(text, setting.split(",", 1)[0])

    def _connection_failed(self, exc: openai.APIConnectionError, *, started: bool) -> _Retryable:
        reason = _one_line(str(exc.__cause__ or exc), 120)
        if not started:
            return _Retryable(self._map_error(exc), f"the connection failed ({reason})")
        error = ModelUnavailableError(
            f"the model server at {self.api_base} closed the connection mid-reply ({reason}): "
            "check that vLLM is still running (make up) and try again"
        )
        return _Retryable(error, f"the connection closed mid-reply ({reason})")

    def _undecodable(self, exc: ValueError) -> MalformedReplyError:
        url = self.api_base
        if isinstance(exc, UnicodeDecodeError):
            return MalformedReplyError(
                f"the model server at {url} sent bytes that are not UTF-8 text "
                f"({_one_line(exc.reason, 80)}); is {_API_BASE_HINT} an OpenAI-compatible endpoint?"
            )
        message = getattr(exc, "msg", None) or str(exc)
        return MalformedReplyError(
            f"the model server at {url} sent data that is not JSON "
            f"({_one_line(message, 80)}); is {_API_BASE_HINT} an OpenAI-compatible endpoint?"
        )

    def _gave_up(
        self, error: ModelError, decision: NextTry, tries: int, elapsed: float
    ) -> ModelError:
        """``error`` with one clause saying why no further try was made."""
        count = f"{tries} {'try' if tries == 1 else 'tries'} in {elapsed:.1f} s"
        deadline = f"{self.retry.deadline_s:g} s retry deadline (retry_deadline, OI_RETRY_DEADLINE)"
        if decision.give_up == "retry_after":
            note = (
                f"; it asks to retry after {decision.retry_after_s:g} s, past the {deadline}: "
                "wait and run again"
            )
        elif decision.give_up == "deadline":
            note = f"; gave up after {count}: the next wait would pass the {deadline}"
        else:
            note = f"; gave up after {count} (retry_attempts, OI_RETRY_ATTEMPTS)"
        error.args = (f"{error}{note}",)
        return error

    def _map_error(
        self, exc: openai.OpenAIError, *, timeout_phase: Phase = "first_token"
    ) -> ModelError:
        """Convert one SDK exception into the oi error a person (or the session) acts on."""
        url = self.api_base
        if isinstance(exc, openai.APITimeoutError):
            return self._timeout(timeout_phase)
        if isinstance(exc, openai.APIConnectionError):
            reason = _one_line(str(exc.__cause__ or exc), 120)
            return ModelUnavailableError(
                f"cannot reach the model server at {url} ({reason}): start it (on a GPU host "
                "here: make up), or point oi at one that runs (--api-base URL, OI_API_BASE)"
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
        if any(marker in lowered for marker in _IMAGES_MARKERS):
            return ImagesUnsupportedError(
                f"the model server at {url} does not take images ({message}): serve a vision "
                "model (Qwen2.5-VL, Qwen3-VL) for --vision"
            )
        if status == 404 and "model" in lowered:
            return ModelNotFoundError(
                f"the model server at {url} does not serve {self.model!r}{self._served_hint()}"
            )
        if status == 404:
            return ModelError(
                f"the server at {url} has no such endpoint (HTTP 404: {message}): check "
                f"{_API_BASE_HINT}, which usually ends in /v1"
            )
        if status in (401, 403):
            return ModelError(
                f"the model server at {url} refused the API key (HTTP {status}: {message}): "
                "pass the right key with --api-key / OI_API_KEY"
            )
        where = f"HTTP {status}" if status else "an error mid-reply"
        return ModelError(f"the model server at {url} answered {where}: {message}")

    def _served_hint(self) -> str:
        try:
            served = self.list_models()
        except ModelError:
            return "; choose a model it serves with --model / OI_MODEL"
        if not served:
            return "; it serves no models yet"
        names = ", ".join(served)
        return f"; it serves: {names}. Choose one with --model / OI_MODEL"


def _interrupt(http_response: Any) -> None:
    """Shut the reply's socket down so a read blocked in the worker thread returns at once.

    ``shutdown`` wakes a blocked ``recv`` (``close`` from another thread does not, on Linux).
    Without a socket to reach (another transport) the thread ends on its own read timeout.
    """
    stream = http_response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        sock.shutdown(socket.SHUT_RDWR)


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


__all__ = [
    "Finished",
    "ImagesUnsupportedError",
    "MalformedReplyError",
    "ModelClient",
    "ModelTimeoutError",
    "StreamEvent",
    "StreamRestarted",
    "TextDelta",
    "ToolCallComplete",
    "ToolsUnsupportedError",
    "Usage",
]
