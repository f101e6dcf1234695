"""A fake vLLM: a real HTTP server on 127.0.0.1 speaking vLLM's OpenAI-compatible protocol.

Tests drive the real ``openai`` client (and ``ModelClient``) against it, so SSE framing, chunk
shapes, tool-call deltas and error bodies are exercised as they are in production.

What it mimics (vLLM's ``serving_chat`` / ``protocol``):

- ``POST /v1/chat/completions``, streaming: ``data: {json}\\n\\n`` events. The first chunk has
  ``delta {"role": "assistant", "content": ""}``; then content pieces; tool calls as deltas by
  index (the first with ``id`` "chatcmpl-tool-...", ``type`` "function" and ``function.name``,
  then argument fragments); ``finish_reason`` on the last content chunk or in a separate chunk
  (``"tool_calls"`` when tools were called); with ``stream_options.include_usage`` a final
  chunk with ``choices: []`` and ``usage``; then ``data: [DONE]``. Chunks carry ``id``
  ("chatcmpl-..."), ``object`` "chat.completion.chunk", ``created`` and ``model``; choices
  carry ``index``, ``delta``, ``logprobs: null`` and ``finish_reason``. Chunked transfer
  encoding, like uvicorn.
- The same endpoint without ``stream``: one ``chat.completion`` object.
- ``GET /v1/models`` (each model with ``max_model_len``) and ``GET /health``.
- Errors in both of vLLM's shapes with their HTTP status: flat before 0.10.1
  (``{"object": "error", "message", "type", "param", "code"}``) and nested since
  (``{"error": {"message", "type", "param", "code"}}``). Mid-stream errors are sent as an SSE
  event ``{"error": {...}}`` followed by ``[DONE]``, as vLLM does.
- Built-in checks vLLM makes: an unknown model is a 404 ("The model `x` does not exist."),
  tools with ``tool_choice`` "auto" on a server started without ``--enable-auto-tool-choice``
  are a 400, an earlier assistant tool call in the messages whose arguments are not JSON is a
  400 (vLLM parses them for the chat template), and a prompt over ``max_model_len``
  (estimated as characters / 4, an image as ``IMAGE_TOKENS``) is a 400; ``image_url`` parts
  sent to a fake started without ``vision=True`` are a 400 ("... is not a multimodal model",
  what vLLM says for a text-only model such as Qwen3-4B).

Misbehaviour, as real servers and the proxies in front of them fail (``Reply`` fields, plus
``FakeVllm(hang_models=True)``):

- ``hang_before_headers``: accept the connection, read the request, never answer (a wedged
  server or a proxy whose upstream hangs); ``drop_before_headers``: read the request, then
  close the connection without a status line (a server restarting, a proxy losing its upstream).
- ``stall_after_chunks=N``: send the headers and N SSE events, then nothing (0: headers only,
  what vLLM does while a request waits in its queue or prefills); ``drop_after_chunks=N``: send
  N events, then close the TCP connection without the terminating chunk (a server killed
  mid-reply); ``drop_connection``: the same after half of the events.
- HTTP errors a proxy or rate limiter sends: ``ErrorReply.headers`` (``rate_limited`` with
  ``Retry-After``) and ``ErrorReply.text`` (``gateway_error``: nginx's HTML page for 502/503/504).
  Queue several to have N failures before the reply, e.g. ``fake.script(*[bad] * 2, good)``.
- ``malformed_chunk``: one event whose data is sent as given (``MALFORMED_CHUNKS`` holds one of
  each kind: no ``choices``, ``choices`` not a list, a JSON array, a number, no ``delta``, a
  non-string ``content``, bytes that are not UTF-8, text that is not JSON), after the first chunk.
- ``hang_models``: ``GET /v1/models`` accepts and never answers.
- ``chunk_delay_s``: a pause before each event after the first (a slow, steady generation).

Concurrency: ``fake.in_flight`` is the number of chat requests being generated now (from the
moment the request is read until its last event is written, as vLLM counts a running request)
and ``fake.max_in_flight`` the most there ever were at once, so tests can check a client-side
bound on requests in flight.

A hang lasts until the fake is closed (or ``HANG_LIMIT_S``), then the connection is closed.

Scripting: queue ``Reply`` objects (or callables ``(request_json) -> Reply``) with
``fake.script(...)``; each chat request takes the next one (with none left: a 500). Every
request is recorded in ``fake.requests`` (method, path, headers, parsed JSON body) as soon as
it is read, so a request the fake never answers is counted too.

Use ``with FakeVllm() as fake: ...`` or the ``fake_vllm`` pytest fixture in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

ErrorShape = Literal["flat", "nested"]

DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
HANG_LIMIT_S = 30.0  # a hang the test forgot to end still ends
IMAGE_TOKENS = 600  # what the fake counts for one image part
TOOLS_DISABLED_MESSAGE = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)


@dataclass(frozen=True)
class ErrorReply:
    """An error as vLLM sends it. ``shape`` None means the server's default shape."""

    status: int
    message: str
    type: str = "BadRequestError"
    param: str | None = None
    shape: ErrorShape | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After
    text: str | None = None  # a non-JSON body (text/html), as proxies send; replaces the JSON


