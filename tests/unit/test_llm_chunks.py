"""Reading one streamed chunk from plain JSON (pure): the shapes accepted and refused."""

from __future__ import annotations

import json

import pytest

from orchestrator.llm.chunks import ChunkParts, ChunkShapeError, ToolFragment, parse_chunk


def choice(delta: object, finish_reason: object = None, **extra: object) -> dict[str, object]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}


def chunk(*choices: object, **extra: object) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": list(choices),
        **extra,
    }


# (id, chunk, expected parts)
ACCEPTED: list[tuple[str, object, ChunkParts]] = [
    ("role chunk", chunk(choice({"role": "assistant", "content": ""})), ChunkParts(content="")),
    ("content", chunk(choice({"content": "hi"})), ChunkParts(content="hi")),
    ("null content", chunk(choice({"content": None})), ChunkParts()),
    ("empty delta with finish", chunk(choice({}, "stop")), ChunkParts(finish_reason="stop")),
    (
        "finish with vLLM's stop_reason",
        chunk(choice({"content": "."}, "length", stop_reason=None)),
        ChunkParts(content=".", finish_reason="length"),
    ),
    (
        "usage chunk with empty choices",
        chunk(usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}),
        ChunkParts(usage=(12, 3)),
    ),
    ("usage with null counts", chunk(usage={"prompt_tokens": None}), ChunkParts(usage=(0, 0))),
    ("null usage", chunk(choice({"content": "a"}), usage=None), ChunkParts(content="a")),
    (
        "first tool call delta",
        chunk(
            choice(
                {
                    "tool_calls": [
                        {
                            "id": "chatcmpl-tool-1",
                            "type": "function",
                            "index": 0,
                            "function": {"name": "execute", "arguments": ""},
                        }
                    ]
                }
            )
        ),
        ChunkParts(tool_fragments=(ToolFragment(0, "chatcmpl-tool-1", "execute", ""),)),
    ),
    (
        "argument fragment without id or name",
        chunk(choice({"tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]})),
        ChunkParts(tool_fragments=(ToolFragment(1, arguments='{"a"'),)),
    ),
    (
        "tool call without index or function",
        chunk(choice({"tool_calls": [{"id": "x"}]})),
        ChunkParts(tool_fragments=(ToolFragment(0, "x"),)),
    ),
    ("choice without index is choice 0", chunk({"delta": {"content": "z"}}), ChunkParts("z")),
    ("other choices are ignored", chunk({"index": 1, "delta": {"content": "no"}}), ChunkParts()),
    (
        "choice 0 after another",
        chunk({"index": 1, "delta": 5}, choice({"content": "yes"})),
        ChunkParts(content="yes"),
    ),
    (
        "reasoning and unknown fields are ignored",
        chunk(choice({"reasoning_content": "hmm", "content": "ok"}), system_fingerprint="x"),
        ChunkParts(content="ok"),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted_chunks(data: object, expected: ChunkParts) -> None:
    assert parse_chunk(data) == expected


# (id, chunk, words the description must contain)
REFUSED: list[tuple[str, object, str]] = [
    ("a JSON array", [chunk(choice({"content": "a"}))], "a JSON array instead of a chunk"),
    ("a number", 42, "a number instead of a chunk"),
    ("a string", "hello", "a string instead of a chunk"),
    ("null", None, "null instead of a chunk"),
    ("no choices", {"id": "x", "object": "chat.completion.chunk"}, 'no "choices"'),
    ("choices an object", {"choices": {"index": 0}}, '"choices" is an object, not a list'),
    ("choices a string", {"choices": "stop"}, '"choices" is a string, not a list'),
    ("a choice that is a number", chunk(3), "a choice is a number, not an object"),
    ("index a string", chunk({"index": "0", "delta": {}}), 'a choice "index" is a string'),
    ("no delta", chunk({"index": 0, "finish_reason": None}), 'no "delta"'),
    ("delta a string", chunk(choice("hi")), '"delta" is a string, not an object'),
    ("content a number", chunk(choice({"content": 7})), "delta.content is a number"),
    ("content an object", chunk(choice({"content": {"t": 1}})), "delta.content is an object"),
    ("content a list", chunk(choice({"content": ["a"]})), "delta.content is a JSON array"),
    ("finish_reason a number", chunk(choice({}, 1)), "finish_reason is a number"),
    ("tool_calls an object", chunk(choice({"tool_calls": {}})), '"tool_calls" is an object'),
    ("tool call a string", chunk(choice({"tool_calls": ["x"]})), "a tool call is a string"),
    (
        "tool call index negative",
        chunk(choice({"tool_calls": [{"index": -1}]})),
        'a tool call "index" is a number',
    ),
    (
        "function a string",
        chunk(choice({"tool_calls": [{"index": 0, "function": "f"}]})),
        '"function" is a string',
    ),
    (
        "arguments an object",
        chunk(choice({"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]})),
        "function.arguments is an object, not a string",
    ),
    ("usage a number", chunk(usage=5), '"usage" is a number, not an object'),
    ("usage count a string", chunk(usage={"prompt_tokens": "9"}), 'usage "prompt_tokens" is a'),
]


@pytest.mark.parametrize(("data", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_chunks(data: object, words: str) -> None:
    with pytest.raises(ChunkShapeError) as caught:
        parse_chunk(data)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_description_shows_a_bounded_snippet_of_the_chunk() -> None:
    huge = {"choices": "x" * 10_000, "multi\nline": "a\nb"}
    with pytest.raises(ChunkShapeError) as caught:
        parse_chunk(huge)
    message = str(caught.value)
    assert len(message) < 200
    assert "\n" not in message
    assert message.endswith("…")
    assert json.dumps(huge)[:20] in message
