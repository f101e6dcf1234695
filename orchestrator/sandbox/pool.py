"""Pre-started throwaway containers, so that a block does not wait for its container.

Creating and starting a hardened container costs ~100 ms; it can be paid before the block is
known. ``ContainerPool`` keeps up to ``size`` containers created, attached and started per
*shape* (the ``ContainerSpec`` minus its creation-time label: language, image, limits, network,
runtime, workdir, user, session). Each waits in its bootstrap for a program on stdin, runs
exactly one block and is removed: a container leaves the pool when it is handed out and never
comes back, so no block ever sees another block's container. After the block, the runner calls
``refill`` to start a replacement in the background.

Nothing is kept forever: a shape unused for ``idle`` seconds is drained, ``close()`` removes
everything (and is called for every open pool at interpreter exit), and every container carries
the usual ``oi.pid`` labels, so ``oi gc`` and the startup sweep remove what a killed oi process
left behind.

Used containers are removed by a ``Reaper``, off the hot path, on a few daemon threads; its
``drain()`` (from ``close()`` and at exit) waits until all are gone. Background work runs on
short-lived daemon threads that share the caller's docker client: docker-py's ``APIClient``
takes a separate pooled connection per request, and every hijacked attach socket is used by one
thread at a time (the pool's until the container is handed out, the runner's after).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import json
import os
import select
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from orchestrator.sandbox.bootstrap import READY
from orchestrator.sandbox.output import STDOUT
from orchestrator.sandbox.spec import LABEL_CREATED, ContainerSpec

GREETING_FRAME = struct.pack(">BxxxL", STDOUT, len(READY)) + READY
"""The wrapper's greeting as it arrives on the attach stream (one stdout frame)."""


