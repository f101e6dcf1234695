"""Fitting a conversation into the model's context window (pure).

Older block outputs are condensed first, then whole old exchanges go (tool calls stay paired
with their answers), and the newest result is cut to what is left (``result_room``), so a run
never ends because one output was large: oi must work at ``--max-model-len`` 4096 and 2048.
Token counts are estimated (characters / 3, conservative for code; images by their size, see
``vision.image_tokens``); the server's own count is the real bound, and a context error from it
makes the session trim harder and retry once. Images go first (all but the newest message's),
the newest message's images last, before giving up.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import ContextOverflowError
from orchestrator.vision import (
    RESULT_PREFIX,
    has_images,
    image_tokens,
    is_image_part,
    text_of,
    without_images,
)

__all__ = ["RESULT_PREFIX", "estimate_tokens", "fit_context", "is_result", "result_room"]
TRIMMED_OUTPUT = "[oi] output of this block removed to fit the context window"
CHARS_PER_TOKEN = 3.0  # conservative for code; vLLM counts real tokens, we only need a bound
MIN_RESULT_CHARS = 400  # the least of a block's output the model is given, however small
Messages = list[dict[str, Any]]


TRIMMED_IMAGE = "oi: image removed to fit the context window"


def estimate_tokens(messages: Messages, tools: list[dict[str, Any]] | None) -> int:
    size = images = 0
    for message in messages:
        if has_images(message):
            parts = message["content"]
            images += sum(image_tokens(p) for p in parts if is_image_part(p))
            message = {**message, "content": [p for p in parts if not is_image_part(p)]}  # noqa: PLW2901
        size += len(json.dumps(message, ensure_ascii=False))
    if tools:
        size += len(json.dumps(tools))
    return int(size / CHARS_PER_TOKEN) + 8 * len(messages) + images


def is_result(message: dict[str, Any]) -> bool:
    return message.get("role") == "tool" or text_of(message).startswith(RESULT_PREFIX)


def _drop_images(
    messages: Messages, tools: list[dict[str, Any]] | None, budget: int, *, keep_newest: bool
) -> int:
    """Replace images with a note, oldest first (the newest message's kept when asked); how
    many messages lost theirs."""
    holders = [i for i, m in enumerate(messages) if has_images(m)]
    dropped = 0
    for index in holders[:-1] if keep_newest else holders:
        if estimate_tokens(messages, tools) <= budget:
            break
        message = messages[index]
        if has_images(message):
            messages[index] = without_images(message, TRIMMED_IMAGE)
            dropped += 1
    return dropped


def fit_context(messages: Messages, tools: list[dict[str, Any]] | None, budget: int) -> list[str]:
    """Trim ``messages`` in place to ``budget`` tokens; notes of what was trimmed."""
    notes: list[str] = []
    if estimate_tokens(messages, tools) <= budget:
        return notes
    # 0. Older images (hundreds of tokens each); the newest message's only if nothing else helps.
    dropped_images = _drop_images(messages, tools, budget, keep_newest=True)
    # 1. Old block outputs, oldest first (the newest result stays whole).
    results = [
        i for i, m in enumerate(messages) if is_result(m) and m.get("content") != TRIMMED_OUTPUT
    ]
    trimmed = 0
    for index in results[:-1]:
        if estimate_tokens(messages, tools) <= budget:
            break
        messages[index] = {**messages[index], "content": TRIMMED_OUTPUT}
        trimmed += 1
    if trimmed:
        notes.append(f"removed the output of {trimmed} old block(s) to fit the context")
    # 2. Whole old exchanges after the task, keeping tool calls paired with their answers.
    dropped = 0
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages))
    while estimate_tokens(messages, tools) > budget:
        start = first_user + 1
        if start >= len(messages) - 1:
            break
        end = start + 1
        while end < len(messages) and messages[end].get("role") == "tool":
            end += 1
        del messages[start:end]
        dropped += end - start
    if dropped:
        notes.append(f"dropped {dropped} old message(s) to fit the context")
    dropped_images += _drop_images(messages, tools, budget, keep_newest=False)
    if dropped_images:
        notes.insert(0, f"removed the images of {dropped_images} message(s) to fit the context")
    if estimate_tokens(messages, tools) > budget:
        raise ContextOverflowError(
            f"the conversation does not fit the model's context (about {budget} tokens "
            "left for it) even after trimming; start over (%reset in chat) or raise "
            "--max-model-len on the server"
        )
    return notes


def result_room(messages: Messages, tools: list[dict[str, Any]] | None, budget: int) -> int:
    """Characters the next block's result may take: the budget less what the conversation
    needs once its older outputs are condensed (``fit_context`` does that first)."""
    condensed = [{**m, "content": TRIMMED_OUTPUT} if is_result(m) else m for m in messages]
    left = budget - estimate_tokens(condensed, tools) - 64
    return max(MIN_RESULT_CHARS, int(left * CHARS_PER_TOKEN * 0.8))


def prompt_budget(max_model_len: int, max_tokens: int | None) -> int:
    """Tokens the conversation may take: the context less what the reply may need."""
    return max(256, max_model_len - reply_reserve(max_model_len, max_tokens))


INSTRUCTIONS_SHARE = 4
"""Standing instructions may take at most a quarter of the prompt budget: at a 4096-token
context (the seed's advice for a 12 GB card) that is 768 tokens, about 2,300 characters; the
rest is for oi's facts, the task, the code and its output."""


def instructions_room(max_model_len: int, max_tokens: int | None) -> int:
    """Tokens standing instructions may take at this context length."""
    return prompt_budget(max_model_len, max_tokens) // INSTRUCTIONS_SHARE


def tokens_of(chars: int) -> int:
    return int(chars / CHARS_PER_TOKEN) + 1


def instructions_problem(
    chars: int, sources: str, max_model_len: int, max_tokens: int | None, *, framing: int = 0
) -> str | None:
    """Why instructions taking ``chars`` characters of the prompt (``framing`` of them oi's
    own frame and reminder) do not fit this context, or None."""
    need, room = tokens_of(chars), instructions_room(max_model_len, max_tokens)
    if chars == 0 or need <= room:
        return None
    fit = max(0, int((room - 1) * CHARS_PER_TOKEN) - framing)
    return (
        f"the standing instructions ({sources}) take about {need} tokens, more than the "
        f"{room} a context of {max_model_len} tokens leaves them (a quarter of what the "
        f"conversation may use); shorten them (about {fit} characters fit), or serve the "
        "model with a larger --max-model-len"
    )


def reply_reserve(max_model_len: int, max_tokens: int | None) -> int:
    """Tokens kept free for the model's reply (as ``prompt_budget`` keeps them)."""
    return max_tokens or min(4096, max_model_len // 4)


def context_need(
    system_chars: int,
    instructions_chars: int,
    max_output: int,
    max_model_len: int,
    max_tokens: int | None,
) -> dict[str, int]:
    """Tokens the settings need, part by part, so that a block's whole output (``max_output``
    bytes of stdout) reaches the model in the first turn: oi's prompt with the execute tool,
    the instructions, a short task, the output, the reply. For ``oi doctor``."""
    return {
        "oi's prompt": tokens_of(system_chars),
        "instructions": tokens_of(instructions_chars) if instructions_chars else 0,
        "a task": 200,
        "a block's whole output": tokens_of(max_output),
        "the reply": reply_reserve(max_model_len, max_tokens),
    }
