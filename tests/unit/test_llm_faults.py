"""A model server that hangs, stalls, cuts, refuses or garbles, against the real client.

Every fault runs through the real ``openai`` SDK and real HTTP against ``tests/fake_vllm.py``
with small bounds (tenths of a second). Each test checks the one-line error, how many requests
the fake saw, and that the time to give up stays within the bound it is meant to have.

``DEFAULT_GIVE_UP_S`` computes, from the production defaults, how long each fault takes to be
reported; ``test_give_up_times_scale_from_the_defaults`` checks those figures with every bound
scaled down by ``SCALE``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from orchestrator.errors import ModelError, ModelUnavailableError
from orchestrator.llm import client as client_module
from orchestrator.llm.client import (
    Finished,
    MalformedReplyError,
    ModelClient,
    ModelTimeoutError,
    StreamEvent,
    StreamRestarted,
    TextDelta,
    ToolCallComplete,
    Usage,
)
from orchestrator.llm.prompts import EXECUTE_TOOL
from orchestrator.llm.retry import RetryPolicy
from orchestrator.loading import load
from orchestrator.policy import Policy
from orchestrator.settings import Settings
from orchestrator.wiring import model_client
from tests.fake_vllm import (
    MALFORMED_CHUNKS,
    ErrorReply,
    FakeVllm,
    Reply,
    ToolCallSpec,
    gateway_error,
    rate_limited,
    service_unavailable,
)

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "list the files"}]
SLACK_S = 0.6  # scheduling on a busy 2-core machine; every bound below is checked with it

# Small bounds: each wait is a few tenths of a second.
FAST: dict[str, Any] = {
    "connect_timeout": 1.0,
    "first_token_timeout": 0.3,
    "stream_idle_timeout": 0.3,
    "request_timeout": 5.0,
    "models_timeout": 0.3,
    "retry_attempts": 4,
    "retry_deadline": 2.0,
    "retry_backoff": 0.02,
}


def make_client(fake: FakeVllm | None, **overrides: Any) -> ModelClient:
    base_url = overrides.pop("base_url", fake.base_url if fake else None)
    sdk = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0)
    model = fake.model if fake else "m"
    return ModelClient(sdk, model=model, **{**FAST, **overrides})


class Recorder:
    """Consumes a stream, keeping its events, the error that ended it and the time taken."""

    def __init__(self, stream: Iterator[StreamEvent]) -> None:
        self.events: list[StreamEvent] = []
        self.error: ModelError | None = None
        started = time.monotonic()
        try:
            for event in stream:
                self.events.append(event)
        except ModelError as exc:
            self.error = exc
        self.elapsed = time.monotonic() - started

    @property
    def message(self) -> str:
        assert self.error is not None, f"no error; events: {self.events}"
        return str(self.error)

    def after_restart(self) -> list[StreamEvent]:
        restarts = [i for i, e in enumerate(self.events) if isinstance(e, StreamRestarted)]
        return self.events[restarts[-1] + 1 :] if restarts else self.events


def chat(client: ModelClient, tools: list[dict[str, Any]] | None = None) -> Recorder:
    return Recorder(client.stream_chat(MESSAGES, tools))


def assert_one_line(message: str, url: str) -> None:
    assert "\n" not in message
    assert url in message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- hangs and stalls: one bound each, never retried ------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [Reply(text="hi", hang_before_headers=True), Reply(text="hi", stall_after_chunks=0)],
    ids=["no headers", "headers then no chunk"],
)
def test_no_first_chunk_gives_up_after_first_token_timeout(
    fake_vllm: FakeVllm, reply: Reply
) -> None:
    fake_vllm.script(reply, Reply(text="never asked for"))
    # The idle bound is longer here, so only the first-token bound can end it this soon.
    result = chat(make_client(fake_vllm, stream_idle_timeout=3.0))
    assert isinstance(result.error, ModelTimeoutError)
    assert result.error.setting == "first_token_timeout"
    assert "within 0.3 s (first_token_timeout, OI_FIRST_TOKEN_TIMEOUT)" in result.message
    assert_one_line(result.message, fake_vllm.base_url)
    assert 0.3 <= result.elapsed < 0.3 + SLACK_S
    assert len(fake_vllm.chat_requests) == 1  # a silent server is not asked twice


def test_stall_after_some_chunks_gives_up_after_idle_timeout(fake_vllm: FakeVllm) -> None:
    # role chunk, "ab", "cd", then silence
    fake_vllm.script(Reply(text="abcdefgh", chunk_size=2, stall_after_chunks=3))
    result = chat(make_client(fake_vllm, first_token_timeout=3.0))
    assert [e for e in result.events if isinstance(e, TextDelta)] == [
        TextDelta("ab"),
        TextDelta("cd"),
    ]
    assert isinstance(result.error, ModelTimeoutError)
    assert result.error.setting == "stream_idle_timeout"
    assert "for 0.3 s (stream_idle_timeout, OI_STREAM_IDLE_TIMEOUT)" in result.message
    assert_one_line(result.message, fake_vllm.base_url)
    assert 0.3 <= result.elapsed < 0.3 + SLACK_S
    assert len(fake_vllm.chat_requests) == 1


def test_a_slow_steady_reply_is_not_a_stall(fake_vllm: FakeVllm) -> None:
    # 8 events 0.08 s apart: 0.56 s in all, past both 0.3 s bounds, never silent for 0.3 s.
    text = "one two three four five six"
    fake_vllm.script(Reply(text=text, chunk_size=5, chunk_delay_s=0.08))
    result = chat(make_client(fake_vllm))
    assert result.error is None
    assert result.events[-1] == Finished("stop", text, ())
    assert result.elapsed > 0.45


def test_a_reply_that_never_ends_is_bounded_by_request_timeout(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="la " * 100, chunk_size=3, chunk_delay_s=0.05))
    result = chat(make_client(fake_vllm, request_timeout=0.5))
    assert isinstance(result.error, ModelTimeoutError)
    assert "within 0.5 s (request_timeout, OI_REQUEST_TIMEOUT)" in result.message
    assert any(isinstance(e, TextDelta) for e in result.events)
    assert 0.5 <= result.elapsed < 0.5 + SLACK_S
    assert len(fake_vllm.chat_requests) == 1


def test_closing_a_stalled_stream_returns_at_once(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="abcdefgh", chunk_size=2, stall_after_chunks=2), Reply(text="ok"))
    client = make_client(fake_vllm, stream_idle_timeout=30.0)
    stream = client.stream_chat(MESSAGES)
    assert next(stream) == TextDelta("ab")
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 0.2
    assert chat(client).events[-1] == Finished("stop", "ok", ())


def test_models_endpoint_that_hangs_is_bounded() -> None:
    with FakeVllm(hang_models=True) as fake:
        client = make_client(fake)
        for call in (client.list_models, client.model_max_len):
            started = time.monotonic()
            with pytest.raises(ModelTimeoutError) as caught:
                call()
            elapsed = time.monotonic() - started
            message = str(caught.value)
            assert "within 0.3 s (models_timeout, OI_MODELS_TIMEOUT)" in message
            assert_one_line(message, fake.base_url)
            assert 0.3 <= elapsed < 0.3 + SLACK_S
        assert [r.path for r in fake.requests] == ["/v1/models"] * 2  # not retried


def test_connect_timeout_names_its_setting() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the queue (its length is backlog + 1 on Linux)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            client = make_client(None, base_url=url, connect_timeout=0.3, first_token_timeout=3.0)
            result = chat(client)
        finally:
            for filler in fillers:
                filler.close()
    assert isinstance(result.error, ModelTimeoutError)
    assert "within 0.3 s (connect_timeout, OI_CONNECT_TIMEOUT)" in result.message
    assert_one_line(result.message, url)
    assert result.elapsed < 0.3 + SLACK_S


# --- cuts: retried once from the start, announced by StreamRestarted --------------------------


def test_a_cut_reply_is_asked_again_and_the_restart_carries_the_partial_text(
    fake_vllm: FakeVllm,
) -> None:
    # role chunk, "ab", "cd", then the socket closes
    fake_vllm.script(
        Reply(text="abcdefgh", chunk_size=2, drop_after_chunks=3),
        Reply(text="the whole reply", usage=(10, 4)),
    )
    result = chat(make_client(fake_vllm))
    assert result.error is None
    restarts = [e for e in result.events if isinstance(e, StreamRestarted)]
    assert len(restarts) == 1
    assert restarts[0].partial_text == "abcd"
    assert "mid-reply" in restarts[0].reason and "\n" not in restarts[0].reason
    before = result.events[: result.events.index(restarts[0])]
    assert before == [TextDelta("ab"), TextDelta("cd")]  # nothing else precedes a cut
    after = result.after_restart()
    assert "".join(e.text for e in after if isinstance(e, TextDelta)) == "the whole reply"
    assert after[-2:] == [Usage(10, 4), Finished("stop", "the whole reply", ())]
    assert len(fake_vllm.chat_requests) == 2
    assert fake_vllm.chat_requests[0] == fake_vllm.chat_requests[1]  # the same request again


def test_a_tool_call_reply_cut_then_whole(fake_vllm: FakeVllm) -> None:
    call = ToolCallSpec("execute", {"language": "bash", "code": "ls"}, id="t1")
    fake_vllm.script(
        Reply(text="Let me look.", chunk_size=4, tool_calls=[call], drop_after_chunks=3),
        Reply(text="Let me look.", tool_calls=[call]),
    )
    result = chat(make_client(fake_vllm), tools=[EXECUTE_TOOL])
    assert [e.partial_text for e in result.events if isinstance(e, StreamRestarted)] == ["Let me l"]
    calls = [e for e in result.after_restart() if isinstance(e, ToolCallComplete)]
    assert calls == [ToolCallComplete("t1", "execute", '{"language": "bash", "code": "ls"}')]


def test_a_second_cut_is_the_error(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(*[Reply(text="abcdefgh", chunk_size=2, drop_after_chunks=3)] * 2)
    result = chat(make_client(fake_vllm))
    assert isinstance(result.error, ModelUnavailableError)
    assert "cut the reply twice" in result.message and "mid-reply" in result.message
    assert_one_line(result.message, fake_vllm.base_url)
    assert sum(isinstance(e, StreamRestarted) for e in result.events) == 1
    assert len(fake_vllm.chat_requests) == 2


def test_a_cut_before_any_text_is_an_ordinary_retry(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="abc", drop_after_chunks=1), Reply(text="abc"))  # role chunk only
    result = chat(make_client(fake_vllm))
    assert result.error is None
    assert not any(isinstance(e, StreamRestarted) for e in result.events)
    assert result.events[-1] == Finished("stop", "abc", ())
    assert len(fake_vllm.chat_requests) == 2


def test_a_cut_after_the_finish_keeps_the_whole_reply(fake_vllm: FakeVllm) -> None:
    # role, "abc" with finish_reason: only the usage chunk and [DONE] are lost.
    fake_vllm.script(Reply(text="abc", chunk_size=3, drop_after_chunks=2))
    result = chat(make_client(fake_vllm))
    assert result.events == [TextDelta("abc"), Finished("stop", "abc", ())]
    assert len(fake_vllm.chat_requests) == 1


# --- refusals and HTTP errors before the reply: retried with backoff ------------------------


@pytest.mark.parametrize(
    "failure",
    [
        Reply(error=service_unavailable()),
        Reply(error=gateway_error(502)),
        Reply(error=gateway_error(504)),
        Reply(error=ErrorReply(500, "engine restarting", "InternalServerError")),
        Reply(drop_before_headers=True),
    ],
    ids=["503", "502 html", "504 html", "500", "dropped before headers"],
)
def test_server_recovers_within_the_tries(fake_vllm: FakeVllm, failure: Reply) -> None:
    fake_vllm.script(failure, failure, failure, Reply(text="back"))
    waits: list[float] = []
    result = chat(make_client(fake_vllm, sleep=waits.append, jitter=lambda: 1.0))
    assert result.error is None
    assert result.events[-1] == Finished("stop", "back", ())
    assert len(fake_vllm.chat_requests) == 4
    assert waits == [0.02, 0.04, 0.08]  # exponential; the jitter at its top


def test_jitter_draws_each_wait_from_the_upper_half_of_its_step(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(*[Reply(error=service_unavailable())] * 3, Reply(text="ok"))
    waits: list[float] = []
    chat(make_client(fake_vllm, sleep=waits.append, jitter=lambda: 0.0))
    assert waits == [0.01, 0.02, 0.04]


def test_503_every_time_gives_up_after_the_tries(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(*[Reply(error=service_unavailable())] * 5)
    result = chat(make_client(fake_vllm))
    assert type(result.error) is ModelError
    assert "HTTP 503: Service Unavailable" in result.message
    assert "gave up after 4 tries" in result.message and "OI_RETRY_ATTEMPTS" in result.message
    assert_one_line(result.message, fake_vllm.base_url)
    assert len(fake_vllm.chat_requests) == 4
    assert result.elapsed < RetryPolicy(4, 2.0, 0.02).worst_case_waits() + SLACK_S


def test_nginx_error_page_is_one_line(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(error=gateway_error(502)))
    result = chat(make_client(fake_vllm, retry_attempts=1))
    assert "HTTP 502" in result.message and "502 Bad Gateway" in result.message
    assert "gave up after 1 try in" in result.message
    assert_one_line(result.message, fake_vllm.base_url)


def test_refused_connection_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    waits: list[float] = []
    result = chat(make_client(None, base_url=url, sleep=waits.append))
    assert isinstance(result.error, ModelUnavailableError)
    assert "cannot reach the model server" in result.message
    assert "gave up after 4 tries" in result.message
    assert_one_line(result.message, url)
    assert len(waits) == 3  # 4 tries


def test_retry_deadline_ends_the_tries(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(*[Reply(error=service_unavailable())] * 5)
    # The first wait (0.5-1 s) would end past the 0.1 s deadline: one try only.
    result = chat(make_client(fake_vllm, retry_deadline=0.1, retry_backoff=1.0))
    assert "gave up after 1 try" in result.message
    assert "retry deadline (retry_deadline, OI_RETRY_DEADLINE)" in result.message
    assert len(fake_vllm.chat_requests) == 1
    assert result.elapsed < SLACK_S


@pytest.mark.parametrize(
    ("error", "waited"),
    [(rate_limited("7"), 7.0), (rate_limited("250", header="retry-after-ms"), 0.25)],
    ids=["Retry-After seconds", "retry-after-ms"],
)
def test_retry_after_is_honoured(fake_vllm: FakeVllm, error: ErrorReply, waited: float) -> None:
    fake_vllm.script(Reply(error=error), Reply(text="ok"))
    waits: list[float] = []
    result = chat(make_client(fake_vllm, retry_deadline=10.0, sleep=waits.append))
    assert result.events[-1] == Finished("stop", "ok", ())
    assert waits == [waited]


def test_retry_after_really_waits(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(error=rate_limited("300", header="retry-after-ms")), Reply(text="ok"))
    result = chat(make_client(fake_vllm))
    assert result.error is None
    assert 0.3 <= result.elapsed < 0.3 + SLACK_S


def test_retry_after_past_the_deadline_gives_up_at_once(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(error=rate_limited("60")), Reply(text="not asked"))
    result = chat(make_client(fake_vllm))
    assert "HTTP 429" in result.message
    assert "asks to retry after 60 s, past the 2 s retry deadline" in result.message
    assert_one_line(result.message, fake_vllm.base_url)
    assert len(fake_vllm.chat_requests) == 1
    assert result.elapsed < SLACK_S


def test_insane_retry_after_falls_back_to_the_backoff(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(error=rate_limited("soon")), Reply(text="ok"))
    waits: list[float] = []
    chat(make_client(fake_vllm, sleep=waits.append, jitter=lambda: 1.0))
    assert waits == [0.02]


@pytest.mark.parametrize(
    "error",
    [
        ErrorReply(400, "temperature must be non-negative"),
        ErrorReply(401, "Unauthorized", "Unauthorized"),
        ErrorReply(404, "The model `x` does not exist.", "NotFoundError"),
    ],
    ids=["400", "401", "404"],
)
def test_client_errors_are_not_retried(fake_vllm: FakeVllm, error: ErrorReply) -> None:
    fake_vllm.script(Reply(error=error), Reply(text="not asked"))
    result = chat(make_client(fake_vllm))
    assert result.error is not None
    assert len(fake_vllm.chat_requests) == 1


def test_sdk_retries_are_off(fake_vllm: FakeVllm) -> None:
    """A client built with the SDK's retries still makes exactly the tries oi decides."""
    fake_vllm.script(*[Reply(error=service_unavailable())] * 10)
    sdk = openai.OpenAI(base_url=fake_vllm.base_url, api_key="k", max_retries=5)
    client = ModelClient(sdk, model=fake_vllm.model, **{**FAST, "retry_attempts": 2})
    chat(client)
    assert len(fake_vllm.chat_requests) == 2


