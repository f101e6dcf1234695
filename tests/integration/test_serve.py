"""`oi serve` end to end: a real uvicorn on loopback, the fake vLLM, the real Docker engine.

Checklist item 45: every request authenticated; one user never sees another's sessions or
files; approvals name the sha256 of the code the client showed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.server.users import UserLimits
from tests.fake_vllm import FakeVllm
from tests.sandbox_fixtures import OI, run_oi
from tests.server_fixtures import (
    RUN,
    OiServer,
    free_port,
    scripted_model,
    start_server,
    stop_server,
    wait_for,
)


@pytest.fixture(scope="module")
def model() -> Iterator[FakeVllm]:
    with FakeVllm() as fake:
        fake.script(*[scripted_model] * 400)
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model: FakeVllm) -> Iterator[OiServer]:
    limits = UserLimits(max_upload_bytes=4096)
    running = start_server(
        tmp_path_factory.mktemp("serve"),
        model.base_url,
        users={"alice": limits, "bob": limits},
        args=("--no-pool",),
    )
    yield running
    stop_server(running)


def until_approval(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    for event in events:
        if event["event"] == "code_proposed" and event["awaits_approval"]:
            return event
    raise AssertionError("no block awaited approval")


def rest(events: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(events)


# --- authentication and isolation (checklist 45) ------------------------------------------------

PROTECTED = [
    ("GET", "/api/whoami"),
    ("GET", "/api/sessions"),
    ("POST", "/api/sessions"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/mcp/"),
]


def test_no_token_or_a_wrong_token_gets_401(server: OiServer) -> None:
    for method, path in PROTECTED:
        for headers in ({}, {"Authorization": "Bearer oi_wrong"}, {"Authorization": "Basic x"}):
            reply = server.call(method, path, None, headers=headers, json={})
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert "bearer token" in reply.json()["detail"]
    # a body is never read before the token is checked, and is bounded after
    huge = b"x" * (5 << 20)
    assert server.call("POST", "/api/sessions", None, data=huge).status_code == 401
    assert server.call("POST", "/api/sessions", "alice", data=huge).status_code == 413
    # positive control: the same routes answer with a right token
    assert server.call("GET", "/api/whoami").json()["user"] == "alice"
    assert server.call("GET", "/v1/models", "bob").status_code == 200


def test_another_users_session_and_files_answer_404(server: OiServer) -> None:
    sid = server.new_session("alice")
    put = server.call("PUT", f"/api/sessions/{sid}/files", params={"path": "a.txt"}, data=b"A")
    assert put.status_code == 201, put.text
    base = f"/api/sessions/{sid}"
    attempts = [
        ("GET", base, {}),
        ("GET", base + "/files", {}),
        ("GET", base + "/files/content", {"params": {"path": "a.txt"}}),
        ("PUT", base + "/files", {"params": {"path": "b.txt"}, "data": b"B"}),
        ("GET", base + "/record", {}),
        ("POST", base + "/messages", {"json": {"text": "hi"}}),
        ("POST", base + "/approval", {"json": {"action": "deny"}}),
        ("POST", base + "/stop", {}),
        ("GET", base + "/events", {}),
        ("DELETE", base, {}),
    ]
    for method, path, kw in attempts:
        reply = server.call(method, path, "bob", **kw)
        assert reply.status_code == 404, (method, path, reply.text)
    assert sid not in {row["id"] for row in server.call("GET", "/api/sessions", "bob").json()}
    # positive control: alice still has it all
    assert server.call("GET", base + "/files/content", params={"path": "a.txt"}).content == b"A"
    assert sid in {row["id"] for row in server.call("GET", "/api/sessions").json()}
    assert not (Path(server.workspaces) / "bob" / "work" / sid).exists()


@pytest.mark.parametrize(
    "name",
    ["../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b", ".", "a//b", "x\x00y",
     "x\x1b[2J", ""],
)  # fmt: skip
def test_file_names_that_leave_the_workdir_are_refused(server: OiServer, name: str) -> None:
    sid = server.new_session()
    base = f"/api/sessions/{sid}/files"
    put = server.call("PUT", base, params={"path": name}, data=b"x")
    assert put.status_code in (400, 404, 422), put.text
    got = server.call("GET", base + "/content", params={"path": name})
    assert got.status_code in (400, 404, 422), got.text
    assert b"root:" not in got.content


def test_links_in_the_workdir_are_not_followed(server: OiServer, tmp_path: Path) -> None:
    sid = server.new_session()
    workdir = Path(server.call("GET", f"/api/sessions/{sid}").json()["workdir"])
    canary = tmp_path / "canary.txt"
    canary.write_text("host secret")
    (workdir / "out").symlink_to(canary)
    (workdir / "dir").symlink_to(tmp_path)
    base = f"/api/sessions/{sid}/files"
    for path in ("out", "dir/canary.txt"):
        assert server.call("GET", base + "/content", params={"path": path}).status_code == 404
    assert server.call("PUT", base, params={"path": "out"}, data=b"new").status_code == 201
    assert canary.read_text() == "host secret"  # the link was replaced, not written through
    assert server.call("PUT", base, params={"path": "dir/x"}, data=b"x").status_code == 404
    assert not (tmp_path / "x").exists()
    # positive control: nested names work
    assert server.call("PUT", base, params={"path": "sub/ok.txt"}, data=b"ok").status_code == 201
    assert server.call("GET", base + "/content", params={"path": "sub/ok.txt"}).content == b"ok"
    assert {"out", "sub/ok.txt"} <= {e["name"] for e in server.call("GET", base).json()}


def test_an_upload_over_the_limit_is_refused(server: OiServer) -> None:
    sid = server.new_session()
    base = f"/api/sessions/{sid}/files"
    big = server.call("PUT", base, params={"path": "big.bin"}, data=b"x" * 4097)
    assert big.status_code == 413, big.text

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"y" * 1000

    assert server.call("PUT", base, params={"path": "big2"}, data=chunked()).status_code == 413
    workdir = Path(server.call("GET", f"/api/sessions/{sid}").json()["workdir"])
    assert sorted(p.name for p in workdir.iterdir()) == []  # nothing left, no partial file
    ok = server.call("PUT", base, params={"path": "fits.bin"}, data=b"x" * 4096)
    assert ok.status_code == 201


# --- approvals ---------------------------------------------------------------------------------


def test_approval_names_the_sha256_shown_edit_and_deny(server: OiServer) -> None:
    sid = server.new_session()
    events = server.events(sid, f"{RUN}python\nprint('original')")
    proposal = until_approval(events)
    assert proposal["code"] == "print('original')"
    wrong = server.approve(sid, "0" * 64)
    assert wrong.status_code == 409 and proposal["sha256"] in wrong.json()["detail"]
    missing = server.call("POST", f"/api/sessions/{sid}/approval", json={"action": "approve"})
    assert missing.status_code == 409
    edited = "print('edited')"
    stale_edit = server.call(
        "POST",
        f"/api/sessions/{sid}/approval",
        json={"action": "edit", "sha256": "1" * 64, "code": edited},
    )
    assert stale_edit.status_code == 409
    edit = server.call(
        "POST",
        f"/api/sessions/{sid}/approval",
        json={"action": "edit", "sha256": proposal["sha256"], "code": edited},
    )
    assert edit.status_code == 200, edit.text
    again = until_approval(events)  # the edited code is shown again under its own hash
    assert again["code"] == edited and again["sha256"] != proposal["sha256"]
    assert server.approve(sid, proposal["sha256"]).status_code == 409  # the old hash: refused
    assert server.approve(sid, again["sha256"]).status_code == 200
    tail = rest(events)
    decisions = [e for e in tail if e["event"] == "decision"]
    assert decisions[-1]["decision"] == "run" and decisions[-1]["sha256"] == again["sha256"]
    result = next(e for e in tail if e["event"] == "result")
    assert result["sha256"] == again["sha256"] and "edited" in result["for_model"]
    assert "original" not in result["for_model"]
    # deny: nothing runs
    events = server.events(sid, f"{RUN}shell\necho should-not-run")
    until_approval(events)
    deny = server.call("POST", f"/api/sessions/{sid}/approval", json={"action": "deny"})
    assert deny.status_code == 200
    tail = rest(events)
    assert [e["decision"] for e in tail if e["event"] == "decision"] == ["declined"]
    assert not [e for e in tail if e["event"] in ("result", "output")]
    assert tail[-1]["event"] == "end"


def normalised(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without what differs between two runs (times, containers, the workdir, the
    session id, and the token counts, since the system prompt names the workdir)."""
    out = []
    for raw in events:
        event = raw
        if event["event"] in ("usage", "end"):
            event = {k: v for k, v in event.items() if "tokens" not in k}
        volatile = ("seconds", "duration_s", "result", "session_id")
        event = {k: v for k, v in event.items() if k not in volatile}
        if "sandbox" in event:
            event["sandbox"] = {k: v for k, v in event["sandbox"].items() if k != "workdir"}
        last = out[-1] if out else {}
        if (
            event["event"] == "output"
            and last.get("event") == "output"
            and (last["stream"] == event["stream"])
        ):  # how output is cut into events depends on timing, not on the adapter
            last["text"] += event["text"]
            continue
        out.append(event)
    return out