def rate_limited(retry_after: str | None = "1", header: str = "Retry-After") -> ErrorReply:
    """A 429 from a rate-limiting proxy in front of vLLM (LiteLLM, an API gateway).

    ``header`` "retry-after-ms" gives the wait in milliseconds, as OpenAI's and Azure's do.
    """
    headers = {} if retry_after is None else {header: retry_after}
    return ErrorReply(429, "Rate limit exceeded", "RateLimitError", headers=headers)


def service_unavailable(retry_after: str | None = None) -> ErrorReply:
    """A 503 in vLLM's JSON shape (an overloaded or restarting server)."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return ErrorReply(503, "Service Unavailable", "ServiceUnavailableError", headers=headers)


_NGINX_REASONS = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def gateway_error(status: int = 502) -> ErrorReply:
    """nginx's own error page, sent when the vLLM behind it is down or too slow."""
    reason = _NGINX_REASONS[status]
    page = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return ErrorReply(status, reason, "", text=page)


# One chunk of each unexpected shape (the data of one SSE event, sent as is).
MALFORMED_CHUNKS: dict[str, str | bytes] = {
    "no choices": '{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}',
    "choices not a list": '{"id": "chatcmpl-1", "choices": {"index": 0, "delta": {}}}',
    "a JSON array": '[{"index": 0, "delta": {"content": "hi"}}]',
    "a number": "42",
    "no delta": '{"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": null}]}',
    "non-string content": '{"choices": [{"index": 0, "delta": {"content": {"text": "hi"}}}]}',
    "garbage bytes": b"\xff\xfe\x00\x9c garbage",
    "not JSON": "<html><body>upstream error</body></html>",
}


