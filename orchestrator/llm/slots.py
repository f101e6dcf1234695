"""A bound on model requests in flight to one endpoint, across all of a user's oi processes.

The seed's advice for a 12 GB card is to limit concurrent requests so the model server does not
run out of memory (vLLM's ``--max-num-seqs``); a batch at ``--concurrency 8`` or a server with
many clients would otherwise send them all at once, and every request queued inside vLLM counts
against its first-token timeout. ``max_model_requests`` (``OI_MAX_MODEL_REQUESTS``, capped by
the admin policy) bounds them on oi's side: a request over the bound waits for a free slot,
and the person is told once that it waits.

How it is counted: the endpoint gets a folder in the user's private run folder
(``paths.run_dir``: only this user can create, hold or remove anything there) holding one file
per slot. A request in flight holds an exclusive ``flock`` on one slot file; a slot is free
when its lock can be taken. The kernel releases the lock when the process dies, so a crashed oi
never keeps a slot. Locks are per open file, so the threads of one process (batch tasks, a
server's sessions) count against each other too.

What holds across *different* users: nothing shared (a shared lock file could be held by
anyone on the host and stall everyone): each user's own processes are bounded by their own
``max_model_requests``, which the admin policy caps per user. ``oi serve`` runs every client's
session in one process, so its bound holds for all of them. The host-wide bound is the model
server's own (vLLM's ``--max-num-seqs``, ``MAX_NUM_SEQS`` in ``compose/.env``): it queues
requests beyond it instead of running out of memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from orchestrator.llm.types import ModelTimeoutError
from orchestrator.paths import run_dir

if TYPE_CHECKING:
    from orchestrator.llm.types import StreamEvent

SETTING = "max_model_requests, OI_MAX_MODEL_REQUESTS"
Clock = Callable[[], float]


def endpoint_key(api_base: str) -> str:
    """One folder per endpoint: ``http://GPU-box:8000/v1/`` and ``http://gpu-box:8000/v1``
    are the same server."""
    normalized = api_base.strip().rstrip("/").lower()
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


class ModelSlots:
    """``bound`` slot files for one endpoint in ``directory`` (default: the run folder)."""

    def __init__(
        self,
        api_base: str,
        bound: int,
        *,
        directory: Path | None = None,
        poll_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        if bound < 1:
            raise ConfigError(f"max_model_requests must be at least 1, got {bound}")
        self.api_base = api_base
        self.bound = bound
        self._root = directory
        self.poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    def _folder(self) -> Path:
        root = self._root if self._root is not None else run_dir()
        folder = root / "model-requests" / endpoint_key(self.api_base)
        for path in (folder.parent, folder):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        return folder

    def try_take(self) -> int | None:
        """A free slot's locked descriptor, or None when all ``bound`` are held."""
        folder = self._folder()
        for index in range(self.bound):
            fd = os.open(
                folder / f"slot-{index}",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    @contextlib.contextmanager
    def held(
        self, *, wait_s: float, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[None]:
        """Hold a slot for the duration; wait for one (at most ``wait_s``), telling
        ``on_wait`` once when it has to."""
        fd = self.try_take()
        if fd is None:
            if on_wait is not None:
                on_wait(
                    f"waiting for a model request slot: {self.bound} request(s) to "
                    f"{self.api_base} are in flight from your oi processes ({SETTING})"
                )
            fd = self._wait(wait_s)
        try:
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _wait(self, wait_s: float) -> int:
        deadline = self._clock() + wait_s
        while True:
            self._sleep(self.poll_s * (0.5 + random.random()))  # noqa: S311  (jitter)
            fd = self.try_take()
            if fd is not None:
                return fd
            if self._clock() >= deadline:
                raise ModelTimeoutError(
                    f"no model request slot came free within {wait_s:g} s: {self.bound} "
                    f"request(s) to {self.api_base} stayed in flight ({SETTING}); wait for "
                    "them, or raise the bound if the server has room (vLLM's --max-num-seqs)",
                    SETTING.split(",", 1)[0],
                )


class BoundedModel:
    """A ``ChatModel`` whose replies each hold a slot of ``slots`` while they stream."""

    def __init__(
        self,
        inner: Any,
        slots: ModelSlots,
        *,
        wait_s: float,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.slots = slots
        self.wait_s = wait_s
        self.on_wait = on_wait

    @property
    def api_base(self) -> str:
        return str(self.inner.api_base)

    def model_max_len(self) -> int | None:
        value: int | None = self.inner.model_max_len()
        return value

    def stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Iterator[StreamEvent]:
        """The inner model's reply, sent once a slot is free; the slot is released when the
        reply ends or the caller closes the stream."""
        with self.slots.held(wait_s=self.wait_s, on_wait=self.on_wait):
            stream = self.inner.stream_chat(messages, tools)
            try:
                yield from stream
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
