"""The first hour of a new user (issue: diagnoses, help and the small frictions), through the
real `oi` script: what a person sees when something is not set up, and the help text."""

from __future__ import annotations

from pathlib import Path

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OtherUser, run_oi


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