class _Socket(Protocol):
    def fileno(self) -> int: ...
    def recv(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


class Live(Protocol):
    """What the pool needs of a started container (``runner.LiveContainer`` is one)."""

    id: str
    framed: bool  # runs the bootstrap wrapper, which greets
    greeted: bool  # its greeting has been read
    preread: bytes  # attach-stream bytes read before the block was sent

    @property
    def sock(self) -> _Socket: ...


L = TypeVar("L", bound=Live)
L_co = TypeVar("L_co", bound=Live, covariant=True)


class _Launcher(Protocol[L_co]):
    def launch(self, spec: ContainerSpec) -> L_co: ...


def shape_key(spec: ContainerSpec) -> str:
    """Containers of equal shape are interchangeable: everything but the creation time counts."""
    fields = dataclasses.asdict(spec)
    fields["labels"] = {k: v for k, v in spec.labels.items() if k != LABEL_CREATED}
    return json.dumps(fields, sort_keys=True, default=str)


def fresh(spec: ContainerSpec) -> ContainerSpec:
    """The spec with its creation label set to now (a refill is created later than its spec)."""
    return dataclasses.replace(spec, labels={**spec.labels, LABEL_CREATED: f"{time.time():.3f}"})


def read_greeting(live: Live, timeout: float) -> bool:
    """Wait for the wrapper's greeting; False when the container ended or said something else.

    Reads no byte past the greeting. Bytes that turn out not to be the greeting (say, an
    interpreter warning) stay in ``live.preread`` for the runner, so no output is lost.
    """
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while len(got) < len(GREETING_FRAME):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([live.sock], [], [], remaining)
            if not ready:
                return False
            chunk = live.sock.recv(len(GREETING_FRAME) - len(got))
            if not chunk:
                return False
            got += chunk
            if not GREETING_FRAME.startswith(got):
                live.preread = got
                return True
    except (OSError, ValueError):
        return False
    live.greeted = True
    return True


def is_idle(live: Live) -> bool:
    """Is a greeted container still waiting for its program? (Nothing may arrive before it.)

    Without this, a container whose bootstrap was killed while it waited would be handed out
    and its block would "fail" without having run.
    """
    if not live.greeted:
        return True  # its greeting is still on the way: nothing to tell yet
    try:
        readable, _, _ = select.select([live.sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class _Workers:
    """Runs jobs on at most ``limit`` daemon threads, which exit after ``linger`` idle seconds.

    Threads, not a long-lived executor: a process may create many sandboxes, and an idle one
    should cost nothing.
    """

    def __init__(self, name: str, limit: int, linger: float = 2.0) -> None:
        self._name = name
        self._limit = limit
        self._linger = linger
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._threads = 0
        self._waiting = 0
        self._busy = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            if len(self._jobs) > self._waiting and self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._waiting += 1
                    woken = self._cond.wait(self._linger)
                    self._waiting -= 1
                    if not woken and not self._jobs:
                        self._threads -= 1
                        return
                job = self._jobs.popleft()
                self._busy += 1
            try:
                job()
            except Exception:  # noqa: S110 - a job reports through its own state; workers live on
                pass
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()


class Reaper:
    """Removes used containers in the background; ``drain()`` waits until they are all gone."""

    def __init__(self, remove: Callable[[str], None], *, threads: int = 2) -> None:
        self._remove = remove
        self._workers = _Workers("oi-reaper", threads)
        self._lock = threading.Lock()
        self._pending: set[str] = set()

    @property
    def pending(self) -> int:
        """Containers handed to the reaper and not yet removed."""
        with self._lock:
            return len(self._pending)

    def remove(self, container_id: str) -> None:
        """Remove a container soon (returns at once)."""
        with self._lock:
            self._pending.add(container_id)
            _register(self)  # until nothing is pending: then nothing is left to do at exit
        self._workers.submit(functools.partial(self._remove_now, container_id))

    def drain(self, timeout: float = 60.0) -> None:
        """Remove everything handed over so far before returning."""
        self._workers.wait_idle(timeout)
        with self._lock:
            left = list(self._pending)
        for container_id in left:  # the workers were too slow: do it here
            self._remove_now(container_id)

    def close(self) -> None:
        self.drain()

    def remove_now(self, container_id: str) -> None:
        """Remove a container before returning (when the engine's count must drop now)."""
        with self._lock:
            self._pending.add(container_id)
            _register(self)
        self._remove_now(container_id)

    def _remove_now(self, container_id: str) -> None:
        try:
            self._remove(container_id)
        finally:
            with self._lock:
                self._pending.discard(container_id)
                if not self._pending:
                    _unregister(self)


@dataclass(eq=False)
class _Slot(Generic[L]):
    """One pre-started container of a shape, or the promise of one while it starts."""

    started: threading.Event = field(default_factory=threading.Event)
    live: L | None = None
    error: Exception | None = None
    discarded: bool = False  # drained or closed while starting: its starter removes it

    @property
    def ready(self) -> bool:
        return self.started.is_set() and self.live is not None


@dataclass(eq=False)
class _Shape(Generic[L]):
    spec: ContainerSpec
    last_used: float
    slots: list[_Slot[L]] = field(default_factory=list)


@dataclass(frozen=True)
class PoolStats:
    """Pre-started containers held right now (for display and, later, per-user quotas)."""

    ready: int
    starting: int
    shapes: int

    @property
    def total(self) -> int:
        return self.ready + self.starting


class ContainerPool(Generic[L]):
    """Pre-started containers per shape; a ``Launcher`` that hands out one of them when it can.

    ``warm(spec)`` makes a shape pooled (non-blocking); ``launch(spec)`` takes a ready container
    of the shape, waits for one being started, or else launches directly; ``close()`` removes
    all. Thread-safe.
    """

    def __init__(
        self,
        launcher: _Launcher[L],
        reaper: Reaper,
        *,
        size: int,
        idle: float,
        ready_timeout: float = 60.0,
        threads: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._launcher = launcher
        self._reaper = reaper
        self.size = size
        self.idle = idle
        self._ready_timeout = ready_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._shapes: dict[str, _Shape[L]] = {}
        self._starting = 0  # launches in flight, including discarded ones
        self._starters = _Workers("oi-pool", threads)
        self._janitor_running = False

    # --- public ---------------------------------------------------------------------------------

    def warm(self, spec: ContainerSpec) -> None:
        """Keep ``size`` containers of this shape ready (or starting); returns at once."""
        key = shape_key(spec)
        with self._cond:
            shape = self._shapes.get(key)
            if shape is None:
                shape = self._shapes[key] = _Shape(spec, self._clock())
            shape.last_used = self._clock()
            self._refill(shape)
            self._start_janitor()
            _register(self)  # until no shape is left

    def refill(self, spec: ContainerSpec) -> None:
        """Top a pooled shape up again (after a block ran); nothing for other shapes."""
        with self._cond:
            shape = self._shapes.get(shape_key(spec))
            if shape is not None:
                shape.last_used = self._clock()
                self._refill(shape)

    def launch(self, spec: ContainerSpec) -> L:
        """A started, attached container for ``spec``: a pooled one if any, else a new one."""
        live = self.take(spec)
        return live if live is not None else self._launcher.launch(spec)

    def take(self, spec: ContainerSpec) -> L | None:
        """Hand out a pre-started container of this shape (it leaves the pool for good).

        Prefers a ready one, else waits for one being started; None when the shape is not pooled
        or none is ready or starting. The replacement is started by ``refill``, after the block:
        started now, it would compete with the block for the CPU.
        """
        key = shape_key(spec)
        while True:
            with self._cond:
                shape = self._shapes.get(key)
                if shape is None:
                    return None
                shape.last_used = self._clock()
                slot = next((s for s in shape.slots if s.ready), None)
                slot = slot or next((s for s in shape.slots if s.error is None), None)
                if slot is None:
                    return None
                shape.slots.remove(slot)
            try:
                started = slot.started.wait(self._ready_timeout)
            except BaseException:  # Ctrl-C while waiting: the container must not be lost
                self._abandon(slot)
                raise
            if not started:
                self._abandon(slot)
                return None
            live = slot.live
            if live is None:
                return None  # it failed to start: the direct launch will say why
            if is_idle(live):
                return live
            self._discard(live)  # its bootstrap died while waiting: never hand that out

    def wait_ready(self, spec: ContainerSpec, timeout: float) -> bool:
        """Wait until every container of this shape has started (for tests and the bench)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            shape = self._shapes.get(shape_key(spec))
            slots = list(shape.slots) if shape else []
        for slot in slots:
            if not slot.started.wait(max(0.0, deadline - time.monotonic())):
                return False
        return bool(slots) and all(slot.ready for slot in slots)

    def ready_ids(self, spec: ContainerSpec) -> set[str]:
        """Ids of this shape's containers that are ready to be handed out."""
        with self._cond:
            shape = self._shapes.get(shape_key(spec))
            slots = list(shape.slots) if shape else []
        return {slot.live.id for slot in slots if slot.ready and slot.live is not None}

    def stats(self) -> PoolStats:
        with self._cond:
            slots = [slot for shape in self._shapes.values() for slot in shape.slots]
            return PoolStats(
                ready=sum(1 for slot in slots if slot.ready),
                starting=sum(1 for slot in slots if not slot.started.is_set()),
                shapes=len(self._shapes),
            )

    def make_room(self) -> bool:
        """Free one container this pool holds, for a quota that counts the engine's containers:
        finish the pending removals of used ones, else remove the idle pre-started container of
        the least recently used shape now (it is not replaced until that shape is used again).
        False when there is nothing to free."""
        if self._reaper.pending:
            self._reaper.drain()
            return True
        with self._cond:
            for shape in sorted(self._shapes.values(), key=lambda shape: shape.last_used):
                slot = next((slot for slot in shape.slots if slot.ready), None)
                if slot is not None and slot.live is not None:
                    shape.slots.remove(slot)
                    live = slot.live
                    break
            else:
                return False
        with contextlib.suppress(OSError):
            live.sock.close()
        self._reaper.remove_now(live.id)
        return True

    def drain_idle(self) -> int:
        """Drain the shapes unused for ``idle`` seconds; returns how many containers went."""
        now = self._clock()
        with self._cond:
            expired = [k for k, s in self._shapes.items() if now - s.last_used >= self.idle]
            lives = [live for key in expired for live in self._forget(key)]
            self._unregister_when_empty()
        for live in lives:
            self._discard(live)
        return len(lives)

    def close(self, timeout: float = 60.0) -> None:
        """Remove every pre-started container (waiting for those still starting). Idempotent;
        the pool can be warmed again afterwards."""
        with self._cond:
            lives = [live for key in list(self._shapes) for live in self._forget(key)]
            self._cond.notify_all()  # the idle timer: no shape left, so it ends
        for live in lives:
            self._discard(live)
        with self._cond:
            self._cond.wait_for(lambda: self._starting == 0, timeout)
            self._unregister_when_empty()
        self._reaper.drain(timeout)

    # --- internals ------------------------------------------------------------------------------

    def _refill(self, shape: _Shape[L]) -> None:
        """Start containers until the shape has ``size`` (call with the lock held)."""
        for _ in range(self.size - len(shape.slots)):
            slot: _Slot[L] = _Slot()
            shape.slots.append(slot)
            self._starting += 1
            self._starters.submit(functools.partial(self._start, slot, shape.spec))

    def _start(self, slot: _Slot[L], spec: ContainerSpec) -> None:
        live: L | None = None
        try:
            if not slot.discarded:
                live = self._launcher.launch(fresh(spec))
                if live.framed and not read_greeting(live, self._ready_timeout):
                    raise _StartFailed(f"sandbox {live.id[:12]} did not start its bootstrap")
        except Exception as exc:
            slot.error = exc
        with self._cond:
            keep = live is not None and slot.error is None and not slot.discarded
            if keep:
                slot.live = live
            else:
                for shape in self._shapes.values():
                    if slot in shape.slots:
                        shape.slots.remove(slot)
        slot.started.set()
        if live is not None and not keep:
            self._discard(live)
        # Only now is this start finished: close() waits for it, then drains the reaper, so
        # the discard above must already be queued.
        with self._cond:
            self._starting -= 1
            self._cond.notify_all()
            self._unregister_when_empty()

    def _unregister_when_empty(self) -> None:
        """No shape and nothing starting: nothing left for the exit hook (lock held)."""
        if not self._shapes and self._starting == 0:
            _unregister(self)

    def _abandon(self, slot: _Slot[L]) -> None:
        """Give up on a slot taken from its shape: whoever sees it last removes its container."""
        with self._cond:
            slot.discarded = True
            live = slot.live
        if live is not None:
            self._discard(live)

    def _forget(self, key: str) -> list[L]:
        """Drop a shape; return its started containers (call with the lock held)."""
        shape = self._shapes.pop(key)
        lives = []
        for slot in shape.slots:
            if slot.live is not None:
                lives.append(slot.live)
            else:
                slot.discarded = True
        return lives

    def _discard(self, live: L) -> None:
        with contextlib.suppress(OSError):
            live.sock.close()
        self._reaper.remove(live.id)

    def _start_janitor(self) -> None:
        """Drain idle shapes on a daemon thread, which ends when no shape is left."""
        if self._janitor_running:
            return
        self._janitor_running = True
        threading.Thread(target=self._janitor, name="oi-pool-idle", daemon=True).start()

    def _janitor(self) -> None:
        while True:
            with self._cond:
                if not self._shapes:
                    self._janitor_running = False
                    return
                due = min(shape.last_used for shape in self._shapes.values()) + self.idle
                wait = due - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
            self.drain_idle()


class _StartFailed(Exception):
    pass


# --- interpreter exit -------------------------------------------------------------------------


class _Closeable(Protocol):
    def close(self) -> None: ...


_open: set[_Closeable] = set()
_open_lock = threading.Lock()
_atexit_registered = False


def _register(resource: _Closeable) -> None:
    """Close this at interpreter exit unless it is closed before (Ctrl-C and errors included)."""
    global _atexit_registered  # noqa: PLW0603 - one exit hook per process
    with _open_lock:
        _open.add(resource)
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True


def _unregister(resource: _Closeable) -> None:
    with _open_lock:
        _open.discard(resource)


def _forget_after_fork() -> None:
    """A forked child must not remove its parent's containers when it exits."""
    global _open_lock  # noqa: PLW0603 - another thread may have held it at the fork
    _open_lock = threading.Lock()
    _open.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def open_pool_stats() -> PoolStats:
    """Pre-started containers held by all open pools of this process (for quotas)."""
    with _open_lock:
        pools: list[ContainerPool[Any]] = [r for r in _open if isinstance(r, ContainerPool)]
    stats = [pool.stats() for pool in pools]
    return PoolStats(
        ready=sum(s.ready for s in stats),
        starting=sum(s.starting for s in stats),
        shapes=sum(s.shapes for s in stats),
    )


def close_all() -> None:
    """Close every open pool and reaper: run at interpreter exit, after Ctrl-C too."""
    if threading.current_thread() is threading.main_thread():
        # The process is ending: a second Ctrl-C (or SIGTERM) must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):
                signal.signal(sig, signal.SIG_IGN)
    for _ in range(3):  # a pool closing hands containers to a reaper: go round again
        with _open_lock:
            pools = [r for r in _open if isinstance(r, ContainerPool)]
            resources = pools + [r for r in _open if not isinstance(r, ContainerPool)]
        if not resources:
            return
        for resource in resources:  # pools first: they hand their containers to reapers
            with contextlib.suppress(Exception):
                resource.close()