def test_sse_events_are_the_json_events_of_oi_run(server: OiServer, model: FakeVllm) -> None:
    task = f"{RUN}python\nprint(6 * 7)"
    sid = server.new_session()
    events = server.events(sid, task)
    proposal = until_approval(events)
    assert server.approve(sid, proposal["sha256"]).status_code == 200
    over_api = [proposal, *rest(events)]
    work = Path(server.workspaces).parent / "cli-work"
    work.mkdir()
    env = {
        "OI_API_BASE": model.base_url,
        "XDG_DATA_HOME": str(work / "data"),
        "OI_CONFIG_FILE": str(work / "none.toml"),
    }
    cli = run_oi("run", "--json", "--no-pool", "--timeout", "90", "--workdir", str(work),
                 task, env=env, input="y\n")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    from_cli = [json.loads(line) for line in cli.stdout.splitlines()]
    from_cli = from_cli[next(i for i, e in enumerate(from_cli) if e["event"] == "code_proposed") :]
    assert normalised(over_api) == normalised(from_cli)
    assert [e["event"] for e in over_api][-1] == "end"


# --- disconnects and quotas ---------------------------------------------------------------------


def test_a_client_that_disconnects_stops_its_block(server: OiServer, docker_client: Any) -> None:
    sid = server.new_session()
    events = server.events(sid, f"{RUN}shell\necho started; sleep 60")
    proposal = until_approval(events)
    assert server.approve(sid, proposal["sha256"]).status_code == 200
    for event in events:
        if event["event"] == "output" and "started" in event["text"]:
            break
    assert server.containers(docker_client), "the block's container should be running"
    started = time.monotonic()
    events.close()  # the client goes away mid-block
    assert wait_for(lambda: not server.containers(docker_client), timeout=15), "container left"
    gone_after = time.monotonic() - started
    assert gone_after < 10, gone_after
    state = wait_for(lambda: server.call("GET", f"/api/sessions/{sid}").json()["state"] == "idle")
    assert state
    record = server.call("GET", f"/api/sessions/{sid}/record").json()
    ends = [r for r in record if r.get("type") == "event" and r.get("event") == "end"]
    assert ends[-1]["status"] == "interrupted"
    assert "disconnected" in ends[-1]["reason"]


