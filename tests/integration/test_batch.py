"""End to end: `oi batch` through the CLI, the fake vLLM over real HTTP, the real Docker engine.

One fake server answers every task: ``route`` picks each task's script by the task id that
starts its prompt, and the step by how many replies the conversation already holds, so tasks
running concurrently get their own conversations.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pexpect
import pytest

from tests.fake_vllm import ErrorReply, FakeVllm, Reply
from tests.sandbox_fixtures import OI

Script = list[str] | Callable[[dict[str, Any]], Reply]


def fence(language: str, code: str) -> str:
    return f"Here is the code.\n\n```{language}\n{code}\n```\n"


def route(scripts: dict[str, Script]) -> Callable[[dict[str, Any]], Reply]:
    """A reply for any task: its script's next step (the last step repeats)."""

    def reply(body: dict[str, Any]) -> Reply:
        task = next(m["content"] for m in body["messages"] if m["role"] == "user")
        script = scripts[task.split(":", 1)[0]]
        if callable(script):
            return script(body)
        step = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return Reply(text=script[min(step, len(script) - 1)])

    return reply


def server_error(body: dict[str, Any]) -> Reply:
    return Reply(error=ErrorReply(500, "model crashed", "InternalServerError"))


@pytest.fixture
def batch_env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        **os.environ,
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


