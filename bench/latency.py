"""Per-block latency of the same trivial program, side by side in one run.

Rows, per isolation (runc, gVisor) and language: a bare host subprocess; oi's sandbox through
its Python API with the pool of pre-started containers and without it (a fresh hardened
container per block either way); and `docker run --rm` with the same image. Ratios are to the
bare subprocess, so the comparison holds on a noisy machine.

With the pool, every block takes a container that the pool started in the background after the
previous block (``pool_size`` 1, as by default): between timed blocks the bench waits, untimed,
until that refill is ready, as a model's next turn would. Back-to-back blocks, where the refill
is the bound, are measured separately as throughput (blocks per second) at concurrency 1 and 2,
with their median latency.

Usage: python bench/latency.py [--runs N] [--languages python,javascript,shell]
       [--isolations runc,gvisor] [--throughput-blocks N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.languages import Language
from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import state_key
from orchestrator.sandbox.spec import current_identity
from orchestrator.settings import Settings

PROGRAM = {
    Language.PYTHON: ("print(1)", ["python3", "-c", "print(1)"]),
    Language.JAVASCRIPT: ("console.log(1)", ["node", "-e", "console.log(1)"]),
    Language.SHELL: ("echo 1", ["bash", "-c", "echo 1"]),
}
AUTOGEN_MS = 57.0  # AutoGen's reused container, measured here (PRODUCT.md)


def real_binary(name: str) -> str | None:
    """The interpreter itself, not a version-manager shim (pyenv's shim adds ~80 ms)."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if "shims" not in p
    )
    return shutil.which(name, path=path)


def measure(
    fn: Callable[[], None], runs: int, warmup: int = 2, between: Callable[[], Any] | None = None
) -> list[float]:
    """Wall time of ``fn`` per call; ``between`` runs untimed before each call."""
    for _ in range(warmup):
        if between:
            between()
        fn()
    times = []
    for _ in range(runs):
        if between:
            between()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def throughput(fn: Callable[[], None], blocks: int, concurrency: int) -> tuple[float, float]:
    """(blocks per second, median seconds per block) running ``blocks`` back to back."""
    times: list[float] = []
    lock = threading.Lock()
    left = [blocks]

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            fn()
            with lock:
                times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return blocks / (time.perf_counter() - start), statistics.median(times)


@contextmanager
def sandbox(
    client: Any, workdir: Path, env_dir: Path | None = None, **overrides: Any
) -> Iterator[Sandbox]:
    config = sandbox_config(Settings(workdir=workdir, **overrides), Policy())
    if env_dir is not None:  # a session's environment: Python state and installs kept
        config = dataclasses.replace(
            config, env_dir=env_dir, state_key=state_key(env_dir.parent, "bench")
        )
    box = Sandbox(
        client,
        config,
        ImageCatalog(client),
        prepare_host(current_identity(workdir), config),
        session_id="bench",
    )
    try:
        yield box
    finally:
        box.close()


def oi_block(box: Sandbox, language: Language, code: str) -> Callable[[], None]:
    def run() -> None:
        result = box.run(language, code)
        assert result.exit_code == 0 and result.stdout == "1\n", result

    return run


