"""End to end: record a session with `oi run` (fake vLLM), then `oi replay` it without the
model on the real Docker engine: matches, mismatches with a diff, the shipped demo."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import REPO, run_oi

DOUBLE = (
    "n = int(open('input.txt').read())\nopen('double.txt', 'w').write(str(2 * n))\nprint(2 * n)"
)
SHOW = 'echo "double is $(cat double.txt)"'


def fence(language: str, code: str) -> str:
    return f"Here is the code.\n\n```{language}\n{code}\n```\n"


@pytest.fixture
def env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


@pytest.fixture
def recorded(tmp_path: Path, fake_vllm: FakeVllm, env: dict[str, str]) -> tuple[str, Path]:
    """A session recorded by `oi run`: two blocks on a workdir holding input.txt = 21.
    Returns the session id and a pristine copy of the starting workdir."""
    start = tmp_path / "start"
    start.mkdir()
    (start / "input.txt").write_text("21")
    workdir = tmp_path / "work"
    shutil.copytree(start, workdir)
    fake_vllm.script(
        Reply(text=fence("python", DOUBLE)), Reply(text=fence("sh", SHOW)), Reply(text="Done.")
    )
    proc = run_oi("run", "double it", "-y", "--workdir", str(workdir), env=env)
    assert proc.returncode == 0, proc.stderr
    (path,) = (Path(env["XDG_DATA_HOME"]) / "oi" / "sessions").glob("*.jsonl")
    return path.stem, start


def test_replay_matches_the_record_without_the_model(
    recorded: tuple[str, Path], env: dict[str, str], fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    session_id, start = recorded
    asked = len(fake_vllm.chat_requests)
    out = tmp_path / "replayed"
    proc = run_oi(
        "replay", session_id[:12], "--yes", "--workdir-from", str(start), "--out", str(out), env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "block 1 (#1, python): match · exit 0" in proc.stdout
    assert "block 2 (#2, shell): match · exit 0" in proc.stdout
    assert "2 of 2 block(s) match, 0 mismatch(es)" in proc.stdout
    assert (out / "double.txt").read_text() == "42"
    assert (start / "input.txt").read_text() == "21" and not (start / "double.txt").exists()
    assert len(fake_vllm.chat_requests) == asked  # no model involved


def test_a_mismatch_is_reported_with_a_diff_and_fails(
    recorded: tuple[str, Path], env: dict[str, str], tmp_path: Path
) -> None:
    session_id, _ = recorded
    other = tmp_path / "other"
    other.mkdir()
    (other / "input.txt").write_text("5")
    proc = run_oi("replay", session_id, "-y", "--workdir-from", str(other), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "block 1 (#1, python): MISMATCH: stdout differs" in proc.stdout
    assert "--- recorded stdout" in proc.stdout and "-42" in proc.stdout and "+10" in proc.stdout
    assert "0 of 2 block(s) match, 2 mismatch(es)" in proc.stdout
    assert "a temporary folder (removed after" in proc.stderr

    # Without its input the first block fails: exit code and stderr differ too (JSON report).
    proc = run_oi("replay", session_id, "--json", "--yes", env=env)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    first = report["blocks"][0]
    assert (
        first["status"] == "mismatch" and "recorded exit 0, replayed exit 1" in first["differences"]
    )
    assert "FileNotFoundError" in first["replayed"]["stderr"]
    assert report["ok"] is False and report["mismatched"] == 2


def test_exit_codes_only_with_ignore_output(
    recorded: tuple[str, Path], env: dict[str, str], tmp_path: Path
) -> None:
    session_id, _ = recorded
    other = tmp_path / "other"
    other.mkdir()
    (other / "input.txt").write_text("5")
    proc = run_oi(
        "replay", session_id, "-y", "--workdir-from", str(other), "--ignore-output", env=env
    )
    assert proc.returncode == 0, proc.stdout


def test_the_shipped_demo_replays_and_makes_the_chart(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "demo-out"
    record = REPO / "examples" / "csv-demo" / "session.jsonl"
    proc = run_oi("replay", str(record), "--yes", "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 of 5 block(s) match" in proc.stdout
    assert "not a recording of a language model" in proc.stderr
    assert (out / "monthly_revenue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    months = (out / "monthly_revenue.csv").read_text().splitlines()
    assert months[0] == "month,revenue" and len(months) == 13


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda p: p.write_text(
                '{"type": "event", "event": "decision", "decision": "run", "index": 1, "sha256": "ab"}\n'
            ),
            "holds no such code",
        ),
        (
            lambda p: p.symlink_to(REPO / "examples" / "csv-demo" / "session.jsonl"),
            "symlink or special file is not read",
        ),
        (lambda p: None, "no session record at"),
    ],
)
def test_a_bad_record_is_one_line(
    tmp_path: Path, env: dict[str, str], make: object, expected: str
) -> None:
    path = tmp_path / "bad.jsonl"
    make(path)  # type: ignore[operator]
    proc = run_oi("replay", str(path), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_out_must_be_new_or_empty(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    record = REPO / "examples" / "csv-demo" / "session.jsonl"
    proc = run_oi("replay", str(record), "--out", str(out), env=env)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (out / "mine.txt").read_text() == "x"


def test_replay_shows_each_block_and_asks_first(
    recorded: tuple[str, Path], env: dict[str, str], tmp_path: Path
) -> None:
    """A record may come from anyone: nothing of it runs unless the person says so."""
    session_id, start = recorded
    out = tmp_path / "asked"
    proc = run_oi(
        "replay", session_id, "--workdir-from", str(start), "--out", str(out), env=env, input=""
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "open('double.txt', 'w')" in proc.stderr and "Run it?" in proc.stderr
    assert "(no answer: declined)" in proc.stderr
    assert "block 1 (#1, python): not run (declined)" in proc.stdout
    assert not (out / "double.txt").exists()  # nothing ran
    out2 = tmp_path / "answered"
    proc = run_oi(
        "replay",
        session_id,
        "--workdir-from",
        str(start),
        "--out",
        str(out2),
        env=env,
        input="y\nn\n",
    )
    assert "block 1 (#1, python): match" in proc.stdout
    assert "block 2 (#2, shell): not run (declined)" in proc.stdout
    assert (out2 / "double.txt").read_text() == "42" and proc.returncode == 1


def test_a_records_limits_only_narrow_yours(
    recorded: tuple[str, Path], env: dict[str, str], tmp_path: Path
) -> None:
    _, start = recorded
    (path,) = (Path(env["XDG_DATA_HOME"]) / "oi" / "sessions").glob("*.jsonl")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["settings"].update(memory=64 * 1024**3, timeout=1e6, pids=64)
    forged = tmp_path / "forged.jsonl"
    # A third block prints its pids limit; its recorded output says 64, so the replay matches
    # only if the record's narrower pids limit reached the sandbox.
    extra = with_block(lines, 3, "shell", PIDS_LIMIT, recorded_stdout="64\n")
    forged.write_text("\n".join([json.dumps(header), *lines[1:], *extra]) + "\n")
    proc = run_oi("replay", str(forged), "--yes", "--json", "--workdir-from", str(start), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "memory = '64g' not applied: wider than yours" in proc.stderr
    assert "timeout = 1000000.0 not applied" in proc.stderr
    report = json.loads(proc.stdout)
    pids = next(b for b in report["blocks"] if b["index"] == 3)
    assert (pids["replayed"] or {}).get("stdout") == "64\n", (
        f"the record's pids = 64 did not reach the sandbox: {pids}"
    )
    assert report["ok"] and report["matched"] == 3


# cgroup v2 puts the limit at the top of the container's cgroup; v1 in the pids controller.
PIDS_LIMIT = "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"


def with_block(
    lines: list[str], index: int, language: str, code: str, *, recorded_stdout: str
) -> list[str]:
    """Record lines of one more block that ran (proposed, run, result), made from the
    record's last block: what a forged record adds."""
    events = [json.loads(line) for line in lines]
    sha = hashlib.sha256(code.encode()).hexdigest()
    added = []
    for kind in ("code_proposed", "decision", "result"):
        last = next(e for e in reversed(events) if e.get("event") == kind)
        entry = {**last, "index": index, "sha256": sha}
        if kind == "code_proposed":
            entry.update(language=language, code=code)
        if kind == "result":
            result = dict(entry["result"])
            result.update(
                stdout=recorded_stdout,
                stdout_bytes=len(recorded_stdout),
                stderr="",
                stderr_bytes=0,
                exit_code=0,
                code_sha256=sha,
            )
            entry.update(result=result, exit_code=0)
        added.append(json.dumps(entry))
    return added
