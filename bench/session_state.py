"""What a session's memory costs (sandbox/session_env.py, sandbox-images/python/oi_state.py).

Rows, each through oi's sandbox API with a session environment, python under runc:
- a block that makes a 100 MB pandas DataFrame, and the next block that uses it: the state's
  save (at the end of the first) and restore (at the start of the second), from the blocks'
  own clocks, against the same blocks with ``python_state`` off;
- with ``--pip`` (needs PyPI through the allowlist proxy, the one outside traffic): the first
  ``pip install`` of a small package (six) in a shell block, and the import of it in the next
  Python block.

Usage: python bench/session_state.py [--runs N] [--pip]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import state_key
from orchestrator.sandbox.spec import current_identity
from orchestrator.settings import Settings

MAKE = (
    "import numpy as np, pandas as pd\n"
    "frame = pd.DataFrame(np.random.rand(1_562_500, 8))  # 12.5 M floats: 100 MB\n"
    "print('made', frame.memory_usage().sum() // 2**20, 'MiB')\n"
)
USE = "import time\nprint('rows', len(frame), 'at', time.time())\n"


def session(client: object, workdir: Path, env: Path, **settings: object) -> Sandbox:
    config = sandbox_config(Settings(workdir=workdir, pool=False, **settings), Policy())
    config = dataclasses.replace(
        config, env_dir=env, state_key=state_key(env.parent, "bench-state")
    )
    return Sandbox(
        client,  # type: ignore[arg-type]
        config,
        ImageCatalog(client),  # type: ignore[arg-type]
        prepare_host(current_identity(workdir), config),
        session_id="bench-state",
    )


def dataframe_rows(client: object, workdir: Path, runs: int) -> None:
    totals: dict[str, list[float]] = {"save (end of block 1)": [], "restore (block 2)": []}
    for _ in range(runs):
        env = Path(tempfile.mkdtemp(prefix="oi-bench-env-")) / "env"
        box = session(client, workdir, env)
        try:
            started = time.perf_counter()
            first = box.run("python", MAKE)
            first_s = time.perf_counter() - started
            assert first.exit_code == 0, first
            started = time.perf_counter()
            second = box.run("python", USE)
            second_s = time.perf_counter() - started
            assert second.exit_code == 0 and "rows" in second.stdout, second
        finally:
            box.close()
            shutil.rmtree(env.parent, ignore_errors=True)
        env = Path(tempfile.mkdtemp(prefix="oi-bench-env-")) / "env"
        plain = session(client, workdir, env, python_state=False)
        try:
            started = time.perf_counter()
            plain.run("python", MAKE)
            plain_first = time.perf_counter() - started
            started = time.perf_counter()
            plain.run("python", "import time\nprint(time.time())\n")
            plain_second = time.perf_counter() - started
        finally:
            plain.close()
            shutil.rmtree(env.parent, ignore_errors=True)
        totals["save (end of block 1)"].append(first_s - plain_first)
        totals["restore (block 2)"].append(second_s - plain_second)
    print(f"100 MB DataFrame kept across two python blocks (runc, no pool), {runs} runs")
    for name, values in totals.items():
        print(f"  {name:<24} median {statistics.median(values) * 1000:8.0f} ms")


def pip_rows(client: object, workdir: Path) -> None:
    env = Path(tempfile.mkdtemp(prefix="oi-bench-env-")) / "env"
    box = session(client, workdir, env, allow_hosts=["pypi"], timeout=300)
    try:
        started = time.perf_counter()
        install = box.run("sh", "pip install six==1.16.0 2>&1 | tail -n 1")
        install_s = time.perf_counter() - started
        started = time.perf_counter()
        use = box.run("python", "import six\nprint(six.__version__)")
        use_s = time.perf_counter() - started
    finally:
        box.close()
        shutil.rmtree(env.parent, ignore_errors=True)
    print("pip through the allowlist proxy (runc, no pool)")
    print(f"  first pip install six      {install_s * 1000:8.0f} ms  ({install.stdout.strip()})")
    print(f"  next block imports it      {use_s * 1000:8.0f} ms  ({use.stdout.strip()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pip", action="store_true", help="also time an install from PyPI")
    args = parser.parse_args()
    client = connect()
    workdir = Path(tempfile.mkdtemp(prefix="oi-bench-"))
    try:
        dataframe_rows(client, workdir, args.runs)
        if args.pip:
            pip_rows(client, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
