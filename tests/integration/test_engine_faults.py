"""The Docker engine failing under a block (issue: engine failures are infrastructure errors):
stopped from outside, restarted, in `oi run` and in `oi batch`. What a person sees: exit 1 and
one line saying the block's result is unknown; the model is never told a made-up exit code; a
batch task is an `error` (not a failure) and `--resume` runs it again.

The restart test stops the real dockerd and starts it again with the project's own setup
script (as CI starts it), then waits until it answers: the engine is restored in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.sandbox.health import PING_TIMEOUT_S, QUIET_PING_S
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI, pid_containers, run_oi

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "Here.\n\n```sh\necho started; sleep 600\n```\n"


def env_for(fake: FakeVllm, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OI_API_BASE": fake.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


def running_block(client: docker.DockerClient, pid: int, timeout: float = 60) -> str:
    """The running block container of an oi process (sandboxes have no oi.role), once its
    program has had a moment to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in pid_containers(client, pid):
            if container["State"] == "running" and "oi.role" not in container["Labels"]:
                time.sleep(1.5)
                return str(container["Id"])
        time.sleep(0.2)
    raise AssertionError(f"no running block of oi process {pid}")


def start_oi_run(workdir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [OI, "run", "sleep", "-y", "--no-pool", "--workdir", str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_block_stopped_from_outside_is_an_infrastructure_error(
    docker_client: docker.DockerClient, workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(Reply(text=SLEEPER), Reply(text="done"))
    proc = start_oi_run(workdir, env_for(fake_vllm, tmp_path))
    container = running_block(docker_client, proc.pid)
    docker_client.api.stop(container, timeout=1)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("oi: error:")]
    assert len(errors) == 1 and "stopped from outside oi" in errors[0], stderr
    assert "the block's result is unknown" in errors[0]
    assert len(fake_vllm.chat_requests) == 1  # the model was not told "exit 143"
    assert "Traceback" not in stderr


def test_a_block_that_signals_itself_is_its_own_result(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    """The positive control: `kill -TERM 1` (the container's init) from inside looks like a
    stop to the program, but it is the code's doing: the model hears exit 143."""
    block = "Here.\n\n```sh\necho started; kill -TERM 1; sleep 5\n```\n"
    fake_vllm.script(Reply(text=block), Reply(text="done"))
    proc = run_oi(
        "run", "x", "-y", "--no-pool", "--workdir", str(workdir), env=env_for(fake_vllm, tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert len(fake_vllm.chat_requests) == 2
    told = str(fake_vllm.chat_requests[1]["messages"][-1]["content"])
    assert "143" in told


@pytest.fixture
def restartable_engine() -> Iterator[None]:
    """Only where oi's setup script started dockerd itself (not under systemd)."""
    if os.geteuid() != 0 or Path("/run/systemd/system").is_dir():
        pytest.skip(
            "restarts dockerd the way scripts/ensure-docker.sh starts it (root, no systemd)"
        )
    try:
        yield
    finally:
        ensure = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-docker.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert ensure.returncode == 0, ensure.stderr


def restart_dockerd() -> None:
    pid = int(
        subprocess.run(
            ["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    os.kill(pid, 15)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-docker.sh")],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.mark.usefixtures("restartable_engine")
def test_dockerd_restarting_under_a_block_is_an_infrastructure_error(
    docker_client: docker.DockerClient, workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(Reply(text=SLEEPER), Reply(text="done"))
    proc = start_oi_run(workdir, env_for(fake_vllm, tmp_path))
    running_block(docker_client, proc.pid)
    restart_dockerd()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("oi: error:")]
    assert len(errors) == 1 and "Docker engine" in errors[0], stderr
    assert len(fake_vllm.chat_requests) == 1  # the model was not told a made-up exit code


def test_batch_records_an_engine_loss_as_an_error_and_resume_reruns_it(
    docker_client: docker.DockerClient, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text('tasks:\n  - id: t1\n    prompt: sleep\n    check: "true"\n')
    out = tmp_path / "out"
    env = env_for(fake_vllm, tmp_path)
    fake_vllm.script(Reply(text=SLEEPER), Reply(text="done"))
    proc = subprocess.Popen(
        [OI, "batch", str(tasks), "--out", str(out), "--no-pool"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    container = running_block(docker_client, proc.pid)
    docker_client.api.stop(container, timeout=1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout + stderr
    assert "1 error(s)" in stdout and "0 failed" in stdout, stdout
    assert "stopped from outside oi" in stdout

    fake_vllm.script(Reply(text="done"))
    again = run_oi("batch", str(tasks), "--out", str(out), "--resume", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 passed" in again.stdout


@pytest.mark.usefixtures("restartable_engine")
def test_a_frozen_engine_is_reported_within_its_bound(
    docker_client: docker.DockerClient, workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    """dockerd stopped (SIGSTOP) under a silent block: oi says so within QUIET_PING_S +
    PING_TIMEOUT_S of silence (it waited out the whole freeze before), exit 1."""
    fake_vllm.script(Reply(text=SLEEPER), Reply(text="done"))
    proc = start_oi_run(workdir, env_for(fake_vllm, tmp_path))
    running_block(docker_client, proc.pid)
    pid = int(
        subprocess.run(
            ["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    frozen_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        _, stderr = proc.communicate(timeout=QUIET_PING_S + PING_TIMEOUT_S + 20)
        took = time.monotonic() - frozen_at
    finally:
        os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 1, stderr
    assert "stopped answering" in stderr, stderr
    assert took < QUIET_PING_S + PING_TIMEOUT_S + 10, took
    assert len(fake_vllm.chat_requests) == 1