@pytest.fixture
def quota_server(tmp_path: Path, model: FakeVllm) -> Iterator[OiServer]:
    one = UserLimits(max_concurrent_blocks=1)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'audit_log = "{tmp_path / "audit.jsonl"}"\n')
    running = start_server(
        tmp_path,
        model.base_url,
        users={"alice": one, "bob": one},
        args=("--no-pool", "-y"),
        env={"OI_POLICY_FILE": str(policy)},
    )
    yield running
    stop_server(running)


def test_two_users_at_once_under_a_quota_of_one_block_each(quota_server: OiServer) -> None:
    server = quota_server
    runs = [("alice", server.new_session("alice")), ("alice", server.new_session("alice"))]
    runs.append(("bob", server.new_session("bob")))
    outcome: dict[int, dict[str, Any]] = {}

    def work(number: int, user: str, sid: str) -> None:
        events = list(server.events(sid, f"{RUN}shell\nsleep 3; echo done-{number}", user))
        results = [e for e in events if e["event"] == "result"]
        notices = [e["message"] for e in events if e["event"] == "notice"]
        outcome[number] = {"done": time.monotonic(), "results": results, "notices": notices}

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(n, u, s)) for n, (u, s) in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcome) == 3
    for number in range(3):
        assert outcome[number]["results"][0]["exit_code"] == 0
        assert f"done-{number}" in outcome[number]["results"][0]["for_model"]
    waited = [
        n for n in range(3) if any("waiting for a sandbox slot" in m for m in outcome[n]["notices"])
    ]
    assert waited in ([0], [1]), outcome  # one of alice's two waited; bob never did
    alice_last = max(outcome[0]["done"], outcome[1]["done"]) - started
    bob = outcome[2]["done"] - started
    assert alice_last >= 5.5, alice_last  # alice's blocks ran one after the other
    assert bob < alice_last - 2, (bob, alice_last)  # bob's ran beside alice's first
    audit = [json.loads(line) for line in (server.workspaces.parent / "audit.jsonl").open()]
    assert sorted(line["server_user"] for line in audit) == ["alice", "alice", "bob"]


