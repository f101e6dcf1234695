"""The first hour of a new user (issue: diagnoses, help and the small frictions), through the
real `oi` script: what a person sees when something is not set up, and the help text."""

from __future__ import annotations

from pathlib import Path

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
