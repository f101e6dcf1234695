"""The bound on model requests in flight (``llm/slots.py``): slot files with ``flock`` in the
private run folder, shared by threads and processes, freed when a holder dies."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.llm.client import Finished, TextDelta
from orchestrator.llm.slots import BoundedModel, ModelSlots, endpoint_key
from orchestrator.llm.types import ModelTimeoutError

URL = "http://gpu-box:8000/v1"


def test_one_folder_per_endpoint_whatever_its_spelling() -> None:
    assert endpoint_key("http://GPU-box:8000/v1/") == endpoint_key("http://gpu-box:8000/v1")
    assert endpoint_key("http://gpu-box:8000/v1") != endpoint_key("http://gpu-box:8001/v1")


def test_the_slot_folder_is_private(tmp_path: Path) -> None:
    slots = ModelSlots(URL, 2, directory=tmp_path)
    fd = slots.try_take()
    assert fd is not None
    os.close(fd)
    folder = tmp_path / "model-requests" / endpoint_key(URL)
    for path in (folder, folder.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "slot-0").stat().st_mode) == 0o600


def test_the_bound_holds_and_a_freed_slot_is_taken_again(tmp_path: Path) -> None:
    slots = ModelSlots(URL, 2, directory=tmp_path)
    first, second = slots.try_take(), slots.try_take()
    assert first is not None and second is not None
    assert slots.try_take() is None  # the same process, another open: locked out too
    os.close(first)
    third = slots.try_take()
    assert third is not None
    for fd in (second, third):
        os.close(fd)


def test_a_request_over_the_bound_waits_and_is_told_once(tmp_path: Path) -> None:
    slots = ModelSlots(URL, 1, directory=tmp_path, poll_s=0.01)
    told: list[str] = []
    holder = slots.try_take()
    assert holder is not None
    threading.Timer(0.2, os.close, (holder,)).start()
    started = time.monotonic()
    with slots.held(wait_s=5, on_wait=told.append):
        waited = time.monotonic() - started
    assert 0.15 < waited < 2
    assert len(told) == 1
    assert "1 request(s) to http://gpu-box:8000/v1 are in flight" in told[0]
    assert "OI_MAX_MODEL_REQUESTS" in told[0]


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    slots = ModelSlots(URL, 1, directory=tmp_path, poll_s=0.01)
    holder = slots.try_take()
    with (
        pytest.raises(ModelTimeoutError, match=r"no model request slot came free within 0.2 s"),
        slots.held(wait_s=0.2),
    ):
        pass
    assert holder is not None
    os.close(holder)


HOLDER = """
import sys, time
from pathlib import Path
from orchestrator.llm.slots import ModelSlots
slots = ModelSlots(sys.argv[1], 1, directory=Path(sys.argv[2]))
fd = slots.try_take()
print("held" if fd is not None else "none", flush=True)
time.sleep(60)
"""


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, URL, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        slots = ModelSlots(URL, 1, directory=tmp_path)
        assert slots.try_take() is None  # held by another process
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        fd = slots.try_take()
        assert fd is not None
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


class SlowModel:
    """A model whose replies take ``seconds``; counts the replies streaming at once."""

    api_base = URL

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def model_max_len(self) -> int | None:
        return 4096

    def stream_chat(self, messages: Any, tools: Any = None) -> Iterator[Any]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield TextDelta("hi")
            time.sleep(self.seconds)
            yield Finished("stop", "hi", ())
        finally:
            with self.lock:
                self.now -= 1


def test_threads_of_one_process_share_the_bound(tmp_path: Path) -> None:
    inner = SlowModel(0.15)
    models = [
        BoundedModel(inner, ModelSlots(URL, 2, directory=tmp_path, poll_s=0.01), wait_s=10)
        for _ in range(5)
    ]
    threads = [threading.Thread(target=lambda m=m: list(m.stream_chat([]))) for m in models]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inner.most == 2
    assert time.monotonic() - started >= 0.15 * 3 * 0.9  # five replies, two at a time


def test_a_stream_closed_early_releases_its_slot(tmp_path: Path) -> None:
    slots = ModelSlots(URL, 1, directory=tmp_path)
    model = BoundedModel(SlowModel(0), slots, wait_s=1)
    stream = model.stream_chat([])
    assert isinstance(next(iter(stream)), TextDelta)
    assert slots.try_take() is None  # held while the reply streams
    stream.close()  # type: ignore[attr-defined]
    fd = slots.try_take()
    assert fd is not None
    os.close(fd)


def test_the_bound_must_be_at_least_one(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError):
        ModelSlots(URL, 0, directory=tmp_path)