def context_overflow(max_model_len: int = 32768, requested: int = 40000) -> ErrorReply:
    """vLLM's 400 for a conversation longer than the context (pre-0.10.1 wording)."""
    return ErrorReply(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {requested} tokens ({requested - 1000} in the messages, 1000 in the "
        "completion). Please reduce the length of the messages or completion.",
    )


def prompt_too_long(max_model_len: int = 32768, length: int = 40000) -> ErrorReply:
    """vLLM's 400 from input processing for a prompt longer than the model length (V1)."""
    return ErrorReply(
        400,
        f"The decoder prompt (length {length}) is longer than the maximum model length of "
        f"{max_model_len}. Make sure that `max_model_len` is no smaller than the number of "
        "text tokens.",
    )


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call the fake model makes. ``arguments`` as a dict is JSON-encoded."""

    name: str
    arguments: str | dict[str, Any]
    id: str | None = None  # default: "chatcmpl-tool-<hex>"
    argument_chunks: list[str] | None = None  # how the arguments stream; default: 7 chars
    name_only_first_delta: bool = False  # vLLM's hermes parser omits "arguments" at first
    repeat_id_and_name: bool = False  # some OpenAI-compatible servers resend them every delta

    @property
    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """One scripted model reply.

    ``chunks`` gives the exact content pieces (their join must equal ``text`` when both are
    given); otherwise ``text`` streams in pieces of ``chunk_size`` characters.
    """

    text: str = ""
    chunks: list[str] | None = None
    chunk_size: int = 5
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    finish_reason: str | None = None  # default: "tool_calls" if tool_calls else "stop"
    finish_in_separate_chunk: bool = False
    usage: tuple[int, int] | None = None  # (prompt, completion); default: estimated
    error: ErrorReply | None = None  # answer this HTTP error instead of a reply
    stream_error: ErrorReply | None = None  # send this error event after the content
    drop_connection: bool = False  # close the socket mid-stream, without [DONE]
    delay_s: float = 0.0  # wait before answering (timeouts)
    hang_before_headers: bool = False  # read the request, never answer
    drop_before_headers: bool = False  # read the request, close without a status line
    stall_after_chunks: int | None = None  # headers and N events, then silence
    drop_after_chunks: int | None = None  # N events, then close without the terminating chunk
    malformed_chunk: str | bytes | None = None  # one event of this data, after the first
    chunk_delay_s: float = 0.0  # pause before each event after the first (a slow generation)

    def content_pieces(self) -> list[str]:
        if self.chunks is not None:
            if self.text and "".join(self.chunks) != self.text:
                raise ValueError("Reply.chunks must join to Reply.text")
            return list(self.chunks)
        size = max(1, self.chunk_size)
        return [self.text[i : i + size] for i in range(0, len(self.text), size)]


ReplyScript = Reply | Callable[[dict[str, Any]], Reply]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    at: float = field(default_factory=time.monotonic)  # when it arrived (system-wide clock)


class FakeVllm:
    """The fake server. Starts on ``__enter__`` (or ``start()``) on a random free port."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        extra_models: tuple[str, ...] = (),
        max_model_len: int | None = 32768,
        enable_auto_tool_choice: bool = True,
        error_shape: ErrorShape = "nested",
        hang_models: bool = False,
        vision: bool = False,
    ) -> None:
        self.model = model
        self.vision = vision
        self.hang_models = hang_models
        self.served_models = (model, *extra_models)
        self.max_model_len = max_model_len
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.error_shape: ErrorShape = error_shape
        self.requests: list[RecordedRequest] = []
        self.replies_sent: list[float] = []  # when each streamed reply was sent whole
        self._replies: deque[ReplyScript] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._released = threading.Event()  # set on close: every hang ends
        self.in_flight = 0
        self.max_in_flight = 0

    # --- scripting and assertions -----------------------------------------------------------

    def script(self, *replies: ReplyScript) -> None:
        """Queue replies; each chat completion request takes the next one."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._replies)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The parsed bodies of every chat completion request, in order."""
        return [
            r.body
            for r in self.requests
            if r.method == "POST" and r.path.endswith("/chat/completions")
        ]

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeVllm is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to use as ``OI_API_BASE``: ``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeVllm:
        self._released.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.01,), name="fake-vllm", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeVllm:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def request_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # --- protocol (called from the handler thread) ----------------------------------------------

    def hang(self) -> None:
        """Block the handler thread until the fake closes (or ``HANG_LIMIT_S``)."""
        self._released.wait(HANG_LIMIT_S)

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            script = self._replies.popleft() if self._replies else None
        if script is None:
            return Reply(
                error=ErrorReply(
                    500, "fake_vllm: no scripted reply left for this request", "InternalServerError"
                )
            )
        return script(body) if callable(script) else script

    def _check_request(self, body: dict[str, Any]) -> ErrorReply | None:
        """The checks vLLM makes before generating anything."""
        requested = body.get("model")
        if requested not in self.served_models:
            return ErrorReply(404, f"The model `{requested}` does not exist.", "NotFoundError")
        tool_choice = body.get("tool_choice", "auto" if body.get("tools") else "none")
        if body.get("tools") and tool_choice == "auto" and not self.enable_auto_tool_choice:
            return ErrorReply(400, TOOLS_DISABLED_MESSAGE)
        history_error = _history_error(body)
        if history_error is not None:
            return ErrorReply(400, history_error)
        if not self.vision and image_parts(body):
            return ErrorReply(400, f"{requested} is not a multimodal model None")
        if self.max_model_len is not None:
            prompt = estimate_prompt_tokens(body)
            completion = int(body.get("max_tokens") or 0)
            if prompt + completion > self.max_model_len:
                return context_overflow(self.max_model_len, prompt + completion)
        return None

    def error_body(self, error: ErrorReply) -> dict[str, Any]:
        shape = error.shape or self.error_shape
        if shape == "flat":
            return {
                "object": "error",
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.status,
            }
        info = {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.status,
        }
        return {"error": info}

    def models_body(self) -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{uuid.uuid4().hex}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
                for name in self.served_models
            ],
        }


