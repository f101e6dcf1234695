"""Checklist items on host files, shared hosts, runner logic and policy (21-23, 27, 33-35)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import docker
import pytest

from orchestrator.errors import RuntimeMissingError
from tests.fake_vllm import FakeVllm, Reply, ToolCallSpec
from tests.sandbox_fixtures import SandboxFactory, run_oi


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_21_symlink_made_in_the_sandbox_is_not_followed_on_the_host(
    workdir: Path, tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    canary = tmp_path / "host-canary.txt"
    canary.write_text("host secret, do not touch\n")
    before = sha(canary), sha(Path("/etc/passwd"))
    code = (
        f"ln -s /etc/passwd out; ln -s {canary} canary-link\n"
        "echo pwned >> out; echo pwned >> canary-link; echo pwned > out2 || true\nls -l\n"
    )
    fake_vllm.script(Reply(text=f"```sh\n{code}```"), Reply(text="Done."))
    env = {
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
    }
    proc = run_oi("run", "x", "-y", "--workdir", str(workdir), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "out").is_symlink()
    assert (sha(canary), sha(Path("/etc/passwd"))) == before
    # oi's own records of the session went to the data dir, not through the links.
    assert list((tmp_path / "data" / "oi" / "sessions").glob("*.jsonl"))


def test_23_a_fifo_where_oi_reads_does_not_hang_it(tmp_path: Path) -> None:
    sessions = tmp_path / "data" / "oi" / "sessions"
    sessions.mkdir(parents=True)
    os.mkfifo(sessions / "trap.jsonl")
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "OI_CONFIG_FILE": str(tmp_path / "n.toml")}
    listing = run_oi("sessions", "list", env=env, timeout=20)
    assert listing.returncode == 0
    shown = run_oi("sessions", "show", "trap", env=env, timeout=20)
    assert shown.returncode == 2 and "not a regular file" in shown.stderr


def test_27_users_cannot_reach_each_others_workdir_or_processes(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    for path, uid in ((alice_dir, 2001), (bob_dir, 2002)):
        path.mkdir()
        os.chown(path, uid, uid)
        path.chmod(0o700)
    (alice_dir / "diary.txt").write_text("alice's secret")
    os.chown(alice_dir / "diary.txt", 2001, 2001)
    (bob_dir / "notes.txt").write_text("bob's own secret")  # the search's positive control
    os.chown(bob_dir / "notes.txt", 2002, 2002)
    alice, bob = make_sandbox(workdir=alice_dir), make_sandbox(workdir=bob_dir)
    results: dict[str, object] = {}
    started = threading.Event()

    def run_alice() -> None:
        results["alice"] = alice.run(
            "sh", "echo up; sleep 4; echo alice-survived", on_output=lambda s, d: started.set()
        )

    worker = threading.Thread(target=run_alice)
    worker.start()
    assert started.wait(30)
    # Every filesystem mounted into bob's sandbox is searched (the image's own root cannot hold
    # what alice wrote after it was built): the whole of each, not a guess of paths.
    bob_result = bob.run(
        "sh",
        f"id -u; cat {alice_dir}/diary.txt 2>&1; "
        'for m in $(awk \'$2 != "/" && $2 !~ "^/(proc|sys|dev)" {print $2}\' /proc/mounts); '
        'do echo "SEARCHED $m"; grep -rs secret "$m"; done; '
        "kill -9 -1 2>&1; ps -eo user,args | grep -c sleep; true",
    )
    worker.join(60)
    alice_result = results["alice"]
    assert "alice's secret" not in bob_result.stdout
    assert "SEARCHED /workspace" in bob_result.stdout and "bob's own secret" in bob_result.stdout
    assert bob_result.stdout.splitlines()[0] == "2002"
    assert "alice-survived" in alice_result.stdout  # type: ignore[attr-defined]


def test_33_model_supplied_sandbox_options_are_ignored(
    workdir: Path, tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    arguments = {
        "language": "python",
        "code": (
            "import socket, os\n"
            "print('ifaces', sorted(n for _, n in socket.if_nameindex()))\n"
            "print('mounts', [l.split()[1] for l in open('/proc/mounts') if l.split()[1] in ('/host', '/workspace')])\n"
            "print('caps', [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')])\n"
            "open('proof.txt', 'w').write('here')\n"
        ),
        "image": "alpine:latest",
        "workdir": "/",
        "mounts": ["/:/host:rw", "/var/run/docker.sock:/var/run/docker.sock"],
        "runtime": "runc",
        "network": "open",
        "privileged": True,
        "environment": {"OI_API_KEY": "leak"},
    }
    fake_vllm.script(Reply(tool_calls=[ToolCallSpec("execute", arguments)]), Reply(text="Done."))
    env = {
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
    }
    proc = run_oi("run", "x", "-y", "--json", "--workdir", str(workdir), env=env)
    assert proc.returncode == 0, proc.stderr
    result = next(e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "result")
    out = result["result"]["stdout"]
    assert "ifaces ['lo']" in out
    assert "mounts ['/workspace']" in out
    assert "caps ['0000000000000000']" in out
    assert result["result"]["image"].startswith("oi-sandbox-python:")
    assert (workdir / "proof.txt").read_text() == "here"


def test_34_policy_caps_a_users_flags(workdir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('# test policy\nmax_memory = "512m"\nallowed_networks = ["none"]\n')
    env = {"OI_POLICY_FILE": str(policy), "OI_CONFIG_FILE": str(tmp_path / "none.toml")}
    refused = run_oi(
        "exec", "sh", "-", "--memory", "2g", "--workdir", str(workdir), env=env, input="true"
    )
    assert refused.returncode == 2
    assert "--memory 2 GiB is more than the admin policy allows" in refused.stderr
    assert f"{policy} line 2: max_memory" in refused.stderr
    refused = run_oi(
        "exec", "sh", "-", "--network", "open", "--workdir", str(workdir), env=env, input="true"
    )
    assert refused.returncode == 2 and "line 3: allowed_networks" in refused.stderr
    lowered = run_oi(
        "exec",
        "sh",
        "-",
        "--workdir",
        str(workdir),
        env=env,
        input="cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    )
    assert lowered.returncode == 0, lowered.stderr
    assert lowered.stdout.strip() == str(512 * 1024**2)
    shown = run_oi("policy", "show", env=env)
    assert "max_memory" in shown.stdout and "line 2" in shown.stdout


def test_35_gvisor_runs_under_gvisor(make_sandbox: SandboxFactory) -> None:
    result = make_sandbox(isolation="gvisor").run("sh", "dmesg 2>/dev/null | head -1")
    assert "Starting gVisor" in result.stdout


def test_35_gvisor_fails_closed_when_missing(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(isolation="gvisor", gvisor_runtime="runsc-not-installed")
    with pytest.raises(RuntimeMissingError, match="will not fall back"):
        sandbox.run("sh", "echo should not run")


def test_35_doctor_reports_gvisor(tmp_path: Path) -> None:
    proc = run_oi("doctor", env={"OI_ISOLATION": "gvisor", "OI_API_BASE": "http://127.0.0.1:9/v1"})
    # The whole line, mark included: the failures name the runtime too ("FAIL runtime runsc
    # (gVisor) not registered", "... is /usr/bin/runc, not gVisor's runsc").
    lines = [line.split() for line in proc.stderr.splitlines()]
    assert ["ok", "runtime", "runsc", "(gVisor)"] in lines, proc.stderr
    assert "not registered" not in proc.stderr and "not gVisor's runsc" not in proc.stderr


def test_audit_log_has_one_line_per_block_and_no_secrets(
    workdir: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    audit = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'audit_log = "{audit}"\n')
    env = {
        "OI_POLICY_FILE": str(policy),
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
        "OI_API_KEY": "canary-audit-key",
    }
    for code in ("echo first", "exit 3"):
        run_oi("exec", "sh", "-", "--workdir", str(workdir), env=env, input=code)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["event"] == "block" and first["outcome"] == "ok"
    assert second["outcome"] == "failed" and second["exit_code"] == 3
    for key in (
        "user",
        "uid",
        "session",
        "code_sha256",
        "language",
        "image",
        "memory",
        "cpus",
        "pids",
        "timeout_s",
        "network",
        "runtime",
        "duration_s",
    ):
        assert key in first, key
    assert first["code_sha256"] == hashlib.sha256(b"echo first").hexdigest()
    text = audit.read_text()
    assert "canary-audit-key" not in text and "echo first" not in text


def test_quota_is_shared_across_processes_and_a_block_waits_in_line(
    workdir: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    import subprocess
    import time

    from tests.sandbox_fixtures import OI, pid_containers

    policy = tmp_path / "policy.toml"
    policy.write_text("max_concurrent_per_user = 1\n")
    env = {**os.environ, "OI_POLICY_FILE": str(policy), "OI_CONFIG_FILE": str(tmp_path / "n.toml")}
    first = subprocess.Popen(
        [OI, "exec", "sh", "-", "--workdir", str(workdir)],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert first.stdin is not None
    first.stdin.write("sleep 3; echo first done")
    first.stdin.close()
    deadline = time.monotonic() + 30
    while not pid_containers(docker_client, first.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_containers(docker_client, first.pid)
    second = run_oi("exec", "sh", "-", "--workdir", str(workdir), env=env, input="echo second done")
    first.wait(timeout=60)
    assert first.stdout is not None
    first_out = first.stdout.read()
    assert first.returncode == 0 and "first done" in first_out
    assert second.returncode == 0 and second.stdout == "second done\n"
    assert "waiting for a sandbox slot: 1 of your 1 sandboxes are in use" in second.stderr