# --- malformed replies: one line, never a traceback of the SDK's ------------------------------


@pytest.mark.parametrize("kind", list(MALFORMED_CHUNKS))
def test_malformed_chunk_is_one_line_model_error(fake_vllm: FakeVllm, kind: str) -> None:
    fake_vllm.script(Reply(text="hi", malformed_chunk=MALFORMED_CHUNKS[kind]))
    result = chat(make_client(fake_vllm))
    assert isinstance(result.error, MalformedReplyError)
    assert_one_line(result.message, fake_vllm.base_url)
    assert "OpenAI-compatible" in result.message
    assert len(fake_vllm.chat_requests) == 1  # a garbled reply is not asked for again


@pytest.mark.parametrize("kind", list(MALFORMED_CHUNKS))
def test_control_the_typed_sdk_stream_crashes_on_each_malformed_chunk(
    fake_vllm: FakeVllm, kind: str
) -> None:
    """Positive control: read as the client used to, every kind escapes as a traceback
    (a builtin exception) or lets a non-string through as text."""
    fake_vllm.script(Reply(text="hi", malformed_chunk=MALFORMED_CHUNKS[kind]))
    sdk = openai.OpenAI(base_url=fake_vllm.base_url, api_key="k", max_retries=0)
    texts: list[object] = []
    with pytest.raises(Exception) as caught:
        for chunk in sdk.chat.completions.create(model=fake_vllm.model, messages=[], stream=True):
            _ = chunk.usage
            for choice in chunk.choices:
                texts.append(choice.delta.content)
        "".join(t for t in texts if t)  # type: ignore[misc]  # what the old client did with them
    assert not isinstance(caught.value, ModelError | openai.OpenAIError)