# --- the OpenAI-compatible endpoint --------------------------------------------------------------


@pytest.fixture
def auto_server(tmp_path: Path, model: FakeVllm) -> Iterator[OiServer]:
    running = start_server(tmp_path, model.base_url, args=("--no-pool", "--auto-run"))
    yield running
    stop_server(running)


def test_openai_sdk_streams_a_completion_with_a_block(auto_server: OiServer) -> None:
    import openai

    client = openai.OpenAI(base_url=auto_server.url + "/v1", api_key=auto_server.tokens["alice"])
    assert [m.id for m in client.models.list()] == ["oi"]
    stream = client.chat.completions.create(
        model="oi",
        stream=True,
        user="conversation-1",
        messages=[
            {
                "role": "user",
                "content": f"{RUN}python\nopen('note.txt','w').write('kept'); print(6*7)",
            }
        ],
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    text = "".join(pieces)
    assert len(pieces) > 3  # streamed, not one piece
    assert "```python\nopen('note.txt'" in text and "exit code 0" in text and "42" in text
    assert "Done:" in text
    # the same conversation keeps its workdir; a plain (non-streaming) request works too
    again = client.chat.completions.create(
        model="oi",
        user="conversation-1",
        messages=[{"role": "user", "content": f"{RUN}shell\ncat note.txt"}],
    )
    assert "kept" in (again.choices[0].message.content or "")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auto_server.url + "/v1", api_key="oi_wrong").models.list()


def test_openai_endpoint_without_auto_run_shows_where_to_approve(server: OiServer) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.tokens["alice"])
    reply = client.chat.completions.create(
        model="oi", messages=[{"role": "user", "content": f"{RUN}shell\necho hi"}]
    )
    content = reply.choices[0].message.content or ""
    assert "waits for your approval" in content and "```shell\necho hi" in content
    assert "exit code" not in content  # nothing ran
    # the same conversation asks again: it is told the block still waits, nothing else runs
    again = client.chat.completions.create(
        model="oi",
        messages=[{"role": "user", "content": f"{RUN}shell\necho other"}],
        extra_headers={"X-Oi-Conversation": "waiting-1"},
    )
    first = client.chat.completions.create(
        model="oi",
        messages=[{"role": "user", "content": f"{RUN}shell\necho first"}],
        extra_headers={"X-Oi-Conversation": "waiting-1"},
    )
    assert "still waits for your approval" in (first.choices[0].message.content or "")
    assert "echo first" not in (first.choices[0].message.content or "")
    assert "waits for your approval" in (again.choices[0].message.content or "")


