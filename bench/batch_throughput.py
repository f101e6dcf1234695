"""Batch throughput: tasks per minute for a batch of trivial tasks at concurrency 1, 2 and 4.

Each task is one model turn proposing one shell block (``echo``), the block in a fresh
sandbox, a second model turn that finishes, and a shell check in a sandbox: so per task two
containers, two model requests, a workdir copy and a session record. The model is the fake
vLLM (tests/fake_vllm.py), in-process over real HTTP, answering at once: the figures are oi's
own overhead per task on this machine, not a model's speed.

Usage: python bench/batch_throughput.py [--tasks N] [--concurrency 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.batch import BatchRunner, TaskFinished, parse_tasks, plan_tasks
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.gc import sweep
from tests.fake_vllm import FakeVllm, Reply

BLOCK = 'Here.\n\n```sh\necho "task $((6 * 7))" > out.txt\n```\n'


def reply(body: dict[str, Any]) -> Reply:
    answered = any(m["role"] == "assistant" for m in body["messages"])
    return Reply(text="Done." if answered else BLOCK)


def run_batch(fake: FakeVllm, tasks: int, concurrency: int, root: Path) -> tuple[float, int]:
    """Seconds for the whole batch, and how many tasks passed."""
    text = "\n".join(
        f"- id: t{i}\n  prompt: 't{i}: write out.txt'\n  check: grep -q 42 out.txt"
        for i in range(tasks)
    )
    out = root / f"out-{concurrency}"
    specs = parse_tasks(text, "bench.yaml", base_dir=root)
    flags = {"api_base": fake.base_url, "max_turns": 4}
    planned = plan_tasks(
        specs,
        flags=flags,
        out_dir=out,
        default_budget_s=120,
        resume=False,
        source="bench.yaml",
        owner_reference=root,
    )
    out.mkdir()
    fake.script(*[reply] * (tasks * 2 + 10))
    runner = BatchRunner(planned, out_dir=out, concurrency=concurrency, docker_factory=connect)
    started = time.perf_counter()
    events = runner.run()
    passed = 0
    while True:
        try:
            event = next(events)
        except StopIteration:
            break
        if isinstance(event, TaskFinished):
            passed += event.result.outcome == "passed"
            if event.result.outcome != "passed":
                print(f"  {event.result.task_id}: {event.result.reason}", file=sys.stderr)
    return time.perf_counter() - started, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12, help="tasks per batch [12]")
    parser.add_argument("--concurrency", default="1,2,4", help="levels to measure [1,2,4]")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    os.environ.setdefault("OI_CONFIG_FILE", "/nonexistent/oi-bench.toml")  # defaults only
    sweep(connect())
    root = Path(tempfile.mkdtemp(prefix="oi-bench-batch-"))
    cores = os.cpu_count() or 1
    print(f"oi batch throughput: {args.tasks} trivial tasks per batch, fake vLLM in-process,")
    print(f"2 sandboxes (block + check) and 2 model requests per task; {cores} CPU core(s)\n")
    print(f"{'concurrency':>11}  {'batch time':>10}  {'tasks/min':>9}  {'s/task':>7}  passed")
    try:
        with FakeVllm() as fake:
            warmup = root / "warmup"  # images in the page cache, first imports done
            warmup.mkdir()
            run_batch(fake, 2, 1, warmup)
            baseline: float | None = None
            for level in levels:
                seconds, passed = run_batch(fake, args.tasks, level, root)
                rate = args.tasks / seconds * 60
                baseline = baseline or rate
                print(
                    f"{level:>11}  {seconds:>9.1f}s  {rate:>9.1f}  {seconds / args.tasks:>7.2f}"
                    f"  {passed}/{args.tasks}  ({rate / baseline:.2f}x)"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