# --- the fake itself: each hang really hangs (the tests above could not fail otherwise) -------


def raw_exchange(fake: FakeVllm, reply: Reply, wait_s: float = 0.3) -> bytes:
    """What a plain socket receives within ``wait_s`` for one streaming chat request."""
    fake.script(reply)
    body = b'{"model": "%s", "messages": [], "stream": true}' % fake.model.encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    received = b""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=wait_s) as conn:
        conn.sendall(request)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                break
            if not data:
                received += b"<EOF>"
                break
            received += data
    return received


@pytest.mark.parametrize(
    ("reply", "check"),
    [
        (Reply(text="hi", hang_before_headers=True), lambda got: got == b""),
        (Reply(text="hi", drop_before_headers=True), lambda got: got == b"<EOF>"),
        (
            Reply(text="hi", stall_after_chunks=0),
            lambda got: got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n"),
        ),
        (
            Reply(text="abcd", chunk_size=2, drop_after_chunks=2),
            lambda got: got.endswith(
                b'"ab"}, "logprobs": null, "finish_reason": null}]}\n\n\r\n<EOF>'
            ),
        ),
    ],
    ids=["hang", "drop before headers", "headers only", "cut after 2 events"],
)
def test_control_the_fake_misbehaves_on_the_wire(
    fake_vllm: FakeVllm, reply: Reply, check: Callable[[bytes], bool]
) -> None:
    got = raw_exchange(fake_vllm, reply)
    assert check(got), got
    assert b"0\r\n\r\n" not in got  # never the terminating chunk


