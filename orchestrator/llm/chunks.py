"""Read one streamed ``chat.completion.chunk`` from plain JSON. Pure: a value in, parts out.

The client hands over each SSE event exactly as the server sent it (the SDK's typed chunk
objects are built without validation, so a chunk of the wrong shape only fails later, deep in
attribute access, as a traceback). ``parse_chunk`` checks the shape oi relies on and raises
``ChunkShapeError`` with a short description of what is wrong; the client turns it into a
one-line ``ModelError`` naming the server.

What is checked (what vLLM always sends), and what is tolerated:

- the chunk is an object with a ``choices`` list (empty in the final usage chunk);
- each choice is an object; only ``index`` 0 is read (oi never asks for n > 1; a missing
  index counts as 0); choice 0 has a ``delta`` object;
- ``delta.content`` and ``finish_reason`` are strings or null; ``delta.tool_calls`` is null or
  a list of objects whose ``index`` is an integer (a missing one counts as the fragment's
  position) and whose ``id``, ``function.name`` and ``function.arguments`` are strings or null;
- ``usage`` is null or an object whose token counts are integers or null.

Unknown fields (``role``, ``logprobs``, ``stop_reason``, ``reasoning_content``...) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_SNIPPET_LIMIT = 80


class ChunkShapeError(ValueError):
    """A chunk that is valid JSON but not the shape of a chat completion chunk."""


@dataclass(frozen=True)
class ToolFragment:
    """One streamed piece of a tool call; ``index`` says which call it belongs to."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class ChunkParts:
    """What one chunk adds to the reply."""

    content: str | None = None
    tool_fragments: tuple[ToolFragment, ...] = ()
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt tokens, completion tokens)


def parse_chunk(data: object) -> ChunkParts:
    """The parts of one chunk; raises ``ChunkShapeError`` when its shape is unexpected."""
    if not isinstance(data, dict):
        raise ChunkShapeError(f"{_kind(data)} instead of a chunk object: {_snippet(data)}")
    usage = _usage(data.get("usage"), data)
    choices = data.get("choices")
    if not isinstance(choices, list):
        what = 'no "choices"' if choices is None else f'"choices" is {_kind(choices)}, not a list'
        raise ChunkShapeError(f"{what} in {_snippet(data)}")
    for choice in choices:
        if not isinstance(choice, dict):
            raise ChunkShapeError(f"a choice is {_kind(choice)}, not an object: {_snippet(data)}")
        index = choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise ChunkShapeError(f'a choice "index" is {_kind(index)}: {_snippet(data)}')
        if index == 0:
            return _choice_parts(choice, data, usage)
    return ChunkParts(usage=usage)


def _choice_parts(
    choice: dict[str, object], data: object, usage: tuple[int, int] | None
) -> ChunkParts:
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        what = 'no "delta"' if delta is None else f'"delta" is {_kind(delta)}, not an object'
        raise ChunkShapeError(f"{what} in {_snippet(data)}")
    content = _optional_str(delta.get("content"), "delta.content", data)
    finish_reason = _optional_str(choice.get("finish_reason"), "finish_reason", data)
    return ChunkParts(
        content=content,
        tool_fragments=_tool_fragments(delta.get("tool_calls"), data),
        finish_reason=finish_reason,
        usage=usage,
    )


def _tool_fragments(raw: object, data: object) -> tuple[ToolFragment, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ChunkShapeError(f'"tool_calls" is {_kind(raw)}, not a list: {_snippet(data)}')
    fragments: list[ToolFragment] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ChunkShapeError(f"a tool call is {_kind(item)}, not an object: {_snippet(data)}")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ChunkShapeError(f'a tool call "index" is {_kind(index)}: {_snippet(data)}')
        function = item.get("function")
        if function is None:
            function = {}
        if not isinstance(function, dict):
            raise ChunkShapeError(
                f'"function" is {_kind(function)}, not an object: {_snippet(data)}'
            )
        fragments.append(
            ToolFragment(
                index=index,
                id=_optional_str(item.get("id"), "tool call id", data),
                name=_optional_str(function.get("name"), "function.name", data),
                arguments=_optional_str(function.get("arguments"), "function.arguments", data),
            )
        )
    return tuple(fragments)


def _usage(raw: object, data: object) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ChunkShapeError(f'"usage" is {_kind(raw)}, not an object: {_snippet(data)}')
    counts: list[int] = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = raw.get(key)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise ChunkShapeError(f'usage "{key}" is {_kind(value)}: {_snippet(data)}')
        counts.append(value)
    return counts[0], counts[1]


def _optional_str(value: object, name: str, data: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ChunkShapeError(f"{name} is {_kind(value)}, not a string: {_snippet(data)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a JSON array"
    return "an object"


def _snippet(data: object) -> str:
    text = " ".join(json.dumps(data, ensure_ascii=False).split())
    return text if len(text) <= _SNIPPET_LIMIT else text[: _SNIPPET_LIMIT - 1] + "…"
