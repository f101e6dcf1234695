"""oi serve under load, on loopback only. Two measurements:

1. The server's own cost per event: a session whose loop yields N text events (no model, no
   sandbox) as fast as it can (throughput: time per event, client included: it runs in the
   same process) and 1 ms apart (latency), served by the real app in uvicorn; each event
   carries the time it was yielded, so the client sees the delay from the loop's yield to its
   own read (the turn thread, the subscriber queue, SSE framing, uvicorn, loopback TCP).
2. 50 concurrent SSE sessions against a real ``oi serve`` process with the fake vLLM: each
   model token is stamped when the fake writes it and when the client reads it as an event;
   p50/p99 of that delay, and the server process's peak memory (VmHWM).

Bounded: N events, 50 sessions x TOKENS tokens, 20 ms apart; a few seconds each.
Usage: python bench/serve_load.py [--events N] [--sessions 50] [--tokens 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.fake_vllm as fake_module
from orchestrator.events import ModelText, SessionEnded
from orchestrator.loading import Loaded
from orchestrator.policy import Policy
from orchestrator.server.app import create_app
from orchestrator.server.hub import Hub
from orchestrator.server.users import UserLimits, Users, from_env_token
from orchestrator.settings import Settings
from tests.fake_vllm import FakeVllm, Reply
from tests.server_fixtures import free_port, start_server, stop_server

TOKEN = "bench-token-" + "x" * 20


class _StampingSession:
    """Yields ``count`` text events carrying the time they were yielded (ns)."""

    def __init__(self, count: int, gap_s: float) -> None:
        self.count = count
        self.gap_s = gap_s
        self.interrupt_reason = ""
        self.totals = type("T", (), {"prompt_tokens": 0, "completion_tokens": 0})()

    def send(self, _text: str) -> Iterator[Any]:
        for _ in range(self.count):
            if self.gap_s:
                time.sleep(self.gap_s)
            yield ModelText(str(time.perf_counter_ns()))
        yield SessionEnded("finished", "done", 1, 0, 0)
        return "finished"


class _Opened:
    def __init__(self, count: int, gap_s: float) -> None:
        self.session = _StampingSession(count, gap_s)

    def close(self) -> None:
        pass


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def per_event_cost(count: int, gap_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = Loaded(Settings(workdir=Path(tmp), data_dir=Path(tmp) / "d"), Policy())

        def opener(*_args: Any, wrap_runner: Any, **_kw: Any) -> Any:
            wrap_runner(None)  # no sandbox: this session never runs a block
            return _Opened(count, gap_s)

        hub = Hub(loaded, Path(tmp), opener=opener)
        users: Users = from_env_token(TOKEN, UserLimits())
        port = free_port()
        config = uvicorn.Config(
            create_app(hub, users, auto_run=True), port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            sid = requests.post(url + "/api/sessions", headers=headers, json={}).json()["id"]
            delays: list[float] = []
            started = time.perf_counter()
            with requests.post(
                f"{url}/api/sessions/{sid}/messages",
                headers=headers,
                json={"text": "go"},
                stream=True,
            ) as reply:
                for raw in reply.iter_lines():
                    if raw.startswith(b'data: {"event": "model_text"'):
                        event = json.loads(raw[6:])
                        delays.append((time.perf_counter_ns() - int(event["text"])) / 1e6)
            wall = time.perf_counter() - started
        finally:
            server.should_exit = True
            thread.join(10)
    return {
        "events": len(delays),
        "events_per_s": round(len(delays) / wall),
        "wall_us_per_event": round(wall / len(delays) * 1e6, 1),
        "yield_to_client_ms_p50": round(statistics.median(delays), 3),
        "yield_to_client_ms_p99": round(percentile(delays, 0.99), 3),
    }


def concurrent_sessions(sessions: int, tokens: int) -> dict[str, Any]:
    sent: dict[str, float] = {}
    original = fake_module._Handler._write_chunk

    def stamping(handler: Any, text: Any) -> None:
        # stamped just before the bytes go out (after the fake's pause between tokens)
        if isinstance(text, str) and text.startswith("data: {"):
            choices = json.loads(text[6:]).get("choices") or [{}]
            piece = choices[0].get("delta", {}).get("content")
            if piece:
                sent[piece] = time.time()
        original(handler, text)

    fake_module._Handler._write_chunk = stamping  # type: ignore[method-assign]

    def reply(request: dict[str, Any]) -> Reply:
        tag = str(request["messages"][-1]["content"])
        return Reply(chunks=[f"<{tag}:{k}>" for k in range(tokens)], chunk_delay_s=0.02)

    received: list[float] = []
    lock = threading.Lock()
    with FakeVllm() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.script(*[reply] * sessions)
        extra = ("--no-pool", "--user-sessions", str(sessions + 5))
        server = start_server(Path(tmp), fake.base_url, args=extra)
        try:
            ids = [server.new_session() for _ in range(sessions)]

            def run(number: int, sid: str) -> None:
                for event in server.events(sid, f"s{number}"):
                    if event["event"] == "model_text":
                        now = time.time()
                        with lock:
                            received.append((now - sent[event["text"]]) * 1000)

            threads = [threading.Thread(target=run, args=(n, s)) for n, s in enumerate(ids)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            wall = time.monotonic() - started
            status = Path(f"/proc/{server.proc.pid}/status").read_text()
            peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
            rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        finally:
            stop_server(server)
            fake_module._Handler._write_chunk = original  # type: ignore[method-assign]
    return {
        "sessions": sessions,
        "events": len(received),
        "wall_s": round(wall, 2),
        "token_to_client_ms_p50": round(statistics.median(received), 2),
        "token_to_client_ms_p99": round(percentile(received, 0.99), 2),
        "server_peak_rss": peak.split(":")[1].strip(),
        "server_rss_after": rss.split(":")[1].strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=60)
    args = parser.parse_args()
    print("per-event cost, flooded:", json.dumps(per_event_cost(args.events, 0.0)))
    print("per-event cost, 1 ms apart:", json.dumps(per_event_cost(1000, 0.001)))
    print("concurrent SSE:", json.dumps(concurrent_sessions(args.sessions, args.tokens)))


if __name__ == "__main__":
    main()