# --- defaults: the time to give up for each fault ---------------------------------------------


def default_give_up_s() -> dict[str, tuple[float, float]]:
    """(least, most) seconds from the request to the error, with the default settings."""
    defaults = Settings()
    waits = RetryPolicy(
        defaults.retry_attempts, defaults.retry_deadline, defaults.retry_backoff
    ).worst_case_waits()
    first, idle = defaults.first_token_timeout, defaults.stream_idle_timeout
    return {
        "no headers": (first, first),
        "headers then no chunk": (first, first),
        "stall after 2 chunks": (idle, idle),  # from the last chunk, which came at once
        "503 every time": (waits / 2, waits),
        "dropped before headers every time": (waits / 2, waits),
        "models hang": (defaults.models_timeout, defaults.models_timeout),
    }


SCALE = 1 / 200  # 60 s -> 0.3 s


def test_the_default_give_up_times() -> None:
    """The figures the README reports, from the defaults (was 1,201 s for a silent server)."""
    assert default_give_up_s() == {
        "no headers": (60.0, 60.0),
        "headers then no chunk": (60.0, 60.0),
        "stall after 2 chunks": (60.0, 60.0),
        "503 every time": (1.75, 3.5),
        "dropped before headers every time": (1.75, 3.5),
        "models hang": (10.0, 10.0),
    }


