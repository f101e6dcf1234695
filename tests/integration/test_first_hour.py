"""The first hour of a new user (issue: diagnoses, help and the small frictions), through the
real `oi` script: what a person sees when something is not set up, and the help text."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pexpect

from tests.fake_vllm import ErrorReply, FakeVllm, Reply
from tests.sandbox_fixtures import OI, OtherUser, run_oi


def test_a_user_the_docker_socket_refuses_is_told_so_with_the_fix(oi_user: OtherUser) -> None:
    """The engine runs; the socket is root:docker 0660 and the user is in no group: that is
    permission denied, not "no engine answers" - in `oi exec`, `oi run` and `oi doctor`."""
    env = {"XDG_DATA_HOME": "/tmp", "OI_CONFIG_FILE": "/nonexistent/config.toml"}
    for args in (
        ("exec", "sh", "--workdir", "/tmp"),
        ("run", "x", "--workdir", "/tmp"),
        ("doctor",),
    ):
        proc = oi_user.oi(*args, env=env, input="true\n", cwd="/")
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, (args, text)
        assert "permission denied" in text and "docker.sock is root:docker 0660" in text, text
        assert "usermod -aG docker" in text, text
        assert "no Docker engine answers" not in text, text
        assert "Traceback" not in text


def test_the_engine_down_still_says_so(workdir: Path) -> None:
    """The other diagnosis stays: no socket at all is "no Docker engine answers"."""
    proc = run_oi(
        "exec",
        "sh",
        "--workdir",
        str(workdir),
        env={"DOCKER_HOST": "unix:///tmp/oi-no-docker.sock"},
        input="true\n",
    )
    assert proc.returncode == 1
    assert "no Docker engine answers" in proc.stderr and "permission denied" not in proc.stderr


def test_batch_says_the_budget_in_force_shows_a_failed_checks_output_and_replays_inline_files(
    tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "defaults:\n  budget: 2m\ntasks:\n"
        '  - id: inline\n    prompt: count\n    files: {data/n.txt: "3\\n"}\n'
        "    check: 'echo the check looked for 4 && grep -q 4 data/n.txt'\n"
    )
    block = "Reading it.\n\n```sh\ncat data/n.txt\n```\n"
    fake_vllm.script(Reply(text=block), Reply(text="done"))
    env = {"OI_API_BASE": fake_vllm.base_url, "XDG_DATA_HOME": str(tmp_path / "data")}
    out = tmp_path / "out"
    proc = run_oi("batch", str(tasks), "--out", str(out), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "budget 2:00 per task" in proc.stderr, proc.stderr  # not --budget's 15:00
    assert "the check looked for 4" in proc.stderr + proc.stdout  # the failed check's output

    replay = run_oi("replay", str(out / "inline" / "session.jsonl"), "--yes", env=env, cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "1 of 1 block(s) match" in replay.stdout


# --- helpers for the tests below ----------------------------------------------------------------


def model_env(tmp_path: Path, fake: FakeVllm | None = None) -> dict[str, str]:
    env = {
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        "OI_RETRY_ATTEMPTS": "1",  # a scripted 500 is not retried
        "COLUMNS": "200",  # `oi sessions list`: one table row per line
    }
    if fake is not None:
        env["OI_API_BASE"] = fake.base_url
    return env


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_of(stderr: str) -> str:
    """The id `oi run` names at its end."""
    found = re.search(r"session (\S+) \(oi sessions show \1\)", stderr)
    assert found, stderr
    return found.group(1)


def fence(language: str, code: str) -> str:
    return f"Here is the code.\n\n```{language}\n{code}\n```\n"


# --- 3: oi doctor checks the endpoint the user names ------------------------------------------


def test_doctor_checks_the_endpoint_and_model_given_as_flags(
    tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    env = model_env(tmp_path)  # no OI_API_BASE: only the flags point at the fake
    proc = run_oi("doctor", "--api-base", fake_vllm.base_url, "--model", "nope", env=env)
    assert proc.returncode == 1, proc.stderr  # no session could start
    assert f"model endpoint {fake_vllm.base_url} answers" in proc.stderr
    assert "warn model nope is not served there" in proc.stderr
    assert f"fix: use --model / OI_MODEL with one of: {fake_vllm.model}" in proc.stderr
    fixes = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("fix:")]
    assert len(fixes) == len(set(fixes)), fixes  # each fix once

    # A running server without /v1 in the URL answers 404: not a server to start.
    root = fake_vllm.base_url.removesuffix("/v1")
    proc = run_oi("doctor", "--api-base", root, env=env)
    assert f"the server at {root} has no such endpoint (HTTP 404" in proc.stderr
    assert "--api-base / OI_API_BASE, which usually ends in /v1" in proc.stderr
    assert "make up" not in proc.stderr

    # Nothing listens: the fix (start it, or point elsewhere) is said once.
    down = f"http://127.0.0.1:{closed_port()}/v1"
    proc = run_oi("doctor", "--api-base", down, env=env)
    assert f"cannot reach the model server at {down}" in proc.stderr
    assert proc.stderr.count("make up") == 1, proc.stderr
    assert proc.stderr.count("point oi at one that runs") == 1, proc.stderr


# --- 5: the session id, and the list of sessions --------------------------------------------


def test_every_run_names_its_session_and_the_list_is_newest_first(
    tmp_path: Path, workdir: Path, fake_vllm: FakeVllm
) -> None:
    env = model_env(tmp_path, fake_vllm)
    fake_vllm.script(Reply(text="First: nothing to run."))
    long_task = "first task, told at length: " + "clean the data and plot it " * 6
    first = run_oi("run", long_task, "--workdir", str(workdir), env=env)
    assert first.returncode == 0, first.stderr
    first_id = session_of(first.stderr)
    sessions = tmp_path / "data" / "oi" / "sessions"
    assert (sessions / f"{first_id}.jsonl").is_file()

    fake_vllm.script(Reply(text="Second: nothing to run."))
    second = run_oi("run", "second task", "--json", "--workdir", str(workdir), env=env)
    assert second.returncode == 0, second.stderr
    (end,) = [e for e in map(json.loads, second.stdout.splitlines()) if e["event"] == "end"]
    second_id = end["session_id"]
    assert (sessions / f"{second_id}.jsonl").is_file() and second_id != first_id

    fake_vllm.script(Reply(error=ErrorReply(500, "engine died", "InternalServerError")))
    third = run_oi("run", "third task", "--workdir", str(workdir), env=env)
    assert third.returncode == 1 and "engine died" in third.stderr, third.stderr
    third_id = session_of(third.stderr)  # named after an error too

    listed = run_oi("sessions", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "task" in line and "20" in line]
    assert [next(i for i in (third_id, second_id, first_id) if i in row) for row in rows] == [
        third_id,
        second_id,
        first_id,
    ], listed.stdout
    assert "error" in rows[0] and "open" not in rows[0]  # ended by an error, not "open"
    assert "finished" in rows[1] and "finished" in rows[2]

    newest = run_oi("sessions", "list", "-n", "1", env=env)
    assert third_id in newest.stdout
    assert first_id not in newest.stdout and second_id not in newest.stdout
    assert "2 older session(s) not shown" in newest.stderr
    narrow = run_oi("sessions", "list", env={**env, "COLUMNS": "80"})
    lines = narrow.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), narrow.stdout
    for session_id in (first_id, second_id, third_id):  # ids are what you type next: never cut
        assert session_id in narrow.stdout, narrow.stdout


# --- 6: resume from another folder ----------------------------------------------------------


def test_chat_resume_from_another_folder_continues_in_the_sessions_folder(
    tmp_path: Path, workdir: Path, fake_vllm: FakeVllm
) -> None:
    env = model_env(tmp_path, fake_vllm)
    fake_vllm.script(Reply(text=fence("sh", "echo 41 > answer.txt")), Reply(text="Wrote 41."))
    first = run_oi("run", "write 41 to answer.txt", "-y", "--workdir", str(workdir), env=env)
    assert first.returncode == 0, first.stderr
    session_id = session_of(first.stderr)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fake_vllm.script(Reply(text=fence("sh", "cat answer.txt")), Reply(text="Read it."))
    # No terminal: one line per message or answer; EOF leaves.
    proc = run_oi(
        "chat", "--resume", session_id, env=env, cwd=elsewhere, input="what is in it?\ny\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"resuming in the session's folder {workdir} (--workdir DIR" in proc.stderr
    assert f"workdir {workdir} · session {session_id}" in proc.stderr
    assert re.search(r"resumed: \d+ message\(s\) so far", proc.stderr), proc.stderr
    assert "41" in proc.stdout  # the block ran in the old folder, where answer.txt is
    assert not (elsewhere / "answer.txt").exists() and list(elsewhere.iterdir()) == []
    assert f"session {session_id}" in proc.stderr.splitlines()[-1]  # named on leaving


# --- 1: the approval panel at 80 columns, in a terminal ------------------------------------


def test_the_approval_question_comes_after_the_network_and_the_whole_workdir_at_80_columns(
    tmp_path: Path, workdir: Path, fake_vllm: FakeVllm
) -> None:
    deep = workdir / "a-project-folder-with-a-long-name" / "and-a-subfolder-in-it-too"
    deep.mkdir(parents=True)
    assert len(str(deep)) > 80
    fake_vllm.script(Reply(text=fence("sh", "ls")), Reply(text="Fine, not running it."))
    env = {**os.environ, **model_env(tmp_path, fake_vllm), "TERM": "xterm-256color"}
    env.update(COLUMNS="80", LINES="40")
    child = pexpect.spawn(
        OI,
        ["run", "list the files", "--workdir", str(deep)],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 80),
    )
    try:
        child.expect(r"Run it\? \[y\]es")
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
        child.send("n\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, screen
    panel = screen[screen.index("block 1") :]
    assert max(len(line.rstrip("\r")) for line in panel.splitlines()) <= 80, panel
    assert re.search(r"│ network\s+none", panel), panel
    squeezed = re.sub(r"[\s│╭╮╰╯─]", "", panel)  # the workdir wraps; joined up it is whole
    assert "workdir" + str(deep).replace(" ", "") + "→/workspace" in squeezed, panel


def test_the_approval_names_the_mounts_and_variables_a_block_can_reach(
    tmp_path: Path, workdir: Path, fake_vllm: FakeVllm
) -> None:
    """A read-write mount and a passed-in variable are shown before the block runs (as the
    variable's name: its value may be a secret), and the block indeed reaches them."""
    data, out = tmp_path / "data-in", tmp_path / "results"
    data.mkdir()
    out.mkdir()
    env = {**model_env(tmp_path, fake_vllm), "MYVAR": "s3cret-value"}
    code = "import os; open('/out/w.txt', 'w').write(os.environ['MYVAR'][:2])"
    fake_vllm.script(Reply(text=fence("python", code)), Reply(text="Done."))
    args = ["--mount", str(data), "--mount", f"{out}:/out:rw", "-e", "MYVAR"]
    proc = run_oi("run", "x", "-y", "--json", "--workdir", str(workdir), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    (proposed,) = [
        e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "code_proposed"
    ]
    box = proposed["sandbox"]
    assert box["mounts"] == [
        f"{data} → /mnt/{data.name} (read-only)",
        f"{out} → /out (read-write)",
    ]
    assert box["env"] == ["MYVAR"] and "s3cret-value" not in proc.stdout
    assert (out / "w.txt").read_text() == "s3"  # what the screen named is what it reached
