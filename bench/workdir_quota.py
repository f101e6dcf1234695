"""What the workdir quota costs and how tight it is, in one run.

1. Cost per block: the watcher's own work (baseline lookup, a statvfs at the start, the polling
   thread, a statvfs at the end) timed without Docker, and the same pooled ``print(1)`` block
   with and without the quota, interleaved so both see the same machine.
2. Overshoot: blocks that write as fast as they can (dd, python), stopped at a bound; how far
   past it the workdir got, and how long from the start to ``run()`` returning.
3. A file bomb of 300,000 tiny files against the default 100,000-file bound: how far past it,
   how long from passing the bound to the kill, and to ``run()`` returning.

Usage: python bench/workdir_quota.py [--runs N] [--isolations runc,gvisor] [--bound 64m]
       [--big] (also overshoot at the default 4 GiB bound: writes about 4 GiB)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.languages import Language
from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox import workdir_quota as wq
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.spec import current_identity
from orchestrator.settings import Settings
from orchestrator.units import parse_size

MiB = 1024**2
BOMBS = {  # files of 512 MiB, since --max-file-size (1 GiB) bounds each one
    "dd": (
        "sh",
        "i=0; while [ $i -lt {files} ]; do dd if=/dev/zero of=big$i bs=1M count=512 2>/dev/null;"
        " i=$((i+1)); done",
    ),
    "python": (
        "python",
        "chunk = b'x' * (1 << 20)\nfor i in range({files}):\n"
        "    with open(f'big{{i}}', 'wb') as f:\n"
        "        for _ in range(512):\n            f.write(chunk)\n",
    ),
}
FILE_BOMB = (
    "import os, time\nos.makedirs('d', exist_ok=True)\nstart = time.time()\n"
    "for i in range(300000):\n    open(f'd/{i}', 'w').close()\n"
    "    if i == {bound}: print('passed', time.time(), flush=True)\n"
)


class _NoContainer:
    """A BlockControl for timing the watcher alone."""

    def freeze(self) -> bool:
        return True

    def thaw(self) -> None: ...

    def kill(self) -> None: ...

    def held(self, devices: Collection[int]) -> wq.Usage:
        return wq.Usage()


def watcher_cost(workdir: Path, blocks: int = 2000) -> float:
    """Microseconds per block the watcher adds when the block stays under the bound."""
    quota = wq.WorkdirQuota(workdir, wq.WorkdirLimits(4 * 1024**3, 100_000))
    quota.prepare()
    quota.watch(_NoContainer()).result()  # the baseline, once per session
    start = time.perf_counter()
    for _ in range(blocks):
        watch = quota.watch(_NoContainer())
        watch.start()
        watch.stop()
        watch.result()
    return (time.perf_counter() - start) / blocks * 1e6


@contextmanager
def sandbox(client: Any, workdir: Path, quota: bool = True, **settings: Any) -> Iterator[Sandbox]:
    config = sandbox_config(Settings(workdir=workdir, **settings), Policy())
    if not quota:
        config = dataclasses.replace(config, workdir_max_bytes=None, workdir_max_files=None)
    box = Sandbox(
        client,
        config,
        ImageCatalog(client),
        prepare_host(current_identity(workdir), config),
        session_id="bench-wq",
    )
    try:
        yield box
    finally:
        box.close()


def pooled_block_ms(client: Any, workdir: Path, runs: int) -> tuple[float, float]:
    """Median ms of a pooled print(1), (with the quota, without), interleaved."""
    times: dict[bool, list[float]] = {True: [], False: []}
    with (
        sandbox(client, workdir, True, pool=True) as on,
        sandbox(client, workdir, False, pool=True) as off,
    ):
        boxes = {True: on, False: off}
        for i in range(runs + 2):
            for flag in (True, False):
                box = boxes[flag]
                spec = box.spec_for(Language.PYTHON)
                box.warm(Language.PYTHON)
                assert box.pool is not None and box.pool.wait_ready(spec, 60)
                start = time.perf_counter()
                result = box.run(Language.PYTHON, "print(1)")
                elapsed = time.perf_counter() - start
                assert result.stdout == "1\n", result
                if i >= 2:
                    times[flag].append(elapsed * 1000)
    return statistics.median(times[True]), statistics.median(times[False])


def fresh(parent: Path) -> Path:
    path = Path(tempfile.mkdtemp(dir=parent))
    path.chmod(0o777)
    return path


def overshoot(client: Any, parent: Path, isolation: str, name: str, bound: int) -> str:
    language, code = BOMBS[name]
    workdir = fresh(parent)
    try:
        files = bound // (512 * MiB) * 2 + 2
        with sandbox(
            client, workdir, isolation=isolation, workdir_max_bytes=bound, timeout=120
        ) as box:
            start = time.perf_counter()
            result = box.run(language, code.format(files=files))
            took = time.perf_counter() - start
        hit = result.workdir_overrun
        used = wq.walk(workdir).usage.bytes
        state = "stopped" if hit and hit.stopped else "NOT stopped"
        return (
            f"{isolation:<7} {name:<7} bound {bound / MiB:>6.0f} MiB: {state}, workdir "
            f"{used / MiB:7.1f} MiB (+{(used - bound) / MiB:.1f} MiB), run() {took:.2f} s"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def file_bomb(client: Any, parent: Path, isolation: str) -> str:
    workdir = fresh(parent)
    bound = 100_000
    try:
        with sandbox(client, workdir, isolation=isolation, timeout=120) as box:
            kill_at: list[float] = []
            original = wq.DockerBlockControl.kill

            def timed_kill(self: wq.DockerBlockControl) -> None:
                kill_at.append(time.time())
                original(self)

            wq.DockerBlockControl.kill = timed_kill  # type: ignore[method-assign]
            try:
                result = box.run(Language.PYTHON, FILE_BOMB.replace("{bound}", str(bound)))
            finally:
                wq.DockerBlockControl.kill = original  # type: ignore[method-assign]
            returned = time.time()
        passed = float(result.stdout.split()[1])
        files = wq.walk(workdir).usage.files
        state = "stopped" if result.workdir_overrun else "NOT stopped"
        return (
            f"{isolation:<7} 300,000 files, bound 100,000: {state} at "
            f"{files:,} entries (+{files - bound:,}); passed the bound -> kill "
            f"{(kill_at[0] - passed) * 1000:.0f} ms, -> run() returned {returned - passed:.2f} s"
        )
    finally:
        start = time.perf_counter()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"  (removing them took {time.perf_counter() - start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--isolations", default="runc,gvisor")
    parser.add_argument("--bound", default="64m")
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    client = connect()
    parent = Path(tempfile.mkdtemp(prefix="oi-bench-wq-"))
    try:
        print(f"watcher alone: {watcher_cost(fresh(parent)):.0f} us per block (empty workdir)")
        on, off = pooled_block_ms(client, fresh(parent), args.runs)
        print(
            f"pooled python print(1), runc, {args.runs} runs: with quota {on:.1f} ms, without "
            f"{off:.1f} ms (added {on - off:+.1f} ms)"
        )
        bounds = [parse_size(args.bound)] + ([4 * 1024**3] if args.big else [])
        for isolation in args.isolations.split(","):
            for bound in bounds:
                for name in BOMBS:
                    print(overshoot(client, parent, isolation, name, bound))
            print(file_bomb(client, parent, isolation))
    finally:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
