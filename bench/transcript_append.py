"""Cost of one session-record append: the plain write oi used to do, the whole-line append
(fstat + last-byte check + flock + write), and the same with fsync (as the header and the end
event get). The figures decide which entries are fsync'ed (see orchestrator/transcript.py).

A typical session writes ~6 entries per block (proposal, decision, result, usage, two messages)
and one header and one end event per run.

Usage: python bench/transcript_append.py [--dir DIR] [--count N]
       (DIR defaults to a temporary directory under the data dir's filesystem, ~/.local/share)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.transcript import Transcript

PAYLOAD = {"role": "assistant", "content": "x" * 600}  # a middling entry, ~650 bytes


def timed(count: int, step: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def row(name: str, times: list[float]) -> str:
    times = sorted(times)
    p90 = times[int(len(times) * 0.9)]
    return f"{name:44s} median {statistics.median(times) * 1e6:8.1f} us   p90 {p90 * 1e6:8.1f} us"


def bench(directory: Path, count: int) -> list[str]:
    plain_path = directory / "plain.jsonl"
    fd = os.open(plain_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = (json.dumps({"t": 1.0, "type": "message", "message": PAYLOAD}) + "\n").encode()
    rows = [row("plain os.write (before)", timed(count, lambda: os.write(fd, line)))]
    os.close(fd)
    transcript = Transcript.open(directory / "whole.jsonl", margin=None)
    rows.append(
        row(
            "whole-line append, no fsync (most entries)",
            timed(count, lambda: transcript.append("message", message=PAYLOAD)),
        )
    )
    rows.append(
        row(
            "whole-line append + fsync (header, end)",
            timed(
                max(20, count // 10),
                lambda: transcript.append("event", event="end", status="finished", reason="b"),
            ),
        )
    )
    transcript.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    base = args.dir or Path.home() / ".local" / "share"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oi-bench-", dir=base) as tmp:
        print(f"records in {tmp}")
        for line in bench(Path(tmp), args.count):
            print(line)


if __name__ == "__main__":
    main()