def _history_error(body: dict[str, Any]) -> str | None:
    """vLLM parses the arguments of the assistant's earlier tool calls as JSON (chat_utils'
    ``_postprocess_messages``) and answers 400 with the decoder's message when they are not."""
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str) and arguments:
                try:
                    json.loads(arguments)
                except ValueError as exc:
                    return f"{exc} None"  # vLLM's f"{e} {e.__cause__}"
    return None


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``image_url`` parts of a request's messages, in order."""
    return [
        part
        for message in body.get("messages") or []
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    ]


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A deterministic stand-in for tokenizing: characters of the messages and tools / 4, and
    ``IMAGE_TOKENS`` per image (not its data URL's length)."""
    images = image_parts(body)
    text = json.dumps(body.get("messages", []))
    for part in images:
        text = text.replace(json.dumps(part), "")
    size = len(text) + len(json.dumps(body.get("tools") or []))
    return max(1, size // 4) + IMAGE_TOKENS * len(images)


def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, int]:
    if reply.usage is not None:
        prompt, completion = reply.usage
    else:
        prompt = estimate_prompt_tokens(body)
        completion = max(
            1, (len(reply.text) + sum(len(c.arguments_text) for c in reply.tool_calls)) // 4
        )
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def _tool_call_id(spec: ToolCallSpec) -> str:
    return spec.id or f"chatcmpl-tool-{uuid.uuid4().hex}"


def stream_events(reply: Reply, body: dict[str, Any], model: str) -> Iterator[dict[str, Any]]:
    """The chunk objects vLLM streams for one reply (without the final ``[DONE]``)."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = None
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }

    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    yield chunk({"role": "assistant", "content": ""})
    pieces = reply.content_pieces()
    finish_on_last_piece = (
        bool(pieces) and not reply.tool_calls and not reply.finish_in_separate_chunk
    )
    for number, piece in enumerate(pieces):
        is_last = number == len(pieces) - 1
        yield chunk({"content": piece}, finish if is_last and finish_on_last_piece else None)
    for index, spec in enumerate(reply.tool_calls):
        function: dict[str, Any] = {"name": spec.name}
        if not spec.name_only_first_delta:
            function["arguments"] = ""
        first = {
            "id": _tool_call_id(spec),
            "type": "function",
            "index": index,
            "function": function,
        }
        yield chunk({"tool_calls": [first]})
        arguments = spec.arguments_text
        fragments = spec.argument_chunks
        if fragments is None:
            fragments = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
        elif "".join(fragments) != arguments:
            raise ValueError("ToolCallSpec.argument_chunks must join to its arguments")
        for fragment in fragments:
            delta: dict[str, Any] = {"index": index, "function": {"arguments": fragment}}
            if spec.repeat_id_and_name:
                delta["id"] = first["id"]
                delta["function"]["name"] = spec.name
            yield chunk({"tool_calls": [delta]})
    if not finish_on_last_piece:
        yield chunk({} if reply.tool_calls else {"content": ""}, finish)
    stream_options = body.get("stream_options") or {}
    if stream_options.get("include_usage"):
        yield {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(reply, body),
        }


def completion_body(reply: Reply, body: dict[str, Any], model: str) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object for one reply."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text or not reply.tool_calls else None,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [
            {
                "id": _tool_call_id(spec),
                "type": "function",
                "function": {"name": spec.name, "arguments": spec.arguments_text},
            }
            for spec in reply.tool_calls
        ],
        "reasoning_content": None,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason
                or ("tool_calls" if reply.tool_calls else "stop"),
                "stop_reason": None,
            }
        ],
        "usage": _usage(reply, body),
        "prompt_logprobs": None,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout tests) makes writes fail: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streaming: like uvicorn
    server_version = "uvicorn"
    sys_version = ""
    _events_written = 0
    _reply_delay_s = 0.0
    _generating = False

    @property
    def fake(self) -> FakeVllm:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.fake.requests.append(
            RecordedRequest(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
        )
        return body

    def do_GET(self) -> None:
        self._record()
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send_json(200, None)
        elif path == "/v1/models":
            if self.fake.hang_models:
                self.fake.hang()
                self.close_connection = True
                return
            self._send_json(200, self.fake.models_body())
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = self._record()
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            self._send_json(404, {"detail": "Not Found"})
            return
        self._generating = True
        self.fake.request_started()
        try:
            self._chat(body)
        finally:
            self._generation_ended()

    def _generation_ended(self) -> None:
        if self._generating:
            self._generating = False
            self.fake.request_ended()

    def _chat(self, body: Any) -> None:
        if not isinstance(body, dict):
            self._send_error(ErrorReply(400, "Expecting value: line 1 column 1 (char 0)"))
            return
        refused = self.fake._check_request(body)
        if refused is not None:
            self._send_error(refused)
            return
        reply = self.fake._next_reply(body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.hang_before_headers:
            self.fake.hang()
        if reply.hang_before_headers or reply.drop_before_headers:
            self.close_connection = True  # closed without a status line
            return
        if reply.error is not None:
            self._send_error(reply.error)
        elif body.get("stream"):
            self._stream(reply, body)
        else:
            self._send_json(200, completion_body(reply, body, self.fake.model))

    def _send_error(self, error: ErrorReply) -> None:
        if error.text is not None:
            self._send_body(error.status, error.text.encode(), "text/html", error.headers)
        else:
            self._send_json(error.status, self.fake.error_body(error), error.headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self._send_body(status, data, None if payload is None else "application/json", headers)

    def _send_body(
        self, status: int, data: bytes, content_type: str | None, headers: dict[str, str] | None
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: Reply, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()  # the headers go out now, as uvicorn sends them before any chunk
        self._events_written = 0
        self._reply_delay_s = reply.chunk_delay_s
        events: list[Any] = list(stream_events(reply, body, self.fake.model))
        if reply.malformed_chunk is not None:
            events.insert(1, _Raw(reply.malformed_chunk))
        cut_at = reply.drop_after_chunks
        if reply.drop_connection:
            cut_at = max(1, len(events) // 2)
        stall_at = reply.stall_after_chunks
        if cut_at is not None or stall_at is not None:
            # N events, then silence or a closed socket, without the terminating chunk.
            count = min(n for n in (cut_at, stall_at) if n is not None)
            for event in events[:count]:
                self._write_event(event)
            if cut_at is None or (stall_at is not None and stall_at <= cut_at):
                self.fake.hang()
            self.close_connection = True
            return
        if reply.stream_error is not None:
            # vLLM stops generating, sends {"error": {...}} as an event (the flat body
            # wrapped, before 0.10.1; the nested body as is, since), then [DONE].
            events = [
                e
                for e in events
                if isinstance(e, _Raw)
                or (e["choices"] and e["choices"][0]["finish_reason"] is None)
            ]
            error = self.fake.error_body(reply.stream_error)
            events.append(error if "error" in error else {"error": error})
        for event in events:
            self._write_event(event)
        self._generation_ended()  # the reply is generated; only [DONE] is left to send
        self._write_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.fake.replies_sent.append(time.monotonic())

    def _write_event(self, event: Any) -> None:
        if self._events_written and self._reply_delay_s:
            time.sleep(self._reply_delay_s)
        self._events_written += 1
        if isinstance(event, _Raw):
            raw = event.data if isinstance(event.data, bytes) else event.data.encode()
            self._write_chunk(b"data: " + raw + b"\n\n")
        else:
            self._write_chunk(f"data: {json.dumps(event)}\n\n")

    def _write_chunk(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@dataclass(frozen=True)
class _Raw:
    """An event whose data is sent exactly as given (malformed chunks)."""

    data: str | bytes