def oi_batch(
    env: dict[str, str], *args: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `oi batch`; returns the finished process and its pid (containers are labelled
    with it)."""
    proc = subprocess.Popen(
        [OI, "batch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def containers_of(client: docker.DockerClient, pid: int) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"oi.pid={pid}"})


def assert_no_containers(client: docker.DockerClient, pid: int) -> None:
    leftovers = containers_of(client, pid)
    for container in leftovers:
        client.api.remove_container(container["Id"], force=True)
    assert not leftovers, f"containers of oi batch (pid {pid}) left behind"


def junit_cases(path: Path) -> tuple[ET.Element, dict[str, ET.Element]]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    return root, {case.get("name", ""): case for case in suite.findall("testcase")}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_private_reports(out: Path, *, tasks: list[str], copies: list[Path]) -> None:
    """Reports hold block output (which may print secrets the block could read): each file
    0600, in 0700 folders (--out and each task's folder), and the --junit/--json copies 0600.
    A task's workdir copy is the task's own files, not a report."""
    wrong = {}
    for folder in [out, *(out / task for task in tasks)]:
        if mode(folder) != 0o700:
            wrong[str(folder)] = oct(mode(folder))
    files = [out / "summary.json", *copies]
    for task in tasks:
        files += [out / task / name for name in ("result.json", "log.txt", "session.jsonl")]
    missing = [str(path) for path in files if not path.exists()]
    assert not missing, f"batch reports missing: {missing}"
    for path in files:
        if mode(path) != 0o600:
            wrong[str(path)] = oct(mode(path))
    assert not wrong, f"batch reports readable by other users (want 0600 files in 0700): {wrong}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_batch_of_passing_failing_crashing_and_slow_tasks(
    tmp_path: Path,
    fake_vllm: FakeVllm,
    batch_env: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    canary = write(tmp_path / "canary.txt", "host secret\n")
    template = tmp_path / "tasks" / "fixtures" / "greeting"
    write(template / "input.txt", "hello from the template\n")
    (template / "escape").symlink_to(canary)
    tasks = write(
        tmp_path / "tasks" / "tasks.yaml",
        """
defaults:
  max_turns: 3
tasks:
  - id: passing
    prompt: "passing: copy input.txt to out.txt"
    workdir: fixtures/greeting
    check: grep -q 'hello from the template' out.txt && test -L escape
  - id: inline
    prompt: "inline: add one to the number in data/n.txt"
    files:
      data/n.txt: "41"
    check: grep -qx 42 answer.txt
  - id: failing-check
    prompt: "failing-check: make result.txt"
    check: test -f result.txt
  - id: crashing
    prompt: "crashing: anything"
  - id: slow
    prompt: "slow: take your time"
    budget: 2
  - id: never-done
    prompt: "never-done: loop"
    timeout: 1
    max_turns: 2
""",
    )
    fake_vllm.script(
        *[
            route(
                {
                    "passing": [
                        fence(
                            "sh", "cp input.txt out.txt; echo pwned > escape || true; cat out.txt"
                        ),
                        "Copied.",
                    ],
                    "inline": [
                        fence(
                            "python",
                            "n = int(open('data/n.txt').read())\n"
                            "open('answer.txt', 'w').write(str(n + 1))\nprint(n + 1)",
                        ),
                        "The answer is 42.",
                    ],
                    "failing-check": [fence("python", "print('I forgot the file')"), "Done."],
                    "crashing": server_error,
                    "slow": [fence("sh", "echo starting; sleep 60"), "Done."],
                    "never-done": [fence("sh", "sleep 5")],
                }
            )
        ]
        * 40
    )
    out = tmp_path / "out"
    junit = tmp_path / "report.xml"
    summary_file = tmp_path / "summary.json"
    started = time.monotonic()
    proc, pid = oi_batch(
        batch_env,
        str(tasks),
        "--concurrency",
        "3",
        "--out",
        str(out),
        "--junit",
        str(junit),
        "--json",
        str(summary_file),
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 40, "the slow task was not stopped at its budget"
    assert "auto-run is on" in proc.stderr and "sandbox" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "6 task(s): 2 passed, 3 failed, 1 error(s), 0 skipped" in proc.stdout

    root, cases = junit_cases(junit)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "3", "1")
    assert list(cases) == ["passing", "inline", "failing-check", "crashing", "slow", "never-done"]
    assert cases["passing"].find("failure") is None and cases["passing"].find("error") is None
    assert "hello from the template" in (cases["passing"].findtext("system-out") or "")
    failure = cases["failing-check"].find("failure")
    assert failure is not None and failure.get("message") == "check exited 1"
    assert "I forgot the file" in (failure.text or "")  # the tail of the output
    error = cases["crashing"].find("error")
    assert error is not None and "model crashed" in (error.get("message") or "")
    slow = cases["slow"].find("failure")
    assert slow is not None and "over its budget of 2 s" in (slow.get("message") or "")
    never = cases["never-done"].find("failure")
    assert never is not None and "max_turns" in (never.get("message") or "")

    summary = json.loads(summary_file.read_text())
    assert summary["counts"] == {"passed": 2, "failed": 3, "error": 1, "skipped": 0, "total": 6}
    assert summary == json.loads((out / "summary.json").read_text())

    # Each task: its own workdir copy, with its session record, log and result beside it.
    passing = out / "passing"
    assert (passing / "workdir" / "out.txt").read_text() == "hello from the template\n"
    assert (passing / "workdir" / "escape").is_symlink()
    assert canary.read_text() == "host secret\n"  # the sandbox could not write through it
    assert (out / "inline" / "workdir" / "answer.txt").read_text() == "42"
    records = [json.loads(line) for line in (passing / "session.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "session" and records[0]["batch"]["task_id"] == "passing"
    assert records[0]["settings"]["auto_run"] is True
    assert json.loads((passing / "result.json").read_text())["outcome"] == "passed"
    assert "## check: grep" in (passing / "log.txt").read_text()
    # The task's own limits reached its sandbox: its blocks hit the 1 s wall limit.
    never_records = (out / "never-done" / "session.jsonl").read_text().splitlines()
    results = [json.loads(r) for r in never_records if '"event": "result"' in r]
    assert results and all(r["timed_out"] for r in results)
    slow_records = [
        json.loads(r) for r in (out / "slow" / "session.jsonl").read_text().splitlines()
    ]
    assert slow_records[-1]["event"] == "end" and "over budget" in slow_records[-1]["reason"]
    assert_no_containers(docker_client, pid)
    assert_private_reports(out, tasks=list(cases), copies=[junit, summary_file])

    # A task's record replays without the model.
    replay = subprocess.run(
        [OI, "replay", str(passing / "session.jsonl"), "-y", "--workdir-from", str(template)],
        env=batch_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "1 of 1 block(s) match" in replay.stdout


def test_resume_keeps_finished_results_and_reruns_errors_and_changed_tasks(
    tmp_path: Path, fake_vllm: FakeVllm, batch_env: dict[str, str]
) -> None:
    tasks_text = """
- id: good
  prompt: "good: just answer"
- id: bad
  prompt: "bad: just answer"
  check: "false"
- id: flaky
  prompt: "flaky: just answer"
"""
    tasks = write(tmp_path / "tasks.yaml", tasks_text)
    out = tmp_path / "out"
    scripts: dict[str, Script] = {"good": ["Done."], "bad": ["Done."], "flaky": server_error}
    fake_vllm.script(*[route(scripts)] * 20)
    first, _ = oi_batch(batch_env, str(tasks), "--out", str(out))
    assert first.returncode == 1
    assert "1 passed, 1 failed, 1 error(s)" in first.stdout

    again, _ = oi_batch(batch_env, str(tasks), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr  # results are not clobbered

    scripts["flaky"] = ["Done."]
    asked_before = len(fake_vllm.chat_requests)
    resumed, _ = oi_batch(
        batch_env, str(tasks), "--out", str(out), "--resume", "--junit", str(tmp_path / "r.xml")
    )
    assert resumed.returncode == 1  # "bad" failed, and that result is kept
    assert "2 passed, 1 failed, 0 error(s)" in resumed.stdout
    asked = [r["messages"][1]["content"] for r in fake_vllm.chat_requests[asked_before:]]
    assert asked and all(prompt.startswith("flaky:") for prompt in asked)
    summary = {t["task_id"]: t for t in json.loads((out / "summary.json").read_text())["tasks"]}
    assert summary["good"]["resumed"] and summary["bad"]["resumed"]
    assert not summary["flaky"]["resumed"] and summary["flaky"]["outcome"] == "passed"
    _, cases = junit_cases(tmp_path / "r.xml")
    assert list(cases) == ["good", "bad", "flaky"]

    write(tmp_path / "tasks.yaml", tasks_text.replace('check: "false"', 'check: "true"'))
    fixed, _ = oi_batch(batch_env, str(tasks), "--out", str(out), "--resume")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr  # the changed task ran again
    assert "3 passed" in fixed.stdout


def test_shards_split_the_tasks_between_runners(
    tmp_path: Path, fake_vllm: FakeVllm, batch_env: dict[str, str]
) -> None:
    ids = [f"t{i}" for i in range(5)]
    lines = [json.dumps({"id": i, "prompt": f"{i}: answer"}) for i in ids]
    tasks = write(tmp_path / "tasks.jsonl", "\n".join(lines) + "\n")
    fake_vllm.script(*[route({key: ["Done."] for key in ids})] * 10)
    seen: list[str] = []
    for shard in ("1/2", "2/2"):
        report = tmp_path / f"shard-{shard[0]}.json"
        proc, _ = oi_batch(
            batch_env,
            str(tasks),
            "--shard",
            shard,
            "--out",
            str(tmp_path / f"out-{shard[0]}"),
            "--json",
            str(report),
            "-j",
            "2",
        )
        assert proc.returncode == 0, proc.stderr
        assert f"(shard {shard} of the 5 in the file)" in proc.stderr
        data = json.loads(report.read_text())
        assert data["shard"] == shard
        seen += [t["task_id"] for t in data["tasks"]]
    assert sorted(seen) == ids and len(seen) == len(set(seen))


def test_ctrl_c_stops_cleanly_and_writes_the_partial_report(
    tmp_path: Path,
    fake_vllm: FakeVllm,
    batch_env: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    tasks = write(
        tmp_path / "tasks.yaml",
        "- id: slow\n  prompt: 'slow: wait'\n- id: queued\n  prompt: 'queued: wait'\n",
    )
    fake_vllm.script(*[route({"slow": [fence("sh", "sleep 60")], "queued": ["Done."]})] * 5)
    junit = tmp_path / "report.xml"
    proc = subprocess.Popen(
        [OI, "batch", str(tasks), "--out", str(tmp_path / "out"), "--junit", str(junit)],
        env=batch_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(c["State"] == "running" for c in containers_of(docker_client, proc.pid)):
            assert time.monotonic() < deadline, "the block never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - stopped_at < 15
    assert proc.returncode == 3, err
    assert "interrupted: partial report" in out and "Traceback" not in err
    root, cases = junit_cases(junit)
    assert root.get("skipped") == "2"
    slow, queued = cases["slow"].find("skipped"), cases["queued"].find("skipped")
    assert slow is not None and "interrupted (Ctrl-C)" in (slow.get("message") or "")
    assert queued is not None and "not started" in (queued.get("message") or "")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert_no_containers(docker_client, proc.pid)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- id: a\n  prompt: p\n  memroy: 2g\n", "tasks.yaml:1 (task 'a'): unknown key 'memroy'"),
        (
            "- id: a\n  prompt: p\n  memory: lots\n",
            "tasks.yaml:1 (task 'a'): memory: cannot read size 'lots'",
        ),
        ("- id: a\n  prompt: p\n  workdir: nowhere\n", "workdir template"),
    ],
)
def test_a_bad_tasks_file_is_one_line_naming_where(
    tmp_path: Path, batch_env: dict[str, str], text: str, expected: str
) -> None:
    tasks = write(tmp_path / "tasks.yaml", text)
    proc, _ = oi_batch(batch_env, str(tasks), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_live_progress_on_a_terminal(
    tmp_path: Path, fake_vllm: FakeVllm, batch_env: dict[str, str]
) -> None:
    tasks = write(
        tmp_path / "tasks.yaml",
        "- id: quick\n  prompt: 'quick: go'\n  check: test -f x\n"
        "- id: second\n  prompt: 'second: go'\n",
    )
    fake_vllm.script(
        *[route({"quick": [fence("sh", "sleep 1; touch x"), "Done."], "second": ["Done."]})] * 6
    )
    env = {**batch_env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    child = pexpect.spawn(
        OI,
        ["batch", str(tasks), "--out", str(tmp_path / "out")],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    try:
        child.expect(r"\d/2 done · 0 failed · 1 running · 0:0\d elapsed · ETA")  # the live line
        child.expect("PASS")
        child.expect("2 task\\(s\\): 2 passed")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
