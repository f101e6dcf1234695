"""ModelClient through the real openai SDK against the fake vLLM server (real HTTP, real SSE)."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import openai
import pytest

from orchestrator.errors import (
    ContextOverflowError,
    ModelError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from orchestrator.llm.client import (
    Finished,
    ModelClient,
    StreamEvent,
    TextDelta,
    ToolCallComplete,
    ToolsUnsupportedError,
    Usage,
)
from orchestrator.llm.extract import ProposedBlock, extract_blocks, parse_tool_arguments
from orchestrator.llm.prompts import EXECUTE_TOOL
from orchestrator.settings import Settings
from orchestrator.wiring import model_client
from tests.fake_vllm import (
    ErrorReply,
    ErrorShape,
    FakeVllm,
    Reply,
    ToolCallSpec,
    context_overflow,
    prompt_too_long,
)

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are oi."},
    {"role": "user", "content": "list the files"},
]


def make_client(fake: FakeVllm, **overrides: Any) -> ModelClient:
    """A client of the fake with waits between retries too short to slow the tests down."""
    base_url = overrides.pop("base_url", fake.base_url)
    sdk = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=5.0)
    overrides.setdefault("retry_backoff", 0.005)
    return ModelClient(sdk, model=overrides.pop("model", fake.model), **overrides)


def run(client: ModelClient, tools: list[dict[str, Any]] | None = None) -> list[StreamEvent]:
    return list(client.stream_chat(MESSAGES, tools))


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("finish_in_separate_chunk", [False, True])
def test_text_streams_in_pieces_then_usage_then_finished(
    fake_vllm: FakeVllm, finish_in_separate_chunk: bool
) -> None:
    text = "Here is the plan: read the CSV, then plot it."
    fake_vllm.script(
        Reply(text=text, chunk_size=6, finish_in_separate_chunk=finish_in_separate_chunk)
    )

    events = run(make_client(fake_vllm))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.text for d in deltas] == [text[i : i + 6] for i in range(0, len(text), 6)]
    assert isinstance(events[-2], Usage)
    assert events[-1] == Finished("stop", text, ())


def test_finish_reason_length_is_reported(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="```python\nprint(", finish_reason="length"))
    finished = run(make_client(fake_vllm))[-1]
    assert finished == Finished("length", "```python\nprint(", ())


def test_tool_call_deltas_are_assembled_by_index(fake_vllm: FakeVllm) -> None:
    first = {"language": "python", "code": "import os\nprint(os.listdir('.'))"}
    second = {"language": "bash", "code": "ls -la /workspace"}
    third = {"language": "js", "code": "console.log(process.version)"}
    fake_vllm.script(
        Reply(
            text="Let me look.",
            tool_calls=[
                ToolCallSpec("execute", first, id="chatcmpl-tool-aaa"),
                # vLLM's hermes parser sends the name without "arguments" in the first delta.
                ToolCallSpec("execute", second, id="chatcmpl-tool-bbb", name_only_first_delta=True),
                # Other servers repeat id and name in every fragment: they must not pile up.
                ToolCallSpec("execute", third, id="chatcmpl-tool-ccc", repeat_id_and_name=True),
            ],
        )
    )

    events = run(make_client(fake_vllm), tools=[EXECUTE_TOOL])

    calls = [e for e in events if isinstance(e, ToolCallComplete)]
    assert calls == [
        ToolCallComplete("chatcmpl-tool-aaa", "execute", json.dumps(first)),
        ToolCallComplete("chatcmpl-tool-bbb", "execute", json.dumps(second)),
        ToolCallComplete("chatcmpl-tool-ccc", "execute", json.dumps(third)),
    ]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "tool_calls"
    assert finished.text == "Let me look."
    assert finished.tool_calls == tuple(calls)
    assert [parse_tool_arguments(c.name, c.arguments, tool_call_id=c.id) for c in calls] == [
        ProposedBlock("python", first["code"], "tool_call", "chatcmpl-tool-aaa"),
        ProposedBlock("bash", second["code"], "tool_call", "chatcmpl-tool-bbb"),
        ProposedBlock("js", third["code"], "tool_call", "chatcmpl-tool-ccc"),
    ]
    body = fake_vllm.chat_requests[0]
    assert body["tools"] == [EXECUTE_TOOL]
    assert body["tool_choice"] == "auto"


def test_assistant_message_replays_tool_calls(fake_vllm: FakeVllm) -> None:
    arguments = {"language": "bash", "code": "pwd"}
    fake_vllm.script(Reply(tool_calls=[ToolCallSpec("execute", arguments, id="chatcmpl-tool-1")]))
    finished = run(make_client(fake_vllm), tools=[EXECUTE_TOOL])[-1]
    assert isinstance(finished, Finished)
    assert finished.assistant_message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "chatcmpl-tool-1",
                "type": "function",
                "function": {"name": "execute", "arguments": json.dumps(arguments)},
            }
        ],
    }


def test_usage_is_reported_and_requested(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="ok", usage=(1234, 56)))
    events = run(make_client(fake_vllm))
    assert [e for e in events if isinstance(e, Usage)] == [Usage(1234, 56)]
    assert fake_vllm.chat_requests[0]["stream_options"] == {"include_usage": True}


def test_sampling_parameters_and_key_reach_the_server(fake_vllm: FakeVllm) -> None:
    settings = Settings(
        api_base=fake_vllm.base_url,
        model=fake_vllm.model,
        api_key="sk-local",
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        max_tokens=512,
    )
    fake_vllm.script(Reply(text="ok"))

    run(model_client(settings))

    body = fake_vllm.chat_requests[0]
    assert body["model"] == fake_vllm.model
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (
        0.3,
        0.9,
        40,
        512,
    )
    assert "tools" not in body
    assert "tool_choice" not in body
    assert fake_vllm.requests[0].headers["authorization"] == "Bearer sk-local"


def test_unset_limits_are_not_sent(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="ok"))
    run(make_client(fake_vllm, max_tokens=None, top_k=None))
    body = fake_vllm.chat_requests[0]
    assert "max_tokens" not in body
    assert "top_k" not in body
    assert (body["temperature"], body["top_p"]) == (0.7, 0.8)  # Qwen's recommended defaults


def test_closing_the_stream_early_frees_the_connection(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="a long reply " * 20), Reply(text="second"))
    client = make_client(fake_vllm)
    stream = client.stream_chat(MESSAGES)
    assert isinstance(next(stream), TextDelta)
    stream.close()
    assert run(client)[-1] == Finished("stop", "second", ())


# The streaming layer concatenates deltas: wherever the server splits a reply, the text and
# the blocks found in it must be the same. Cut each reply into two chunks at every position.
SPLIT_REPLIES = [
    "Plan:\n```python\nprint('é ✓')\n```\nDone.",
    '<tool_call>\n{"name": "execute", "arguments": {"language": "bash", "code": "ls"}}\n'
    "</tool_call>",
    'Run {"name": "execute", "arguments": {"language": "js", "code": "1"}} ok',
    "~~~sh\necho a\r\n~~~\n````py\nx='```'\n````",
]


@pytest.mark.parametrize("text", SPLIT_REPLIES)
def test_text_split_anywhere_gives_the_same_text_and_blocks(fake_vllm: FakeVllm, text: str) -> None:
    expected_blocks = extract_blocks(text)
    assert expected_blocks  # each reply proposes code, so a lost block would show
    fake_vllm.script(*(Reply(text=text, chunks=[text[:i], text[i:]]) for i in range(len(text) + 1)))
    client = make_client(fake_vllm)
    for cut in range(len(text) + 1):
        events = run(client)
        streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert streamed == finished.text == text, f"cut at {cut}"
        assert extract_blocks(finished.text) == expected_blocks, f"cut at {cut}"


def test_tool_arguments_split_anywhere_are_reassembled(fake_vllm: FakeVllm) -> None:
    arguments = json.dumps({"language": "python", "code": "print('a\\nb')"})
    fake_vllm.script(
        *(
            Reply(
                tool_calls=[
                    ToolCallSpec(
                        "execute", arguments, argument_chunks=[arguments[:i], arguments[i:]]
                    )
                ]
            )
            for i in range(len(arguments) + 1)
        )
    )
    client = make_client(fake_vllm)
    for cut in range(len(arguments) + 1):
        calls = [e for e in run(client, [EXECUTE_TOOL]) if isinstance(e, ToolCallComplete)]
        assert [c.arguments for c in calls] == [arguments], f"cut at {cut}"


# --- error mapping --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["flat", "nested"])
@pytest.mark.parametrize(
    "error", [context_overflow(), prompt_too_long()], ids=["requested", "prompt"]
)
def test_context_overflow_in_both_error_shapes(
    fake_vllm: FakeVllm, shape: ErrorShape, error: ErrorReply
) -> None:
    fake_vllm.error_shape = shape
    fake_vllm.script(Reply(error=error))
    with pytest.raises(ContextOverflowError, match="32768"):
        run(make_client(fake_vllm))


def test_context_overflow_detected_by_the_server_check() -> None:
    # The messages alone are longer than 20 tokens.
    with (
        FakeVllm(max_model_len=20) as fake,
        pytest.raises(ContextOverflowError, match="maximum context length is 20 tokens"),
    ):
        run(make_client(fake))


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_tools_unsupported_is_its_own_error(shape: ErrorShape) -> None:
    with FakeVllm(enable_auto_tool_choice=False, error_shape=shape) as fake:
        client = make_client(fake)
        with pytest.raises(ToolsUnsupportedError, match="OI_TOOL_MODE=markdown"):
            run(client, tools=[EXECUTE_TOOL])
        fake.script(Reply(text="ok"))  # the markdown fallback: same server, no tools
        assert run(client)[-1] == Finished("stop", "ok", ())


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_unknown_model_names_what_the_server_serves(shape: ErrorShape) -> None:
    with (
        FakeVllm(extra_models=("qwen-small",), error_shape=shape) as fake,
        pytest.raises(ModelNotFoundError) as caught,
    ):
        run(make_client(fake, model="Qwen/Qwen3-8B"))
    message = str(caught.value)
    assert "'Qwen/Qwen3-8B'" in message
    assert "Qwen/Qwen3-4B-Instruct-2507, qwen-small" in message


def test_endpoint_down_names_the_url_and_the_fix(fake_vllm: FakeVllm) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    client = make_client(fake_vllm, base_url=url)
    with pytest.raises(ModelUnavailableError) as caught:
        run(client)
    assert url in str(caught.value)
    assert "make up" in str(caught.value)
    assert "OI_API_BASE" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelUnavailableError):
        client.model_max_len()


def test_slow_server_times_out_as_unavailable(fake_vllm: FakeVllm) -> None:
    fake_vllm.script(Reply(text="late", delay_s=1.0))
    with pytest.raises(ModelUnavailableError, match="no reply from the model server"):
        run(make_client(fake_vllm, first_token_timeout=0.2))


def test_connection_dropped_mid_reply_twice(fake_vllm: FakeVllm) -> None:
    # The first cut is retried (see test_llm_faults.py); the second one is the error.
    fake_vllm.script(*[Reply(text="partial reply " * 10, drop_connection=True)] * 2)
    events: list[StreamEvent] = []
    with pytest.raises(ModelUnavailableError, match="mid-reply"):
        events.extend(make_client(fake_vllm).stream_chat(MESSAGES))
    assert any(isinstance(e, TextDelta) for e in events)  # text arrived before the break


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_error_event_mid_stream_is_mapped(fake_vllm: FakeVllm, shape: ErrorShape) -> None:
    fake_vllm.error_shape = shape
    fake_vllm.script(
        Reply(text="starting", stream_error=ErrorReply(500, "engine died", "InternalServerError")),
        Reply(text="again", stream_error=prompt_too_long()),
    )
    client = make_client(fake_vllm)
    with pytest.raises(ModelError, match="engine died") as caught:
        run(client)
    assert type(caught.value) is ModelError
    with pytest.raises(ContextOverflowError):
        run(client)


def test_wrong_path_points_at_api_base(fake_vllm: FakeVllm) -> None:
    root = fake_vllm.base_url.removesuffix("/v1")  # a common mistake: forgetting /v1
    with pytest.raises(ModelError, match="/v1") as caught:
        run(make_client(fake_vllm, base_url=root))
    assert not isinstance(caught.value, ModelNotFoundError)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ErrorReply(401, "Unauthorized", "Unauthorized"), "OI_API_KEY"),
        (
            ErrorReply(500, "CUDA out of memory", "InternalServerError"),
            "HTTP 500: CUDA out of memory",
        ),
        (ErrorReply(400, "temperature must be non-negative"), "HTTP 400: temperature must be"),
    ],
)
def test_other_errors_keep_status_and_message(
    fake_vllm: FakeVllm, error: ErrorReply, expected: str
) -> None:
    fake_vllm.script(Reply(error=error))
    with pytest.raises(ModelError, match=expected) as caught:
        run(make_client(fake_vllm, retry_attempts=1))  # a 500 is retried otherwise
    assert type(caught.value) is ModelError


# --- model discovery ------------------------------------------------------------------------


def test_model_max_len_comes_from_the_models_list() -> None:
    with FakeVllm(max_model_len=8192, extra_models=("other",)) as fake:
        client = make_client(fake)
        assert client.model_max_len() == 8192
        assert client.list_models() == [fake.model, "other"]
        assert make_client(fake, model="not-served").model_max_len() is None
    assert [r.path for r in fake.requests] == ["/v1/models"] * 3


def test_model_max_len_absent_when_server_does_not_say() -> None:
    with FakeVllm(max_model_len=None) as fake:
        assert make_client(fake).model_max_len() is None


def test_fake_serves_non_streaming_completions_and_health(fake_vllm: FakeVllm) -> None:
    """The fixture itself: non-streaming replies and /health work like vLLM's."""
    fake_vllm.script(
        Reply(text="hi", usage=(10, 2)),
        Reply(tool_calls=[ToolCallSpec("execute", {"language": "bash", "code": "ls"}, id="t1")]),
    )
    sdk = openai.OpenAI(base_url=fake_vllm.base_url, api_key="x", max_retries=0)
    plain = sdk.chat.completions.create(model=fake_vllm.model, messages=[])
    assert plain.choices[0].message.content == "hi"
    assert plain.usage is not None and plain.usage.prompt_tokens == 10
    called = sdk.chat.completions.create(model=fake_vllm.model, messages=[])
    assert called.choices[0].finish_reason == "tool_calls"
    tool_call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (tool_call.id, tool_call.function.name) == ("t1", "execute")  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{fake_vllm.port}/health", timeout=5) as health:
        assert health.status == 200