# --- MCP ---------------------------------------------------------------------------------------


def test_mcp_stdio_lists_tools_executes_and_reads_a_file(tmp_path: Path) -> None:
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    work = tmp_path / "work"
    work.mkdir()
    params = StdioServerParameters(
        command=OI,
        args=["mcp", "--workdir", str(work), "--no-pool"],
        env={"PATH": os.environ["PATH"], "XDG_DATA_HOME": str(tmp_path / "d"),
             "OI_CONFIG_FILE": str(tmp_path / "none.toml")},
    )  # fmt: skip

    async def session() -> dict[str, Any]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            ran = await client.call_tool(
                "execute",
                {"language": "python", "code": "open('out.txt','w').write('from mcp'); print(7)"},
            )
            failed = await client.call_tool("execute", {"language": "shell", "code": "exit 3"})
            read_back = await client.call_tool("read_file", {"path": "out.txt"})
            escape = await client.call_tool("read_file", {"path": "../../etc/passwd"})
            return {
                "tools": tools,
                "ran": ran.content[0].text,
                "failed": failed.content[0].text,
                "read": read_back.content[0].text,
                "escape": escape.content[0].text,
            }

    got = anyio.run(session)
    assert got["tools"] == ["execute", "list_files", "read_file", "write_file"]
    assert "exit code 0" in got["ran"] and "7" in got["ran"]
    assert "exit code 3" in got["failed"]
    assert got["read"] == "from mcp"
    assert "cannot read" in got["escape"] and "root:" not in got["escape"]
    assert (work / "out.txt").read_text() == "from mcp"


def test_mcp_over_http_needs_a_token_and_keeps_users_apart(server: OiServer) -> None:
    import anyio
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def call(user: str, tool: str, args: dict[str, Any]) -> str:
        headers = {"Authorization": f"Bearer {server.tokens[user]}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(server.url + "/mcp/", http_client=http) as (read, write, *_),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            result = await client.call_tool(tool, args)
            return str(result.content[0].text)

    wrote = anyio.run(call, "alice", "write_file", {"path": "secret.txt", "content": "alice's"})
    assert "wrote" in wrote
    assert "alice's" in anyio.run(
        call, "alice", "execute", {"language": "shell", "code": "cat secret.txt"}
    )
    assert "alice's" not in anyio.run(call, "bob", "read_file", {"path": "secret.txt"})
    assert server.call("POST", "/mcp/", None, json={}).status_code == 401


def test_tls_with_a_certificate_of_our_own(tmp_path: Path, model: FakeVllm) -> None:
    import subprocess

    import requests

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    running = start_server(
        tmp_path,
        model.base_url,
        args=("--no-pool", "--tls-cert", str(cert), "--tls-key", str(key)),
        scheme="https",
    )
    try:
        reply = requests.get(
            running.url + "/api/whoami", headers=running.headers("alice"), verify=str(cert)
        )
        assert reply.json()["user"] == "alice"
        with pytest.raises(requests.ConnectionError):
            requests.get(running.url.replace("https:", "http:") + "/healthz", timeout=2)
    finally:
        stop_server(running)


def test_mcp_execute_past_its_timeout_says_it_timed_out(tmp_path: Path) -> None:
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=OI,
        args=["mcp", "--workdir", str(tmp_path), "--no-pool", "--timeout", "2"],
        env={"PATH": os.environ["PATH"], "XDG_DATA_HOME": str(tmp_path / "d"),
             "OI_CONFIG_FILE": str(tmp_path / "none.toml")},
    )  # fmt: skip

    async def execute() -> str:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            ran = await client.call_tool(
                "execute", {"language": "shell", "code": "echo early; sleep 5; echo late"}
            )
            return str(ran.content[0].text)

    text = anyio.run(execute)
    assert "timed out after 2 s" in text and "early" in text, text
    assert "late" not in text and "exit code 0" not in text, text


# --- the OpenAPI page ---------------------------------------------------------------------------


