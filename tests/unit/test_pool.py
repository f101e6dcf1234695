"""The pool's bookkeeping with a fake launcher (no Docker): shapes, hand-out once, refill,
waiting for a container being started, dead containers, failures, idle drain, close, counts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.languages import Language
from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox.pool import (
    GREETING_FRAME,
    ContainerPool,
    Reaper,
    _Workers,
    fresh,
    is_idle,
    open_pool_stats,
    read_greeting,
    shape_key,
)
from orchestrator.sandbox.spec import (
    LABEL_CREATED,
    ContainerSpec,
    Identity,
    NetworkAttachment,
    build_spec,
)
from orchestrator.settings import Settings

IDENTITY = Identity(uid=1000, gid=1000, owner_uid=1000, pid=4242, pid_start="777")


def make_spec(
    workdir: Path,
    language: Language = Language.PYTHON,
    *,
    identity: Identity = IDENTITY,
    session: str = "s1",
    created: float = 1.0,
    **overrides: Any,
) -> ContainerSpec:
    settings = sandbox_config(Settings(workdir=workdir, **overrides), Policy())
    attachment = NetworkAttachment("bridge") if settings.network != "none" else None
    return build_spec(
        language,
        f"oi-sandbox-{language.value}:abc",
        settings,
        identity,
        session,
        {},
        created=created,
        attachment=attachment,
    )


# --- shapes -------------------------------------------------------------------------------------


def test_shape_ignores_only_the_creation_time(tmp_path: Path) -> None:
    assert shape_key(make_spec(tmp_path, created=1.0)) == shape_key(make_spec(tmp_path, created=2))


@pytest.mark.parametrize(
    "change",
    [
        {"language": Language.SHELL},
        {"memory": "512m"},
        {"cpus": 2.0},
        {"pids": 64},
        {"timeout": 5.0, "network": "open"},
        {"isolation": "gvisor"},
        {"tmp_size": "16m"},
        {"max_file_size": "8m"},
        {"session": "s2"},
        {"identity": Identity(uid=1001, gid=1001, owner_uid=1001, pid=4242, pid_start="777")},
        {"identity": Identity(uid=1000, gid=1000, owner_uid=1000, pid=99, pid_start="1")},
    ],
)
def test_shape_differs_in_everything_else(tmp_path: Path, change: dict[str, Any]) -> None:
    assert shape_key(make_spec(tmp_path)) != shape_key(make_spec(tmp_path, **change))


def test_shape_differs_by_workdir(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert shape_key(make_spec(tmp_path / "a")) != shape_key(make_spec(tmp_path / "b"))


def test_fresh_sets_the_creation_label_to_now(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, created=1.0)
    before = time.time()
    renewed = fresh(spec)
    assert float(renewed.labels[LABEL_CREATED]) >= before - 0.01
    assert spec.labels[LABEL_CREATED] == "1.000"  # the original is untouched
    assert shape_key(renewed) == shape_key(spec)


# --- a fake launcher ----------------------------------------------------------------------------


@dataclass(eq=False)
class FakeLive:
    id: str
    sock: socket.socket
    peer: socket.socket  # the "container" end
    framed: bool = False
    greeted: bool = False
    preread: bytes = b""


@dataclass
class FakeLauncher:
    """Hands out socketpair-backed containers; can greet, be gated, or fail."""

    greet: bool = False
    gate: threading.Event | None = None
    failures: int = 0
    launched: list[FakeLive] = field(default_factory=list)
    specs: list[ContainerSpec] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: int = 0  # launch() calls begun (a gated one may still be waiting)

    def launch(self, spec: ContainerSpec) -> FakeLive:
        with self.lock:
            self.entered += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("engine says no")
            ours, theirs = socket.socketpair()
            live = FakeLive(f"c{len(self.launched)}", ours, theirs, framed=self.greet)
            self.launched.append(live)
            self.specs.append(spec)
        if self.greet:
            theirs.sendall(GREETING_FRAME)
        return live


class Removed:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, container_id: str) -> None:
        with self.lock:
            self.ids.append(container_id)


@pytest.fixture
def removed() -> Removed:
    return Removed()


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def pool(launcher: FakeLauncher, removed: Removed) -> Iterator[ContainerPool[FakeLive]]:
    made = ContainerPool(launcher, Reaper(removed), size=1, idle=60, ready_timeout=5)
    yield made
    made.close()


def wait_until(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- hand-out -----------------------------------------------------------------------------------


def test_warm_starts_containers_and_each_is_handed_out_once(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    pool = ContainerPool(launcher, Reaper(removed), size=2, idle=60)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    assert pool.wait_ready(spec, 5)
    assert pool.stats().ready == 2 and len(pool.ready_ids(spec)) == 2
    first, second = pool.take(spec), pool.take(spec)
    assert first is not None and second is not None and first.id != second.id
    assert pool.take(spec) is None  # both gone: a container is never handed out twice
    direct = pool.launch(spec)
    assert direct.id not in (first.id, second.id) and len(launcher.launched) == 3
    pool.close()
    assert removed.ids == []  # handed-out containers are the runner's to remove


def test_warm_is_idempotent_and_does_not_block(
    tmp_path: Path, launcher: FakeLauncher, pool: ContainerPool[FakeLive]
) -> None:
    launcher.gate = threading.Event()
    spec = make_spec(tmp_path)
    started = time.monotonic()
    pool.warm(spec)
    pool.warm(spec)
    assert time.monotonic() - started < 0.5
    assert pool.stats().starting == 1
    launcher.gate.set()
    assert pool.wait_ready(spec, 5) and len(launcher.launched) == 1


def test_refill_tops_up_only_pooled_shapes(
    tmp_path: Path, launcher: FakeLauncher, pool: ContainerPool[FakeLive]
) -> None:
    python, shell = make_spec(tmp_path), make_spec(tmp_path, Language.SHELL)
    pool.refill(python)
    assert pool.stats().total == 0 and pool.take(python) is None
    pool.warm(python)
    assert pool.wait_ready(python, 5)
    taken = pool.take(python)
    assert taken is not None and pool.stats().total == 0  # no refill during the block
    pool.refill(python)
    pool.refill(shell)
    assert pool.wait_ready(python, 5)
    assert pool.stats().ready == 1 and pool.take(shell) is None
    assert pool.ready_ids(python) == {launcher.launched[-1].id} != {taken.id}


def test_refills_get_a_fresh_creation_label(
    tmp_path: Path, launcher: FakeLauncher, pool: ContainerPool[FakeLive]
) -> None:
    spec = make_spec(tmp_path, created=1.0)
    pool.warm(spec)
    assert pool.wait_ready(spec, 5)
    assert float(launcher.specs[0].labels[LABEL_CREATED]) > 1.0


def test_take_waits_for_a_container_being_started(
    tmp_path: Path, launcher: FakeLauncher, pool: ContainerPool[FakeLive]
) -> None:
    launcher.gate = threading.Event()
    spec = make_spec(tmp_path)
    pool.warm(spec)
    got: list[FakeLive | None] = []
    taker = threading.Thread(target=lambda: got.append(pool.take(spec)))
    taker.start()
    # The taker has the slot (it left the shape) and waits on its start, held at the gate.
    deadline = time.monotonic() + 5
    while pool._shapes[shape_key(spec)].slots and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not pool._shapes[shape_key(spec)].slots
    assert launcher.entered == 1 and taker.is_alive() and not got  # still waiting for the start
    launcher.gate.set()
    taker.join(5)
    assert got and got[0] is not None and got[0].id == "c0"
    assert len(launcher.launched) == 1  # it did not launch a second one meanwhile


def test_a_container_given_up_on_while_starting_is_removed_when_it_starts(
    tmp_path: Path, removed: Removed
) -> None:
    launcher = FakeLauncher(gate=threading.Event())
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=60, ready_timeout=0.1)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    assert pool.take(spec) is None  # not started in time: the caller launches directly
    launcher.gate.set()
    wait_until(lambda: removed.ids == ["c0"])
    pool.close()


def test_a_container_whose_bootstrap_died_is_never_handed_out(
    tmp_path: Path, removed: Removed
) -> None:
    launcher = FakeLauncher(greet=True)
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=60)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    assert pool.wait_ready(spec, 5)
    dead = launcher.launched[0]
    assert dead.greeted and is_idle(dead)
    dead.peer.close()  # the container ended while it waited: its stream ends
    assert pool.take(spec) is None
    pool.close()
    assert removed.ids == [dead.id]


def test_a_failed_start_falls_back_to_a_direct_launch(
    tmp_path: Path, launcher: FakeLauncher, pool: ContainerPool[FakeLive]
) -> None:
    launcher.failures = 1
    spec = make_spec(tmp_path)
    pool.warm(spec)
    wait_until(lambda: pool.stats().total == 0)
    assert pool.take(spec) is None
    live = pool.launch(spec)
    assert live.id == "c0"


def test_a_start_without_greeting_is_discarded(tmp_path: Path, removed: Removed) -> None:
    launcher = FakeLauncher()

    def launch_silent(spec: ContainerSpec) -> FakeLive:
        live = FakeLauncher.launch(launcher, spec)
        live.framed = True  # says it runs the wrapper, then never greets
        live.peer.close()
        return live

    launcher.launch = launch_silent  # type: ignore[method-assign]
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=60, ready_timeout=1)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    wait_until(lambda: removed.ids == ["c0"])
    assert pool.take(spec) is None
    pool.close()


# --- idle, close, counts ------------------------------------------------------------------------


def test_idle_shapes_drain(tmp_path: Path, launcher: FakeLauncher, removed: Removed) -> None:
    now = [100.0]
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=30, clock=lambda: now[0])
    python, shell = make_spec(tmp_path), make_spec(tmp_path, Language.SHELL)
    pool.warm(python)
    assert pool.wait_ready(python, 5)
    now[0] = 120.0
    pool.warm(shell)
    assert pool.wait_ready(shell, 5)
    now[0] = 131.0
    assert pool.drain_idle() == 1  # python idle 31 s, shell 11 s
    assert pool.stats().shapes == 1 and pool.take(python) is None
    now[0] = 151.0
    assert pool.drain_idle() == 1
    pool.close()
    assert sorted(removed.ids) == ["c0", "c1"]


def test_the_idle_timer_drains_on_its_own(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    pool = ContainerPool(launcher, Reaper(removed), size=2, idle=0.2)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    assert pool.wait_ready(spec, 5)
    wait_until(lambda: sorted(removed.ids) == ["c0", "c1"])
    assert pool.stats().total == 0
    wait_until(lambda: not any(t.name == "oi-pool-idle" for t in threading.enumerate()))


def test_close_removes_ready_and_starting_containers_and_can_be_repeated(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=60)
    python, shell = make_spec(tmp_path), make_spec(tmp_path, Language.SHELL)
    pool.warm(python)
    assert pool.wait_ready(python, 5)
    launcher.gate = threading.Event()
    pool.warm(shell)  # still starting when close() begins
    # Wait until its launch has begun: a slot discarded before that is never launched at all.
    wait_until(lambda: launcher.entered == 2)
    threading.Timer(0.2, launcher.gate.set).start()
    pool.close()
    assert sorted(removed.ids) == ["c0", "c1"]  # the starting one too, once it had started
    assert pool.stats().total == 0
    pool.close()  # idempotent
    pool.warm(python)  # and usable again
    assert pool.wait_ready(python, 5)
    pool.close()
    assert sorted(removed.ids) == ["c0", "c1", "c2"]


def test_counts_are_kept_for_quotas(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    launcher.gate = threading.Event()
    pool = ContainerPool(launcher, Reaper(removed), size=2, idle=60)
    before = open_pool_stats().total
    pool.warm(make_spec(tmp_path))
    stats = pool.stats()
    assert (stats.ready, stats.starting, stats.shapes, stats.total) == (0, 2, 1, 2)
    assert open_pool_stats().total == before + 2
    launcher.gate.set()
    assert pool.wait_ready(make_spec(tmp_path), 5)
    assert pool.stats().ready == 2
    pool.close()
    assert open_pool_stats().total == before


def test_make_room_frees_one_held_container_at_a_time(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    now = [0.0]
    pool = ContainerPool(launcher, Reaper(removed), size=1, idle=60, clock=lambda: now[0])
    python, shell = make_spec(tmp_path), make_spec(tmp_path, Language.SHELL)
    pool.warm(python)
    assert pool.wait_ready(python, 5)
    now[0] = 1.0
    pool.warm(shell)
    assert pool.wait_ready(shell, 5)
    assert pool.make_room() and removed.ids == ["c0"]  # the least recently used shape first
    assert pool.stats().ready == 1
    assert pool.make_room() and sorted(removed.ids) == ["c0", "c1"]
    assert not pool.make_room()  # nothing left to free
    pool.close()


def test_concurrent_takes_never_share_a_container(
    tmp_path: Path, launcher: FakeLauncher, removed: Removed
) -> None:
    pool = ContainerPool(launcher, Reaper(removed), size=4, idle=60)
    spec = make_spec(tmp_path)
    pool.warm(spec)
    assert pool.wait_ready(spec, 5)
    got: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        live = pool.launch(spec)
        with lock:
            got.append(live.id)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(got) == 8 and len(set(got)) == 8
    pool.close()


# --- greeting and liveness ----------------------------------------------------------------------


def fake_live() -> FakeLive:
    ours, theirs = socket.socketpair()
    return FakeLive("x", ours, theirs, framed=True)


def test_read_greeting_reads_exactly_the_greeting() -> None:
    live = fake_live()
    live.peer.sendall(GREETING_FRAME + b"next")
    assert read_greeting(live, 1) and live.greeted and live.preread == b""
    assert live.sock.recv(10) == b"next"


def test_read_greeting_keeps_what_is_not_a_greeting() -> None:
    live = fake_live()
    sent = b"\x02\0\0\0\0\0\0\x05oops!"  # a stderr frame came first
    live.peer.sendall(sent)
    live.peer.close()
    assert read_greeting(live, 1)
    assert not live.greeted and live.preread
    rest = b"".join(iter(lambda: live.sock.recv(100), b""))
    assert live.preread + rest == sent  # nothing lost: the runner decodes preread first


def test_read_greeting_fails_on_end_of_stream_or_silence() -> None:
    live = fake_live()
    assert not read_greeting(live, 0.05)
    live.peer.close()
    assert not read_greeting(live, 1)


def test_is_idle_tells_a_waiting_container_from_an_ended_one() -> None:
    live = fake_live()
    live.greeted = True
    assert is_idle(live)
    live.peer.sendall(b"?")
    assert not is_idle(live)
    ungreeted = fake_live()
    ungreeted.peer.sendall(GREETING_FRAME)
    assert is_idle(ungreeted)  # its greeting is pending: nothing to tell


# --- background removal -------------------------------------------------------------------------


def test_reaper_removes_in_the_background_and_drain_waits(removed: Removed) -> None:
    gate = threading.Event()

    def slow_remove(container_id: str) -> None:
        assert gate.wait(5)
        removed(container_id)

    reaper = Reaper(slow_remove)
    for n in range(5):
        reaper.remove(f"c{n}")
    assert reaper.pending == 5 and removed.ids == []
    threading.Timer(0.1, gate.set).start()
    reaper.drain()
    assert sorted(removed.ids) == [f"c{n}" for n in range(5)] and reaper.pending == 0


def test_reaper_survives_a_failing_removal(removed: Removed) -> None:
    def flaky(container_id: str) -> None:
        if container_id == "bad":
            raise RuntimeError("engine hiccup")
        removed(container_id)

    reaper = Reaper(flaky, threads=1)
    for container_id in ("a", "bad", "b"):
        reaper.remove(container_id)
    reaper.drain()
    assert sorted(removed.ids) == ["a", "b"] and reaper.pending == 0


def test_worker_threads_exit_when_idle() -> None:
    workers = _Workers("oi-test-workers", limit=3, linger=0.05)
    done: list[int] = []
    for n in range(6):
        workers.submit(lambda n=n: done.append(n))
    assert workers.wait_idle(5)
    assert sorted(done) == list(range(6))
    wait_until(lambda: not any(t.name == "oi-test-workers" for t in threading.enumerate()))
