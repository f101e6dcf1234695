"""A real ``oi serve`` (uvicorn, on a free loopback port) for tests, with users from a users
file and the fake vLLM as its model. Each server is stopped by PID, and every container its
sessions made (they carry the server's ``oi.pid`` label) must be gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from orchestrator.context import RESULT_PREFIX
from orchestrator.sandbox.docker import connect
from orchestrator.server.users import UserLimits, add_user
from tests.fake_vllm import Reply, ToolCallSpec
from tests.sandbox_fixtures import OI, pid_containers

SAY = "SAY "
SLOW = "SLOW "
RUN = "RUN "  # a task "RUN <language>\n<code>": the scripted model proposes exactly that block


def scripted_model(request: dict[str, Any]) -> Reply:
    """The fake model: a task "RUN lang\\ncode" gets that block as a tool call; a block's
    result gets a final answer quoting it."""
    last = request["messages"][-1]
    content = str(last.get("content") or "")
    if last["role"] == "tool" or content.startswith(RESULT_PREFIX):
        return Reply(text="Done: " + content[:60].replace("\n", " "))
    if content.startswith(RUN):
        language, _, code = content[len(RUN) :].partition("\n")
        call = ToolCallSpec("execute", {"language": language, "code": code})
        return Reply(text="Running it.", tool_calls=[call])
    if content.startswith(SAY):  # the model says exactly this
        return Reply(text=content[len(SAY) :], chunk_size=3)
    if content.startswith(SLOW):  # ... one character at a time, 50 ms apart
        return Reply(text=content[len(SLOW) :], chunk_size=1, chunk_delay_s=0.05)
    return Reply(text="Hello <b>there</b>.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OiServer:
    url: str
    proc: subprocess.Popen[bytes]
    workspaces: Path
    tokens: dict[str, str] = field(default_factory=dict)
    log: Path | None = None

    def headers(self, user: str | None = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}

    def call(self, method: str, path: str, user: str | None = "alice", **kw: Any) -> Any:
        headers = {**self.headers(user), **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def new_session(self, user: str = "alice") -> str:
        reply = self.call("POST", "/api/sessions", user, json={})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    def events(self, session_id: str, text: str, user: str = "alice") -> Iterator[dict[str, Any]]:
        """The SSE events of one message, as they come (the response stays open while the
        caller iterates; closing the generator closes the connection)."""
        reply = self.call(
            "POST", f"/api/sessions/{session_id}/messages", user, json={"text": text}, stream=True
        )
        assert reply.status_code == 200, reply.text
        try:
            for raw in reply.iter_lines():
                if raw.startswith(b"data: "):
                    yield json.loads(raw[6:])
        finally:
            reply.close()

    def approve(self, session_id: str, sha: str, user: str = "alice", **extra: Any) -> Any:
        body = {"action": "approve", "sha256": sha, **extra}
        return self.call("POST", f"/api/sessions/{session_id}/approval", user, json=body)

    def containers(self, client: Any) -> list[dict[str, Any]]:
        return pid_containers(client, self.proc.pid)


def start_server(
    tmp_path: Path,
    api_base: str,
    *,
    users: dict[str, UserLimits] | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    scheme: str = "http",
) -> OiServer:
    config = tmp_path / "config"
    config.mkdir(mode=0o700, exist_ok=True)
    users_file = config / "users.toml"
    tokens = {
        name: add_user(users_file, name, limits)
        for name, limits in (users or {"alice": UserLimits(), "bob": UserLimits()}).items()
    }
    workspaces = tmp_path / "workspaces"
    full_env = {
        **os.environ,
        "OI_API_BASE": api_base,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(config),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        **(env or {}),
    }
    full_env.pop("OI_SERVER_TOKEN", None)
    for _attempt in range(3):  # another process may take the free port before the server does
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        command = [OI, "serve", "--port", str(port), "--users", str(users_file)]
        command += ["--workspaces", str(workspaces), "--timeout", "90", *args]
        with log.open("wb") as sink:
            proc = subprocess.Popen(command, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
        server = OiServer(f"{scheme}://127.0.0.1:{port}", proc, workspaces, tokens, log)
        if _answers(server):
            return server
        stop_server(server)
        if "address already in use" not in log.read_text():
            break
    raise AssertionError(f"oi serve did not answer: {log.read_text()}")


def _answers(server: OiServer, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            reply = requests.get(server.url + "/healthz", timeout=1, verify=False)
            if reply.status_code == 200:
                return True
        except (requests.ConnectionError, requests.exceptions.SSLError):
            time.sleep(0.1)
    return False


def stop_server(server: OiServer) -> None:
    """Stop the server by its PID; every container it made must be gone (removed here if not,
    so one failure does not cascade)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
    client = connect()
    left = pid_containers(client, server.proc.pid)
    for container in left:
        client.api.remove_container(container["Id"], force=True)
    assert not left, f"oi serve left containers behind: {left}"


def wait_for(check: Any, timeout: float = 15.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