def test_openapi_lists_the_session_routes_without_a_token(server: OiServer) -> None:
    reply = server.call("GET", "/openapi.json", None)
    assert reply.status_code == 200, reply.text
    paths = reply.json()["paths"]
    assert {"post", "get"} <= set(paths["/api/sessions"]), paths["/api/sessions"]
    assert "delete" in paths["/api/sessions/{session_id}"]
    assert "/api/sessions/{session_id}/approval" in paths


# --- sessions across a restart; delete ----------------------------------------------------------


def finished(events: Iterator[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The result the model was given for the one block of a message, and all its events."""
    got = list(events)
    assert got and got[-1]["event"] == "end", got[-1:]
    results = [e["for_model"] for e in got if e["event"] == "result"]
    assert len(results) == 1, got
    return results[0], got


def test_a_session_resumes_after_a_restart_and_delete_removes_all_of_it(
    tmp_path: Path, model: FakeVllm
) -> None:
    running = start_server(tmp_path, model.base_url, args=("--no-pool", "-y"))
    try:
        sid = running.new_session()
        result, _ = finished(running.events(sid, f"{RUN}python\nx = 41\nprint('set', x)"))
        assert "set 41" in result, result
    finally:
        stop_server(running)
    user = running.workspaces / "alice"
    workdir, record = user / "work" / sid, user / "data" / "sessions" / f"{sid}.jsonl"
    env = user / "data" / "envs" / f"session-{sid}"
    used = env.with_name(env.name + ".used")
    assert workdir.is_dir() and record.is_file() and env.is_dir() and used.is_file()
    # the environment of a session nobody used for 30 days goes when the server starts
    stale = user / "data" / "envs" / "session-20200101T000000-abcdef"
    stale.mkdir()
    stale_used = stale.with_name(stale.name + ".used")
    stale_used.touch()
    month_ago = time.time() - 30 * 86400
    os.utime(stale_used, (month_ago, month_ago))

    running = start_server(tmp_path, model.base_url, args=("--no-pool", "-y"))
    try:
        assert not stale.exists() and not stale_used.exists()
        assert (
            running.log is not None and "removed 1 session environment" in running.log.read_text()
        )
        assert env.is_dir()  # used today: kept
        listed = {row["id"]: row for row in running.call("GET", "/api/sessions").json()}
        assert listed[sid]["live"] is False  # only its record, until it is opened again
        assert running.call("GET", f"/api/sessions/{sid}").json()["live"] is True
        result, events = finished(running.events(sid, f"{RUN}python\nprint(x + 1)"))
        assert "42" in result, result  # the Python state of the first server's block came back
        assert events[-1]["status"] == "finished", events[-1]
        replies = [e for e in events if e["event"] == "model_reply"]
        assert replies and "Done:" in replies[-1]["text"], replies  # ... and the model answered
        history = [str(m.get("content")) for m in model.chat_requests[-1]["messages"]]
        assert any("x = 41" in text for text in history)  # it had the old conversation
        assert record.read_text().count('"type": "session"') == 2  # appended: one per opening

        deleted = running.call("DELETE", f"/api/sessions/{sid}")
        assert deleted.status_code == 204, deleted.text
        assert running.call("GET", f"/api/sessions/{sid}").status_code == 404
        assert sid not in {row["id"] for row in running.call("GET", "/api/sessions").json()}
        for path in (workdir, record, env, used):
            assert not path.exists(), f"{path} was left after DELETE"
    finally:
        stop_server(running)


# --- who may use a server ------------------------------------------------------------------------


def serve(tmp_path: Path, api_base: str, env: dict[str, str], *args: str) -> OiServer:
    """`oi serve ARGS` in ``tmp_path``: no --users unless ``args`` give one, and no default
    users file (an empty XDG config dir)."""
    config = tmp_path / "config"
    config.mkdir(mode=0o700)
    workspaces = tmp_path / "workspaces"
    full_env = {
        **os.environ,
        "OI_API_BASE": api_base,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(config),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        **env,
    }
    port = free_port()
    log = tmp_path / "server.log"
    command = [OI, "serve", "--port", str(port), "--workspaces", str(workspaces), "--no-pool"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*command, *args], env=full_env, stdout=sink, stderr=subprocess.STDOUT
        )
    running = OiServer(f"http://127.0.0.1:{port}", proc, workspaces, {}, log)

    def up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return requests.get(running.url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    if not wait_for(up, timeout=60) or proc.poll() is not None:
        stop_server(running)
        raise AssertionError(f"oi serve did not answer: {log.read_text()}")
    return running


def test_oi_server_token_alone_authenticates_one_user(tmp_path: Path, model: FakeVllm) -> None:
    token = "t0k3n-" + "x" * 30
    running = serve(tmp_path, model.base_url, {"OI_SERVER_TOKEN": token})
    running.tokens.update({"oi": token, "near": token[:-1] + "y"})
    try:
        whoami = running.call("GET", "/api/whoami", "oi")
        assert whoami.status_code == 200 and whoami.json()["user"] == "oi", whoami.text
        assert running.call("POST", "/api/sessions", "oi", json={}).status_code == 201
        for wrong in ("near", None):
            assert running.call("GET", "/api/whoami", wrong).status_code == 401, wrong
            assert running.call("POST", "/api/sessions", wrong, json={}).status_code == 401
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def bob_server(tmp_path_factory: pytest.TempPathFactory, model: FakeVllm) -> Iterator[OiServer]:
    """A server of the users file `oi users add bob --max-sessions 1` made (token in
    ``tokens["bob"]``, the command's output in ``tokens["printed"]``)."""
    root = tmp_path_factory.mktemp("users-add")
    users_file = root / "private" / "users.toml"
    added = run_oi("users", "add", "bob", "--users", str(users_file), "--max-sessions", "1")
    assert added.returncode == 0, added.stderr
    running = serve(root, model.base_url, {}, "--users", str(users_file))
    running.tokens.update({"bob": added.stdout.strip(), "printed": added.stdout + added.stderr})
    yield running
    stop_server(running)


def test_oi_users_add_prints_a_token_once_and_keeps_only_its_hash(bob_server: OiServer) -> None:
    token, printed = bob_server.tokens["bob"], bob_server.tokens["printed"]
    assert token.startswith("oi_") and len(token) > 40, printed
    assert printed.count(token) == 1 and "shown only now" in printed
    users_file = bob_server.workspaces.parent / "private" / "users.toml"
    stored = users_file.read_text()
    assert token not in stored and token[3:] not in stored
    assert f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"' in stored
    assert users_file.stat().st_mode & 0o777 == 0o600
    assert "'oi users add NAME'" in stored  # the file names the command that exists
    whoami = bob_server.call("GET", "/api/whoami", "bob")
    assert whoami.status_code == 200 and whoami.json()["user"] == "bob", whoami.text
    assert whoami.json()["limits"]["max_sessions"] == 1
    bob_server.tokens["stored"] = hashlib.sha256(token.encode()).hexdigest()
    assert bob_server.call("GET", "/api/whoami", "stored").status_code == 401  # the hash: no


def test_at_max_sessions_the_idlest_is_closed_and_a_working_one_is_kept(
    bob_server: OiServer,
) -> None:
    first = bob_server.new_session("bob")
    events = bob_server.events(first, f"{RUN}python\nprint('kept')", "bob")
    proposal = until_approval(events)  # the first session is working: it awaits approval
    refused = bob_server.call("POST", "/api/sessions", "bob", json={})
    assert refused.status_code == 429, refused.text
    assert "your limit is 1" in refused.json()["detail"], refused.text
    assert bob_server.approve(first, proposal["sha256"], "bob").status_code == 200
    assert any(e["event"] == "result" for e in rest(events))  # its turn ended: idle now

    def live() -> dict[str, bool]:
        rows = bob_server.call("GET", "/api/sessions", "bob").json()
        return {row["id"]: row["live"] for row in rows}

    second = bob_server.new_session("bob")  # room made by closing the idle one
    assert live() == {second: True, first: False}
    reopened = bob_server.call("GET", f"/api/sessions/{first}", "bob")  # its record resumes
    assert reopened.status_code == 200, reopened.text
    assert live() == {second: False, first: True}
