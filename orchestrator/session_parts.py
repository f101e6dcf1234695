"""Small parts of the agent loop (``session.py``): what handling a block produced, the loop
guard, token totals, and the whole output kept for the model to read back. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

LOOP_GUARD_REPEATS = 3
KEEP_OUTPUT_BYTES = 8 << 20  # the most of a stream kept for the model to read back in full


@dataclass
class Outcome:
    """What handling one proposed block produced."""

    for_model: str
    quit: bool = False
    failure_key: tuple[Any, ...] | None = None
    interrupted: bool = False


@dataclass
class LoopGuard:
    """Stops a model that keeps running the same failing block with the same failure."""

    repeats: int = LOOP_GUARD_REPEATS
    _last: tuple[Any, ...] | None = None
    _count: int = 0

    def observe(self, failure_key: tuple[Any, ...] | None) -> bool:
        """Record one block's outcome; True when the same failure happened ``repeats`` times."""
        if failure_key is None:
            self._last, self._count = None, 0
            return False
        if failure_key == self._last:
            self._count += 1
        else:
            self._last, self._count = failure_key, 1
        return self._count >= self.repeats


@dataclass
class Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    blocks: int = 0


def code_sha256(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class Kept:
    """A stream's bytes as they arrive, up to ``KEEP_OUTPUT_BYTES``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = KEEP_OUTPUT_BYTES - len(self.data)
        self.data += chunk[: max(0, room)]
        self.dropped += max(0, len(chunk) - max(0, room))