def refilled(box: Sandbox, language: Language) -> Callable[[], None]:
    """Untimed, between blocks: the pool's background refill has a container ready."""
    spec = box.spec_for(language)

    def wait() -> None:
        box.warm(language)
        assert box.pool is not None
        if not box.pool.wait_ready(spec, 60):
            raise RuntimeError(f"the pool did not refill {language.value}")

    return wait


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--languages", default="python,javascript,shell")
    parser.add_argument("--isolations", default="runc,gvisor")
    parser.add_argument("--throughput-blocks", type=int, default=40, help="0 skips them")
    args = parser.parse_args()

    client = connect()
    workdir = Path(tempfile.mkdtemp(prefix="oi-bench-"))
    catalog = ImageCatalog(client)
    languages = [Language(name) for name in args.languages.split(",")]

    rows: list[tuple[str, str, str, float, float]] = []
    bare_ms: dict[Language, float] = {}
    for language in languages:
        binary = real_binary(PROGRAM[language][1][0])
        argv = [binary or "false", *PROGRAM[language][1][1:]]
        if binary:
            bare = statistics.median(
                measure(
                    lambda argv=argv: subprocess.run(argv, check=True, capture_output=True),
                    args.runs,
                )
            )
        else:
            bare = float("nan")
        bare_ms[language] = bare

    for isolation in args.isolations.split(","):
        runtime = ["--runtime", "runsc"] if isolation == "gvisor" else []
        for language in languages:
            code, argv = PROGRAM[language]
            image = catalog.resolve(language).tag
            base = bare_ms[language]
            rows.append((isolation, language.value, "bare subprocess", base, 1.0))
            with sandbox(client, workdir, isolation=isolation, pool=True) as box:
                median = statistics.median(
                    measure(
                        oi_block(box, language, code), args.runs, between=refilled(box, language)
                    )
                )
            rows.append((isolation, language.value, "oi (pool)", median, median / base))
            env = Path(tempfile.mkdtemp(prefix="oi-bench-env-")) / "env"
            with sandbox(client, workdir, env_dir=env, isolation=isolation, pool=True) as box:
                median = statistics.median(
                    measure(
                        oi_block(box, language, code), args.runs, between=refilled(box, language)
                    )
                )
            shutil.rmtree(env.parent, ignore_errors=True)
            label = "oi (pool, env+state)"
            rows.append((isolation, language.value, label, median, median / base))
            with sandbox(client, workdir, isolation=isolation, pool=False) as box:
                median = statistics.median(measure(oi_block(box, language, code), args.runs))
            rows.append((isolation, language.value, "oi (no pool)", median, median / base))

            def docker_run(
                argv: list[str] = argv, image: str = image, runtime: list[str] = runtime
            ) -> None:
                subprocess.run(
                    ["docker", "run", "--rm", "--network", "none", *runtime, image, *argv],
                    check=True,
                    capture_output=True,
                )

            median = statistics.median(measure(docker_run, args.runs))
            rows.append((isolation, language.value, "docker run --rm", median, median / base))

    print(f"median per-block latency, {args.runs} runs each (after 2 warm-up runs)")
    print(f"{'isolation':<10} {'language':<11} {'runner':<21} {'median ms':>10} {'x bare':>8}")
    for isolation, language_name, label, median, ratio in rows:
        print(
            f"{isolation:<10} {language_name:<11} {label:<21} {median * 1000:>10.1f} {ratio:>8.2f}"
        )

    if args.throughput_blocks > 0:  # 0 skips the throughput rows
        print()
        print(
            f"back-to-back python blocks, {args.throughput_blocks} per row (refill in background)"
        )
        print(f"{'isolation':<10} {'runner':<22} {'conc':>4} {'blocks/s':>9} {'median ms':>10}")
        code = PROGRAM[Language.PYTHON][0]
        for isolation in args.isolations.split(","):
            for label, overrides in (
                ("oi (pool, size 1)", {"pool": True}),
                ("oi (pool, size 2)", {"pool": True, "pool_size": 2}),
                ("oi (no pool)", {"pool": False}),
            ):
                for concurrency in (1, 2):
                    with sandbox(client, workdir, isolation=isolation, **overrides) as box:
                        block = oi_block(box, Language.PYTHON, code)
                        if box.pool is not None:
                            refilled(box, Language.PYTHON)()
                        block()  # warm the connection and the pool's threads
                        rate, median = throughput(block, args.throughput_blocks, concurrency)
                    print(
                        f"{isolation:<10} {label:<22} {concurrency:>4} {rate:>9.1f} "
                        f"{median * 1000:>10.1f}"
                    )

    python_rows = {
        label: (median, ratio)
        for iso, lang, label, median, ratio in rows
        if lang == "python" and iso == "runc"
    }
    if "oi (pool)" in python_rows:
        median, ratio = python_rows["oi (pool)"]
        verdict = "meets" if ratio <= 1.3 and median * 1000 < AUTOGEN_MS else "misses"
        print()
        print(
            f"target: oi with the pool within 1.3x of bare and below AutoGen's {AUTOGEN_MS:.0f} ms "
            f"(python, runc): {verdict}"
        )
        print(f"pool/bare median ratio (python): {ratio:.2f}")
    if "oi (pool, env+state)" in python_rows:
        print(
            f"pool+state/bare median ratio (python): {python_rows['oi (pool, env+state)'][1]:.2f}"
        )
    sys.stdout.flush()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
