"""The watchdog's loop (orchestrator/sandbox/watchdog.py) with a real pipe and a fake clock:
late containers are removed, forgotten ones are not, and the end of the pipe sweeps."""

from __future__ import annotations

import os
import threading
from typing import Any

from orchestrator.sandbox.watchdog import MARGIN_S, Watch, Watchdog, run


def test_watch_tracks_deadlines() -> None:
    watch = Watch()
    watch.feed("watch a 10.0")
    watch.feed("watch b 20.0")
    watch.feed("forget b")
    watch.feed("nonsense line")
    watch.feed("watch c not-a-number")
    assert watch.due(9.9) == []
    assert watch.due(10.0) == ["a"]
    assert watch.due(99) == []  # removed once


def test_run_removes_late_containers_and_sweeps_at_the_end_of_the_pipe() -> None:
    read_fd, write_fd = os.pipe()
    removed: list[str] = []
    swept = threading.Event()
    now = [100.0]
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        loop = threading.Thread(
            target=run, args=(pipe, removed.append, swept.set, lambda: now[0]), daemon=True
        )
        loop.start()
        os.write(write_fd, b"watch late 101\nwatch ok 200\nwatch gone 101\nforget gone\n")
        for _ in range(50):
            now[0] = 150.0
            if removed:
                break
            threading.Event().wait(0.05)
        assert removed == ["late"]
        assert not swept.is_set()
        os.close(write_fd)  # oi ended, in whatever way
        loop.join(5)
        assert swept.is_set() and not loop.is_alive()
        assert removed == ["late"]  # "ok" is left to the sweep, "gone" was forgotten


class _FakeProcess:
    def __init__(self) -> None:
        self.written = b""
        read_fd, write_fd = os.pipe()
        self._read = read_fd
        self.stdin: Any = os.fdopen(write_fd, "wb")

    def poll(self) -> None:
        return None

    def lines(self) -> list[str]:
        self.stdin.flush()
        os.set_blocking(self._read, False)
        try:
            return os.read(self._read, 65536).decode().splitlines()
        except BlockingIOError:
            return []


def test_the_oi_side_starts_the_watchdog_once_and_adds_the_margin() -> None:
    started: list[_FakeProcess] = []

    def launch() -> Any:
        started.append(_FakeProcess())
        return started[-1]

    dog = Watchdog(launch=launch)
    dog.watch("c1", 1000.0)
    dog.forget("c1")
    assert len(started) == 1
    assert started[0].lines() == [f"watch c1 {1000.0 + MARGIN_S:.3f}", "forget c1"]
    dog.close()


def test_a_watchdog_that_cannot_start_never_fails_a_block() -> None:
    def launch() -> Any:
        raise OSError("no such interpreter")

    dog = Watchdog(launch=launch)
    dog.watch("c1", 1.0)  # no exception
    dog.forget("c1")
