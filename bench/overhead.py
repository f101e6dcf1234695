"""Orchestration overhead of one agent turn, and the CLI's start-up time.

Overhead = wall time of a turn minus the model's time (as the session measured it) minus the
block's run time: the time spent in oi itself (extraction, approval, container hand-out,
transcript, feeding the result back). Driven through the real Session with the fake vLLM on
loopback and the real Docker engine, pool on. Usage: python bench/overhead.py [--turns N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.events import BlockResult, ModelReply
from orchestrator.loading import Loaded
from orchestrator.policy import Policy
from orchestrator.settings import Settings
from orchestrator.wiring import open_session
from tests.fake_vllm import FakeVllm, Reply

OI = str(Path(sys.executable).parent / "oi")


def turn_overheads(turns: int) -> tuple[list[float], list[float], list[float]]:
    overheads, models, blocks = [], [], []
    with FakeVllm() as fake, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            workdir=Path(tmp), api_base=fake.base_url, data_dir=Path(tmp) / "data", auto_run=True
        )
        opened = open_session(Loaded(settings, Policy()))
        session, sandbox = opened.session, opened.sandbox
        try:
            for i in range(turns + 2):
                fake.script(Reply(text=f"```python\nprint({i})\n```"), Reply(text="Done."))
                started = time.perf_counter()
                model_s = block_s = 0.0
                for event in session.send(f"print {i}"):
                    if isinstance(event, ModelReply):
                        model_s += event.seconds
                    elif isinstance(event, BlockResult):
                        block_s += event.duration_s
                total = time.perf_counter() - started
                if i >= 2:  # warm-up
                    overheads.append(total - model_s - block_s)
                    models.append(model_s)
                    blocks.append(block_s)
                sandbox.pool and sandbox.pool.wait_ready(
                    sandbox.spec_for(session._likely_language), 10
                )
        finally:
            opened.close()
    return overheads, models, blocks


def first_request_and_exit(runs: int) -> tuple[float, float]:
    """`oi run` with a model that answers at once without code: (median seconds from the
    command's start to its first request reaching the model server, median seconds from the
    final answer to the command's exit). The server's and this process's clocks are one
    (CLOCK_MONOTONIC)."""
    to_request, to_exit = [], []
    with (
        FakeVllm() as fake,
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory() as data,
    ):
        env = {
            **os.environ,
            "OI_API_BASE": fake.base_url,
            "XDG_DATA_HOME": data,
            "OI_CONFIG_FILE": f"{data}/none.toml",
        }
        for _ in range(runs + 1):
            fake.script(Reply(text="Done: nothing to run."))
            before = len(fake.requests)
            started = time.monotonic()
            subprocess.run(
                [OI, "run", "say done", "-y", "--workdir", tmp],
                env=env,
                check=True,
                capture_output=True,
            )
            ended = time.monotonic()
            chat = [r for r in fake.requests[before:] if r.path.endswith("/chat/completions")]
            to_request.append(chat[0].at - started)
            to_exit.append(ended - fake.replies_sent[-1])
    return statistics.median(to_request[1:]), statistics.median(to_exit[1:])


def startup(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=15)
    args = parser.parse_args()
    overheads, models, blocks = turn_overheads(args.turns)
    ms = lambda values: statistics.median(values) * 1000  # noqa: E731
    print(f"one agent turn (a code block + the final answer), {args.turns} turns, median:")
    print(f"  oi overhead          {ms(overheads):7.1f} ms")
    print(f"  model (fake vLLM)    {ms(models):7.1f} ms   (two requests)")
    print(f"  block in sandbox     {ms(blocks):7.1f} ms")
    bare = startup([sys.executable, "-c", "pass"], 10)
    version = startup([OI, "--version"], 10)
    helptext = startup([OI, "run", "--help"], 10)
    print("CLI start-up, median of 10:")
    print(f"  python -c pass       {bare * 1000:7.1f} ms")
    print(f"  oi --version         {version * 1000:7.1f} ms")
    print(f"  oi run --help        {helptext * 1000:7.1f} ms")
    first, leave = first_request_and_exit(10)
    print("oi run with a model that answers at once, median of 10 (targets 250 ms, 100 ms):")
    print(f"  start -> first model request   {first * 1000:7.1f} ms")
    print(f"  final answer -> exit           {leave * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
