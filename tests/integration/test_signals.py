"""Signals to a running oi, end to end (the real CLI, the fake vLLM, the real engine): SIGTERM
and SIGHUP stop it as Ctrl-C does, and a second Ctrl-C never skips the cleanup nor changes the
exit code. Every case ends with exit 3 (the README's "stopped"), no container of that oi left,
and the record closed with an end event.

Each test waits for the block to be running by a file the block itself writes first, never by
a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI

LOOP = "touch started\nwhile true; do sleep 0.1; done"
"""A shell block that says it runs (a file in the workdir), then never ends by itself."""

STOP_WITHIN_S = 15.0  # from the signal to oi's exit, containers removed (observed: 0.3-3 s)


def fence(code: str) -> str:
    return f"Here is the code.\n\n```sh\n{code}\n```\n"


@pytest.fixture
def oi_env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        **os.environ,
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


class Oi:
    """A running ``oi`` whose stderr is read line by line as it comes (to act on a line)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        stdin: str | None = None,
        *,
        keep_open: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            [OI, *args],
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            if keep_open:  # a person who has not typed anything more (yet)
                self.proc.stdin.flush()
            else:
                self.proc.stdin.close()
        self.pid = self.proc.pid
        self.err_lines: list[str] = []
        self.out = ""
        self._new_line = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_err, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.err_lines.append(line)
                self._new_line.notify_all()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()

    @property
    def err(self) -> str:
        return "".join(self.err_lines)

    def wait_for_file(self, path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, f"oi ended first ({self.proc.returncode}): {self.err}"
            assert time.monotonic() < deadline, f"{path.name} never appeared: {self.err}"
            time.sleep(0.02)

    def wait_for_line(self, text: str, timeout: float = 30) -> None:
        with self._new_line:
            found = self._new_line.wait_for(
                lambda: any(text in line for line in self.err_lines), timeout
            )
        assert found, f"oi never said {text!r}: {self.err}"

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def started(docker_client: docker.DockerClient) -> Iterator[list[Oi]]:
    """Every oi a test starts; afterwards one still running is killed and whatever containers
    it left are removed (also when the test failed before it checked)."""
    procs: list[Oi] = []
    yield procs
    for oi in procs:
        oi.kill()
        for container in containers(docker_client, f"oi.pid={oi.pid}"):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.api.remove_container(container["Id"], force=True)


def containers(client: docker.DockerClient, *labels: str) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": ["oi.managed", *labels]})


def assert_no_containers(client: docker.DockerClient, *labels: str) -> None:
    leftovers = containers(client, *labels)
    for container in leftovers:
        with contextlib.suppress(docker.errors.APIError):  # e.g. its removal is under way
            client.api.remove_container(container["Id"], force=True)
    assert not leftovers, f"containers with {labels} left behind: {leftovers}"


def records_of(data_home: Path) -> tuple[str, list[dict[str, Any]]]:
    (record,) = (data_home / "oi" / "sessions").glob("*.jsonl")
    return record.stem, [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_to_oi_run_kills_the_block_and_closes_the_record(
    sig: signal.Signals,
    workdir: Path,
    tmp_path: Path,
    fake_vllm: FakeVllm,
    oi_env: dict[str, str],
    docker_client: docker.DockerClient,
    started: list[Oi],
) -> None:
    fake_vllm.script(Reply(text=fence(LOOP)), Reply(text="never asked"))
    oi = Oi(["run", "loop forever", "-y", "--workdir", str(workdir)], oi_env)
    started.append(oi)
    oi.wait_for_file(workdir / "started")
    assert containers(docker_client, f"oi.pid={oi.pid}"), "the block runs in no container"
    sent = time.monotonic()
    oi.proc.send_signal(sig)
    code = oi.finish()
    took = time.monotonic() - sent
    assert code == 3, oi.err
    assert took < STOP_WITHIN_S, f"oi took {took:.1f} s to stop after {sig.name}"
    assert "Traceback" not in oi.err and "block 1 interrupted" in oi.err
    session, records = records_of(tmp_path / "data")
    assert_no_containers(docker_client, f"oi.pid={oi.pid}")
    assert_no_containers(docker_client, f"oi.session={session}")
    ends = [r for r in records if r.get("event") == "end"]
    assert [e["status"] for e in ends] == ["interrupted"]
    assert ends[0]["reason"].startswith(f"stopped by {sig.name}"), ends[0]  # not "Ctrl-C"
    results = [r for r in records if r.get("event") == "result"]
    assert [r["interrupted"] for r in results] == [True]
    assert len(fake_vllm.chat_requests) == 1  # the model was not asked to go on


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("when", ["block", "prompt"])
def test_a_stop_signal_ends_oi_chat_too(
    sig: signal.Signals,
    when: str,
    workdir: Path,
    fake_vllm: FakeVllm,
    oi_env: dict[str, str],
    docker_client: docker.DockerClient,
    started: list[Oi],
) -> None:
    """In chat a Ctrl-C during a block goes back to the prompt; SIGTERM and SIGHUP (a service
    manager, a closed terminal) end oi, with exit 3, whether a block runs or it waits."""
    fake_vllm.script(Reply(text=fence(LOOP)), Reply(text="never asked"))
    line = "loop forever\n" if when == "block" else ""
    oi = Oi(["chat", "-y", "--workdir", str(workdir)], oi_env, stdin=line, keep_open=True)
    started.append(oi)
    if when == "block":
        oi.wait_for_file(workdir / "started")
    else:
        oi.wait_for_line("type a task")
    oi.proc.send_signal(sig)
    code = oi.finish(timeout=STOP_WITHIN_S)
    assert code == 3, oi.err
    assert "Traceback" not in oi.err and "bye" not in oi.err
    assert_no_containers(docker_client, f"oi.pid={oi.pid}")


def test_sigterm_to_oi_batch_writes_the_reports_and_removes_its_containers(
    tmp_path: Path,
    fake_vllm: FakeVllm,
    oi_env: dict[str, str],
    docker_client: docker.DockerClient,
    started: list[Oi],
) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("- id: looping\n  prompt: 'loop forever'\n")
    fake_vllm.script(*[Reply(text=fence(LOOP))] * 3)
    out, junit = tmp_path / "out", tmp_path / "report.xml"
    oi = Oi(["batch", str(tasks), "--out", str(out), "--junit", str(junit)], oi_env)
    started.append(oi)
    oi.wait_for_file(out / "looping" / "workdir" / "started")
    sent = time.monotonic()
    oi.proc.send_signal(signal.SIGTERM)
    code = oi.finish()
    took = time.monotonic() - sent
    assert code == 3, oi.err
    assert took < STOP_WITHIN_S, f"oi batch took {took:.1f} s to stop after SIGTERM"
    assert "Traceback" not in oi.err and "interrupted: partial report" in oi.out
    assert_no_containers(docker_client, f"oi.pid={oi.pid}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    (task,) = summary["tasks"]
    assert task["task_id"] == "looping" and task["outcome"] == "skipped"
    (case,) = ET.parse(junit).getroot().iter("testcase")
    skipped = case.find("skipped")
    assert skipped is not None and "interrupted" in (skipped.get("message") or "")
    record = [json.loads(line) for line in (out / "looping" / "session.jsonl").open()]
    assert [r["status"] for r in record if r.get("event") == "end"] == ["interrupted"]


@pytest.mark.parametrize("apart_s", [0.0, 0.05, 0.15])
def test_two_quick_ctrl_c_to_oi_exec_still_remove_the_container(
    apart_s: float,
    workdir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    started: list[Oi],
) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    oi = Oi(["exec", "sh", "-", "--workdir", str(workdir)], env, stdin=LOOP + "\n")
    started.append(oi)
    oi.wait_for_file(workdir / "started")
    oi.proc.send_signal(signal.SIGINT)
    time.sleep(apart_s)  # the gap between the two presses is what is tested, not a wait
    oi.proc.send_signal(signal.SIGINT)
    code = oi.finish()
    assert code == 3, oi.err  # never 130 (a block's code), 1 (click's "Aborted!") or -2
    assert "Traceback" not in oi.err and "oi: interrupted" in oi.err
    assert_no_containers(docker_client, f"oi.pid={oi.pid}")


@pytest.mark.parametrize("command", ["exec", "run"])
def test_a_ctrl_c_while_oi_ends_does_not_change_its_exit_code(
    command: str,
    workdir: Path,
    fake_vllm: FakeVllm,
    oi_env: dict[str, str],
    docker_client: docker.DockerClient,
    started: list[Oi],
) -> None:
    """The second Ctrl-C comes once oi has said it was interrupted: the command has decided
    its exit code and is ending (the window where Python used to die of SIGINT: 130)."""
    if command == "exec":
        oi = Oi(["exec", "sh", "-", "--workdir", str(workdir)], oi_env, stdin=LOOP + "\n")
    else:
        fake_vllm.script(Reply(text=fence(LOOP)), Reply(text="never asked"))
        oi = Oi(["run", "loop forever", "-y", "--workdir", str(workdir)], oi_env)
    started.append(oi)
    oi.wait_for_file(workdir / "started")
    oi.proc.send_signal(signal.SIGINT)
    oi.wait_for_line("oi: interrupted")
    oi.proc.send_signal(signal.SIGINT)
    code = oi.finish()
    assert code == 3, oi.err
    assert "Traceback" not in oi.err
    assert_no_containers(docker_client, f"oi.pid={oi.pid}")