FAULTS: dict[str, Reply] = {
    "no headers": Reply(text="hi", hang_before_headers=True),
    "headers then no chunk": Reply(text="hi", stall_after_chunks=0),
    "stall after 2 chunks": Reply(text="abcd", chunk_size=2, stall_after_chunks=2),
    "503 every time": Reply(error=service_unavailable()),
    "dropped before headers every time": Reply(drop_before_headers=True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_give_up_times_scale_from_the_defaults(fake_vllm: FakeVllm, fault: str) -> None:
    defaults = Settings()
    scaled = {
        name: getattr(defaults, name) * SCALE
        for name in (
            "connect_timeout",
            "first_token_timeout",
            "stream_idle_timeout",
            "request_timeout",
            "models_timeout",
            "retry_deadline",
            "retry_backoff",
        )
    }
    fake_vllm.script(*[FAULTS[fault]] * 5)
    client = make_client(fake_vllm, **scaled, retry_attempts=defaults.retry_attempts)
    result = chat(client)
    assert result.error is not None
    least, most = default_give_up_s()[fault]
    assert least * SCALE <= result.elapsed < most * SCALE + SLACK_S


def test_scaled_models_hang_matches_the_default() -> None:
    defaults = Settings()
    with FakeVllm(hang_models=True) as fake:
        client = make_client(fake, models_timeout=defaults.models_timeout * SCALE * 4)
        started = time.monotonic()
        with pytest.raises(ModelTimeoutError):
            client.model_max_len()
        elapsed = time.monotonic() - started
    expected = default_give_up_s()["models hang"][0] * SCALE * 4
    assert expected <= elapsed < expected + SLACK_S


def test_settings_and_client_defaults_agree() -> None:
    settings = Settings()
    assert settings.connect_timeout == client_module.CONNECT_TIMEOUT_S
    assert settings.first_token_timeout == client_module.FIRST_TOKEN_TIMEOUT_S
    assert settings.stream_idle_timeout == client_module.STREAM_IDLE_TIMEOUT_S
    assert settings.request_timeout == client_module.REQUEST_TIMEOUT_S
    assert settings.models_timeout == client_module.MODELS_TIMEOUT_S
    assert settings.retry_attempts == client_module.RETRY_ATTEMPTS
    assert settings.retry_deadline == client_module.RETRY_DEADLINE_S
    assert settings.retry_backoff == client_module.RETRY_BACKOFF_S


def test_the_production_client_gets_every_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "OI_CONNECT_TIMEOUT": "1.5",
        "OI_FIRST_TOKEN_TIMEOUT": "12",
        "OI_STREAM_IDLE_TIMEOUT": "7",
        "OI_REQUEST_TIMEOUT": "99",
        "OI_MODELS_TIMEOUT": "3",
        "OI_RETRY_ATTEMPTS": "2",
        "OI_RETRY_DEADLINE": "9",
        "OI_RETRY_BACKOFF": "0.25",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    client = model_client(load({}, policy=Policy()).settings)
    assert (
        client.connect_timeout,
        client.first_token_timeout,
        client.stream_idle_timeout,
        client.request_timeout,
        client.models_timeout,
    ) == (1.5, 12.0, 7.0, 99.0, 3.0)
    assert client.retry == RetryPolicy(2, 9.0, 0.25)


# --- vLLM issue 22885: the hermes parser drops the closing brace of the arguments -----------


def test_dropped_brace_is_repaired_in_the_history_so_the_next_request_is_accepted(
    fake_vllm: FakeVllm,
) -> None:
    broken = '{"language": "bash", "code": "ls"'  # as vLLM streams Qwen3-2507's call
    fake_vllm.script(
        Reply(tool_calls=[ToolCallSpec("execute", broken, id="t1")]), Reply(text="Done.")
    )
    client = make_client(fake_vllm)
    first = chat(client, tools=[EXECUTE_TOOL]).events[-1]
    assert isinstance(first, Finished)
    assert first.tool_calls[0].arguments == broken  # the stream is reported as sent
    message = first.assistant_message()
    assert message["tool_calls"][0]["function"]["arguments"] == broken + "}"
    history = [*MESSAGES, message, {"role": "tool", "tool_call_id": "t1", "content": "a b"}]
    second = Recorder(client.stream_chat(history, [EXECUTE_TOOL]))
    assert second.error is None
    assert second.events[-1] == Finished("stop", "Done.", ())


def test_control_the_fake_refuses_a_history_with_broken_arguments(fake_vllm: FakeVllm) -> None:
    """Positive control: with the raw arguments in the history, vLLM (and the fake) says 400."""
    broken = '{"language": "bash", "code": "ls"'
    fake_vllm.script(Reply(text="not reached"))
    call = {"id": "t1", "type": "function", "function": {"name": "execute", "arguments": broken}}
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "a b"},
    ]
    result = Recorder(make_client(fake_vllm).stream_chat(history, [EXECUTE_TOOL]))
    assert "HTTP 400: Expecting ',' delimiter" in result.message
