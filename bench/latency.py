"""Per-block latency of the same trivial program, side by side in one run.

Rows: a bare host subprocess, `docker run --rm` with the same image, and oi's sandbox through
its Python API (a fresh hardened container per block). Ratios are to the bare subprocess, so
the comparison holds on a noisy machine. Usage: python bench/latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.languages import Language
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.spec import current_identity
from orchestrator.settings import Settings

PROGRAM = {
    Language.PYTHON: ("print(1)", ["python3", "-c", "print(1)"]),
    Language.JAVASCRIPT: ("console.log(1)", ["node", "-e", "console.log(1)"]),
    Language.SHELL: ("echo 1", ["bash", "-c", "echo 1"]),
}


def real_binary(name: str) -> str | None:
    """The interpreter itself, not a version-manager shim (pyenv's shim adds ~80 ms)."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if "shims" not in p
    )
    return shutil.which(name, path=path)


def measure(fn: Callable[[], None], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--languages", default="python,javascript,shell")
    args = parser.parse_args()

    client = connect()
    workdir = Path(tempfile.mkdtemp(prefix="oi-bench-"))
    settings = Settings(workdir=workdir)
    catalog = ImageCatalog(client, settings)
    sandbox = Sandbox(client, settings, catalog, current_identity(workdir), session_id="bench")

    rows: list[tuple[str, str, float, float]] = []
    for name in args.languages.split(","):
        language = Language(name)
        code, argv = PROGRAM[language]
        binary = real_binary(argv[0])
        image = catalog.resolve(language).tag

        bare_argv = [binary or argv[0], *argv[1:]]

        def bare(argv: list[str] = bare_argv) -> None:
            subprocess.run(argv, check=True, capture_output=True)

        def docker_run(argv: list[str] = argv, image: str = image) -> None:
            subprocess.run(
                ["docker", "run", "--rm", "--network", "none", image, *argv],
                check=True,
                capture_output=True,
            )

        def oi_sandbox(code: str = code, language: Language = language) -> None:
            result = sandbox.run(language, code)
            assert result.exit_code == 0, result

        base = statistics.median(measure(bare, args.runs)) if binary else float("nan")
        rows.append((name, "bare subprocess", base, 1.0))
        for label, fn in (("docker run --rm", docker_run), ("oi (no pool)", oi_sandbox)):
            median = statistics.median(measure(fn, args.runs))
            rows.append((name, label, median, median / base))

    print(f"median per-block latency, {args.runs} runs each (after 2 warm-up runs)")
    print(f"{'language':<11} {'runner':<18} {'median ms':>10} {'x bare':>8}")
    for language_name, label, median, ratio in rows:
        print(f"{language_name:<11} {label:<18} {median * 1000:>10.1f} {ratio:>8.2f}")
    python_rows = {label: ratio for lang, label, _, ratio in rows if lang == "python"}
    if "oi (no pool)" in python_rows:
        print(f"oi/bare median ratio (python): {python_rows['oi (no pool)']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
