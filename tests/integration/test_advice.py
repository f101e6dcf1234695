"""End to end through the real ``oi`` script, the fake vLLM over real HTTP and the real Docker
engine: standing instructions reach the model after oi's facts at a 4096-token context, a
project's instructions are named on the approval screen, instructions too large for the
context are refused before anything runs, and the bound on model requests in flight holds
across four oi processes and across the tasks of a batch."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI

SEED_ADVICE = (
    "Prefer pandas for data tasks, moviepy for video, selenium for browser control. "
    "Install missing packages with pip if needed."
)
FACTS = "Where your code runs:"
REMINDER = "Reminder from oi (the instructions above cannot change this):"


@pytest.fixture
def env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        **os.environ,
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "config.toml"),
        "OI_RUN_DIR": str(tmp_path / "run"),  # this test's own slot files
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


def oi(
    env: dict[str, str], cwd: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OI, *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fence(code: str) -> str:
    return f"Here is the code.\n\n```python\n{code}\n```\n"


def test_instructions_reach_the_model_after_oi_facts_at_4096(
    env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    with FakeVllm(max_model_len=4096) as fake:  # refuses a prompt over 4096 tokens
        env["OI_API_BASE"] = fake.base_url
        (tmp_path / "advice.md").write_text(SEED_ADVICE + "\n")
        Path(env["OI_CONFIG_FILE"]).write_text('instructions = "@advice.md"\n')
        (project / "oi.toml").write_text('instructions = "Keep answers short."\n')
        fake.script(
            Reply(text=fence("print('x' * 6000)")),  # a large output, trimmed to fit
            Reply(text="Done: printed the line."),
        )
        proc = oi(env, project, "run", "-y", "--no-pool", "print a long line")
    assert proc.returncode == 0, proc.stderr
    assert len(fake.chat_requests) == 2  # both fit the 4096-token context
    for request in fake.chat_requests:
        system = request["messages"][0]["content"]
        assert system.index(FACTS) < system.index(SEED_ADVICE)
        assert system.index(SEED_ADVICE) < system.index("Keep answers short.")
        assert system.rstrip().rsplit("\n\n", 1)[1].startswith(REMINDER)
        assert "there is no network" in system.rsplit("\n\n", 1)[1]


def test_a_project_files_instructions_are_named_on_the_approval_screen(
    env: dict[str, str], project: Path, fake_vllm: FakeVllm
) -> None:
    (project / "oi.toml").write_text('instructions = "Always write your files to /tmp."\n')
    fake_vllm.script(Reply(text=fence("print(1)")), Reply(text="All right, nothing ran."))
    env["COLUMNS"] = "500"  # one line each, however long the path
    proc = oi(env, project, "run", "--no-pool", "print one", stdin="n\n")
    assert proc.returncode == 0, proc.stderr
    notice = f"instructions from project {project / 'oi.toml'} are in force for this session"
    assert notice in proc.stderr
    assert proc.stderr.index(notice) < proc.stderr.index("block 1 · python")  # above the code
    assert proc.stderr.count(notice) == 1
    assert "cannot change the sandbox below" in proc.stderr
    # the user's own instructions are not announced
    (project / "oi.toml").unlink()
    fake_vllm.script(Reply(text=fence("print(1)")), Reply(text="ok"))
    proc = oi(env, project, "run", "--no-pool", "--instructions", "mine", "x", stdin="n\n")
    assert proc.returncode == 0 and "are in force" not in proc.stderr


def test_instructions_the_context_cannot_hold_are_refused_before_anything_runs(
    env: dict[str, str], project: Path
) -> None:
    with FakeVllm(max_model_len=4096) as fake:
        env["OI_API_BASE"] = fake.base_url
        proc = oi(env, project, "run", "-y", "--instructions", "y" * 3000, "hello")
    assert proc.returncode == 2, proc.stderr
    assert "the standing instructions (flag --instructions) take about" in proc.stderr
    assert "a context of 4096 tokens" in proc.stderr and "shorten them" in proc.stderr
    assert fake.chat_requests == []


def slow_reply() -> Reply:
    # about 2 s of streaming: long enough for four processes to overlap
    return Reply(text="finished " * 20, chunk_size=9, chunk_delay_s=0.1)


def run_four(env: dict[str, str], project: Path, bound: int) -> tuple[list[Any], float]:
    env = {**env, "OI_MAX_MODEL_REQUESTS": str(bound)}
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [OI, "run", "-y", "--no-pool", f"task {n}"],
            env=env,
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    return results, time.monotonic() - started


def test_four_processes_with_a_bound_of_two_never_have_more_in_flight(
    env: dict[str, str], project: Path, fake_vllm: FakeVllm
) -> None:
    fake_vllm.script(*[slow_reply() for _ in range(4)])
    results, _elapsed = run_four(env, project, 2)
    assert all(code == 0 for code, _out, _err in results), results
    assert len(fake_vllm.chat_requests) == 4
    assert fake_vllm.max_in_flight == 2  # reached, never passed
    told = [err for _code, _out, err in results if "waiting for a model request slot" in err]
    assert told, "a process that waited must say so"
    assert "OI_MAX_MODEL_REQUESTS" in told[0]


def test_the_control_without_a_tight_bound_overlaps_more(
    env: dict[str, str], project: Path, fake_vllm: FakeVllm
) -> None:
    """The fake does see more than two at once when the bound allows it (so the test above
    can fail)."""
    fake_vllm.script(*[slow_reply() for _ in range(4)])
    results, _elapsed = run_four(env, project, 4)
    assert all(code == 0 for code, _out, _err in results), results
    assert fake_vllm.max_in_flight >= 3


def test_a_batch_shares_the_bound_and_says_once_that_tasks_wait(
    env: dict[str, str], project: Path, fake_vllm: FakeVllm
) -> None:
    tasks = project / "tasks.yaml"
    tasks.write_text(
        "tasks:\n"
        + "".join(f"  - id: t{n}\n    prompt: task {n}\n" for n in range(4))
        + "  - id: with-instructions\n    prompt: task 4\n    instructions: Be brief.\n"
    )
    fake_vllm.script(*[slow_reply() for _ in range(5)])
    proc = oi(
        {**env, "OI_MAX_MODEL_REQUESTS": "2"},
        project,
        "batch",
        str(tasks),
        "--concurrency",
        "5",
        "--no-pool",
        "--out",
        str(project / "out"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fake_vllm.max_in_flight == 2
    assert proc.stderr.count("waiting for a model request slot") == 1
    systems = [r["messages"][0]["content"] for r in fake_vllm.chat_requests]
    briefed = [s for s in systems if "Be brief." in s]
    assert len(briefed) == 1 and "From the project's settings:\nBe brief." in briefed[0]


def test_doctor_reports_the_context_against_what_the_settings_need(
    env: dict[str, str], project: Path
) -> None:
    Path(env["OI_CONFIG_FILE"]).write_text(
        'instructions = "Prefer pandas."\n[profiles.data]\nmax_output = 4096\n'
    )
    env["COLUMNS"] = "300"
    with FakeVllm(max_model_len=4096) as fake:
        env["OI_API_BASE"] = fake.base_url
        default = oi(env, project, "doctor")
        data = oi(env, project, "doctor", "--profile", "data")
        huge = oi(env, project, "doctor", "--instructions", "z" * 3000)
    assert "context 4096 tokens" in default.stderr
    assert "warn context 4096 tokens for about" in default.stderr
    assert "block outputs will be cut to fit" in default.stderr
    assert "--max-output 8192" in default.stderr and "instructions ~" in default.stderr
    assert "ok   context 4096 tokens for about" in data.stderr  # 4 KiB of output fits
    assert "warn instructions: the standing instructions (flag --instructions)" in huge.stderr
