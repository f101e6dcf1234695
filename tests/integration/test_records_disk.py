"""A full disk loses nothing: session records on a small tmpfs each test mounts (and unmounts,
also on failure) and fills itself. Needs root (mount); the CLI tests need the Docker engine."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.errors import RecordWriteError
from orchestrator.transcript import SpaceMargin, Transcript, scan_records
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import run_oi

SMALL = SpaceMargin(bytes=16 * 1024, inodes=1)  # lets a session start on a 128 KiB tmpfs
Mount = Callable[..., Path]


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """Mount a tmpfs of the given size under tmp_path; every one is unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str = "128k", *, inodes: int | None = None) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "oi-test", str(point)], check=True)
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            if subprocess.run(["umount", str(point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=False)  # busy: detach


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``directory`` with a file, then give back ``leave`` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def assert_whole_lines(path: Path) -> list[dict[str, object]]:
    """The file ends at a newline and every line is exactly one entry."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    records = [json.loads(line) for line in data.splitlines()]
    assert all(isinstance(r, dict) and "type" in r for r in records)
    assert scan_records(path).skipped == []
    return records


def assert_one_line_naming(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert path.name in message and str(path.parent) in message, message


def test_the_full_tmpfs_really_tears_a_plain_write(mount_tmpfs: Mount) -> None:
    """Positive control: on this tmpfs one plain os.write (what oi did before) writes part of a
    line and returns; the defence below is needed."""
    point = mount_tmpfs()
    fill(point, leave=8192)
    fd = os.open(point / "plain.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b'{"t": 1, "type": "message", "pad": "' + b"x" * 65536 + b'"}\n'
    written = os.write(fd, line)
    os.close(fd)
    assert 0 < written < len(line)
    assert not (point / "plain.jsonl").read_bytes().endswith(b"\n")


def test_appends_until_enospc_then_free_and_resume(mount_tmpfs: Mount) -> None:
    point = mount_tmpfs()
    filler = fill(point, leave=96 * 1024)
    sessions = point / "oi" / "sessions"
    transcript = Transcript.create(sessions, "s1", margin=SMALL)
    transcript.append("session", session_id="s1", resumed=False)
    written = 0
    with pytest.raises(RecordWriteError) as caught:
        for n in range(1000):
            # sizes that do not divide a page, so the last write is a partial one
            transcript.append("message", message={"role": "user", "content": f"m{n}" * 700})
            written += 1
    assert 10 < written < 1000
    path = sessions / "s1.jsonl"
    message = str(caught.value)
    assert_one_line_naming(message, path)
    assert message.startswith(f"no space left in {sessions} for the session record s1.jsonl")
    assert "'message' entry" in message and "free at least 64 KiB there" in message
    assert "OI_DATA_DIR" in message and caught.value.record_type == "message"
    records = assert_whole_lines(path)
    assert len(records) == 1 + written

    filler.unlink()  # space freed: the same transcript goes on
    transcript.append("message", message={"role": "user", "content": "after freeing"})
    transcript.close()
    resumed = Transcript.create(sessions, "s1", margin=SMALL)  # oi chat --resume
    assert not resumed.torn_tail_at_open
    resumed.append("session", session_id="s1", resumed=True)
    resumed.append("message", message={"role": "user", "content": "resumed"})
    resumed.close()
    records = assert_whole_lines(path)
    assert [r["type"] for r in records] == [
        "session",
        *(["message"] * (written + 1)),
        "session",
        "message",
    ]
    assert records[-1]["message"] == {"role": "user", "content": "resumed"}


def race_into_a_full_disk(
    point: Path, *, unlocked: bool = False
) -> tuple[set[tuple[int, int]], list[dict[str, object]], int]:
    """Six threads append until each hits ENOSPC: (entries they were told were written, the
    entries in the file, the lines skipped as torn)."""
    path = point / "s.jsonl"
    path.unlink(missing_ok=True)
    (point / "filler").unlink(missing_ok=True)
    fill(point, leave=100 * 1024)
    transcript = Transcript.open(path, margin=None)
    # a header first: the race is about entries after it (a failed first entry is another case)
    transcript.append("session", session_id="race")
    if unlocked:  # the positive control: the same appends without the thread lock
        transcript._lock = contextlib.nullcontext()
    written: set[tuple[int, int]] = set()
    barrier = threading.Barrier(6)

    def work(worker: int) -> None:
        barrier.wait()
        for n in range(10_000):
            try:
                transcript.append("event", event="x", worker=worker, n=n, pad="p" * (900 + 37 * n))
            except RecordWriteError:
                return
            written.add((worker, n))

    pool = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    transcript.close()
    scan = scan_records(path)
    return written, [r for r in scan.records if r["type"] == "event"], len(scan.skipped)


def test_concurrent_appends_into_a_filling_disk_lose_no_written_entry(
    mount_tmpfs: Mount,
) -> None:
    """A failed line is cut back to where it started, never over another thread's line."""
    point = mount_tmpfs()
    for _ in range(3):
        written, records, skipped = race_into_a_full_disk(point)
        assert_whole_lines(point / "s.jsonl")
        assert skipped == 0
        assert {(r["worker"], r["n"]) for r in records} == written
        assert len(records) == len(written) > 30


def test_without_the_lock_the_race_loses_entries(mount_tmpfs: Mount) -> None:
    """Positive control: without the lock, a thread's cut-back removes another thread's entry
    or leaves a torn line (19 of 20 trials when measured); the test above would see it."""
    point = mount_tmpfs()
    for _ in range(6):
        written, records, skipped = race_into_a_full_disk(point, unlocked=True)
        found = {(r["worker"], r["n"]) for r in records}
        if skipped or found != written:
            return
    pytest.fail("six lockless races lost nothing: the race test cannot tell")


def test_a_full_data_dir_is_refused_before_anything_is_made(mount_tmpfs: Mount) -> None:
    point = mount_tmpfs()
    fill(point)
    sessions = point / "oi" / "sessions"
    with pytest.raises(RecordWriteError) as caught:
        Transcript.create(sessions, "s1")
    message = str(caught.value)
    assert_one_line_naming(message, sessions / "s1.jsonl")
    assert "only 0 B free, a session needs 1 MiB; free at least 1 MiB there" in message
    assert not (point / "oi").exists()


def test_no_free_inodes_is_refused_too(mount_tmpfs: Mount) -> None:
    point = mount_tmpfs("1m", inodes=12)
    with contextlib.suppress(OSError):
        for n in range(100):
            (point / f"f{n}").touch()
    with pytest.raises(RecordWriteError) as caught:
        Transcript.create(point / "sessions", "s1")
    assert "free inodes" in str(caught.value) and "delete at least" in str(caught.value)
    # without the check the open itself fails: one line too, exit 1, not a traceback
    with pytest.raises(RecordWriteError) as raw:
        Transcript.open(point / "s1.jsonl", margin=None)
    assert raw.value.path == point / "s1.jsonl"
    assert "no space left in" in str(raw.value)


def test_a_first_entry_that_does_not_fit_leaves_no_empty_record(mount_tmpfs: Mount) -> None:
    point = mount_tmpfs()
    filler = fill(point)
    path = point / "s1.jsonl"
    transcript = Transcript.open(path, margin=None)  # the check is skipped: the race it covers
    with pytest.raises(RecordWriteError):
        transcript.append("session", session_id="s1", pad="x" * 8192)
    assert not path.exists()
    filler.unlink()
    transcript.append("session", session_id="s1")
    transcript.close()
    assert [r["type"] for r in assert_whole_lines(path)] == ["session"]


def test_other_write_errors_name_the_record_too(tmp_path: Path) -> None:
    """EFBIG (a file size limit) stands for the errors that are not a full disk."""
    path = tmp_path / "s1.jsonl"
    transcript = Transcript.open(path, margin=None)
    transcript.append("session", session_id="s1")
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with pytest.raises(RecordWriteError) as caught:
            transcript.append("event", event="result", pad="y" * 4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    transcript.close()
    message = str(caught.value)
    assert_one_line_naming(message, path)
    assert "'result' event" in message and os.strerror(errno.EFBIG) in message
    assert path.stat().st_size == size
    assert_whole_lines(path)


# --- the CLI ----------------------------------------------------------------------------------


def cli_env(fake_vllm: FakeVllm, tmp_path: Path, **data: str) -> dict[str, str]:
    return {
        "OI_API_BASE": fake_vllm.base_url,
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
        **data,
    }


@pytest.mark.parametrize("variable", ["OI_DATA_DIR", "XDG_DATA_HOME"])
def test_oi_run_on_a_full_data_dir_exits_1_with_one_line(
    mount_tmpfs: Mount, tmp_path: Path, fake_vllm: FakeVllm, variable: str
) -> None:
    point = mount_tmpfs()
    fill(point)
    data_dir = point / "oi"  # XDG_DATA_HOME=point means point/oi too
    env = cli_env(
        fake_vllm, tmp_path, **{variable: str(data_dir if variable == "OI_DATA_DIR" else point)}
    )
    fake_vllm.script(Reply(text="never asked"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = run_oi("run", "say hi", "-y", "--workdir", str(workdir), env=env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"oi: error: no space left in {data_dir / 'sessions'} for the session"
    )
    assert "free at least 1 MiB there or set OI_DATA_DIR" in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(point.rglob("*.jsonl")) == []
    assert fake_vllm.chat_requests == []  # nothing ran


def test_oi_run_whose_disk_fills_mid_session_stops_cleanly(
    mount_tmpfs: Mount, tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    """The block's result entry (its 1.2 MB output) does not fit: exit 1, one line naming the
    record, and the record so far is whole."""
    point = mount_tmpfs("2m")
    fill(point, leave=(1 << 20) + 64 * 1024)  # room to start (1 MiB), not for the result
    env = cli_env(fake_vllm, tmp_path, OI_DATA_DIR=str(point / "oi"))
    block = "Here.\n\n```sh\nhead -c 1200000 /dev/zero | tr '\\0' x; echo\n```\n"
    fake_vllm.script(Reply(text=block), Reply(text="done"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = run_oi(
        "run", "print x", "-y", "--max-output", "1200000", "--workdir", str(workdir), env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert "x" * 100_000 in proc.stdout  # the output was shown live
    (path,) = (point / "oi" / "sessions").glob("*.jsonl")
    error = [line for line in proc.stderr.splitlines() if line.startswith("oi: error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert_one_line_naming(error[0], path)
    assert "'result' event" in error[0], error[0]
    assert "free at least 2 MiB there" in error[0], error[0]  # the entry, rounded up
    records = assert_whole_lines(path)
    # The result did not fit; the small end event did, so `sessions list` shows the error.
    assert [r.get("event") for r in records[-2:]] == ["decision", "end"]
    assert records[-1]["status"] == "error" and "'result' event" in records[-1]["reason"]
