"""Session records that cannot be torn: line parsing (pure, a table), torn lines planted by hand,
appends after a torn tail, thread-safe appends. The full-disk tests (a tmpfs the test mounts)
are in tests/integration/test_records_disk.py."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.transcript import (
    FreeSpace,
    SkippedLine,
    SpaceMargin,
    Transcript,
    describe_skipped,
    list_sessions,
    parse_line,
    read_records,
    scan_records,
    space_shortfall,
)

HEADER = b'{"t": 2.0, "type": "session", "session_id": "s"}'
NESTED = b'{"t": 1.0, "type": "event", "result": {"t": 5, "x": "ab'
NESTED_WHOLE = b'{"t": 1.0, "type": "event", "result": {"t": 5}'
TORN = b'{"t": 1.0, "type": "message", "message": {"role": "user", "content": "hal'


@pytest.mark.parametrize(
    ("raw", "entry", "skipped"),
    [
        (HEADER + b"\n", "session", None),
        (HEADER, "session", None),  # whole, only the newline missing: nothing lost
        (b"\n", None, None),
        (b"   \n", None, None),
        (TORN + b"\n", None, SkippedLine(3, len(TORN), "incomplete")),
        (TORN, None, SkippedLine(3, len(TORN), "incomplete")),
        # what an older oi left: a resumed header glued onto a torn line; the header is kept
        (TORN + HEADER + b"\n", "session", SkippedLine(3, len(TORN + HEADER), "incomplete", True)),
        # two torn writes, then a whole one
        (
            TORN + TORN + HEADER + b"\n",
            "session",
            SkippedLine(3, len(TORN * 2 + HEADER), "incomplete", True),
        ),
        # a nested {"t": ...} in the torn part is not taken for an entry
        (
            NESTED + HEADER + b"\n",
            "session",
            SkippedLine(3, len(NESTED + HEADER), "incomplete", True),
        ),
        (NESTED_WHOLE, None, SkippedLine(3, len(NESTED_WHOLE), "incomplete")),
        (b'{"t": 1.0, "ty\xc3', None, SkippedLine(3, 15, "incomplete")),  # cut mid-UTF-8
        (b"[1, 2]\n", None, SkippedLine(3, 6, "not a record")),
        (b'"text"\n', None, SkippedLine(3, 6, "not a record")),
        (b"garbage\n", None, SkippedLine(3, 7, "incomplete")),
    ],
)
def test_parse_line(raw: bytes, entry: str | None, skipped: SkippedLine | None) -> None:
    record, note = parse_line(raw, 3)
    assert (record or {}).get("type") == entry
    assert note == skipped


@pytest.mark.parametrize(
    ("free", "margin", "expected"),
    [
        (FreeSpace(2 << 20, 1000), SpaceMargin(), None),
        (FreeSpace(1 << 20, 16), SpaceMargin(), None),  # exactly the margin is enough
        (FreeSpace(2 << 20, None), SpaceMargin(), None),  # no inode count (btrfs)
        (
            FreeSpace(0, 1000),
            SpaceMargin(),
            "only 0 B free, a session needs 1 MiB; free at least 1 MiB",
        ),
        (FreeSpace(600_000, 1000), SpaceMargin(), "free at least 448 KiB"),
        (FreeSpace((1 << 20) - 1, 1000), SpaceMargin(), "free at least 64 KiB"),
        (
            FreeSpace(2 << 20, 3),
            SpaceMargin(),
            "only 3 free inodes, a session needs 16; delete at least 13 files",
        ),
        (FreeSpace(4096, 0), SpaceMargin(bytes=4096, inodes=1), "only 0 free inodes"),
    ],
)
def test_space_shortfall(free: FreeSpace, margin: SpaceMargin, expected: str | None) -> None:
    shortfall = space_shortfall(free, margin)
    if expected is None:
        assert shortfall is None
    else:
        assert shortfall is not None and expected in shortfall


def test_describe_skipped_says_which_line_and_why(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    notes = describe_skipped(
        path,
        [SkippedLine(4, 10, "incomplete"), SkippedLine(9, 10, "incomplete", True)]
        + [SkippedLine(n, 1, "incomplete") for n in range(20, 25)],
    )
    assert notes[0] == f"line 4 of {path} is incomplete (oi stopped while writing it); skipped"
    assert notes[1].startswith(f"line 9 of {path} starts with an incomplete entry")
    assert notes[-1] == f"... and 4 more incomplete line(s) in {path}"
    assert len(notes) == 4


def write_entries(path: Path, count: int, start: int = 0) -> None:
    transcript = Transcript.open(path, margin=None)
    for n in range(start, start + count):
        transcript.append("message", message={"role": "user", "content": f"m{n}"})
    transcript.close()


def contents(records: list[dict[str, Any]]) -> list[str]:
    return [r["message"]["content"] for r in records if r["type"] == "message"]


def test_torn_lines_in_the_middle_and_at_the_end_are_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_entries(path, 3)
    with path.open("ab") as fh:
        fh.write(TORN + b"\n")  # a torn line in the middle (a newline came later)
    write_entries(path, 2, start=3)
    with path.open("ab") as fh:
        fh.write(TORN)  # a torn line at the very end
    scan = scan_records(path)
    assert contents(scan.records) == ["m0", "m1", "m2", "m3", "m4"]
    assert [(s.number, s.reason) for s in scan.skipped] == [(4, "incomplete"), (7, "incomplete")]
    assert scan.notes() == [
        f"line 4 of {path} is incomplete (oi stopped while writing it); skipped",
        f"line 7 of {path} is incomplete (oi stopped while writing it); skipped",
    ]
    assert contents(list(read_records(path))) == contents(scan.records)  # compatible reader
    (info,) = list_sessions(tmp_path)
    assert info.incomplete_lines == 2


def test_an_append_after_a_torn_tail_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_entries(path, 2)
    with path.open("ab") as fh:
        fh.write(TORN)
    transcript = Transcript.open(path, margin=None)
    assert transcript.torn_tail_at_open
    transcript.append("session", session_id="s", resumed=True)
    transcript.append("message", message={"role": "user", "content": "after"})
    transcript.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == TORN  # left alone on its own line, not glued to the header
    assert json.loads(lines[3])["type"] == "session"
    scan = scan_records(path)
    assert [s.number for s in scan.skipped] == [3]
    assert not any(s.recovered for s in scan.skipped)
    assert contents(scan.records) == ["m0", "m1", "after"]
    # the positive control: the old way of appending (no check of the last byte) glues them
    glued = tmp_path / "old.jsonl"
    glued.write_bytes(TORN + HEADER + b"\n")
    assert scan_records(glued).skipped[0].recovered


def test_an_append_checks_the_tail_each_time(tmp_path: Path) -> None:
    """Another writer (an oi killed mid-write) may tear the tail while this record is open."""
    path = tmp_path / "s.jsonl"
    transcript = Transcript.open(path, margin=None)
    transcript.append("message", message={"role": "user", "content": "m0"})
    with path.open("ab") as fh:
        fh.write(TORN)
    transcript.append("message", message={"role": "user", "content": "m1"})
    transcript.close()
    scan = scan_records(path)
    assert contents(scan.records) == ["m0", "m1"] and len(scan.skipped) == 1


def interleaved_lines(path: Path) -> list[bytes]:
    """Lines of a record that are not exactly one whole entry."""
    return [
        line
        for line in path.read_bytes().split(b"\n")[:-1]
        if parse_line(line + b"\n", 0)[1] is not None
    ]


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    transcript = Transcript.open(path, margin=None)
    threads, per_thread = 8, 150
    barrier = threading.Barrier(threads)

    def work(worker: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            # sizes up to 96 KiB: larger than a pipe buffer or a page, so a write split by the
            # kernel or by us would show
            transcript.append("event", event="x", worker=worker, n=n, pad="p" * ((n * 997) % 98304))

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    transcript.close()
    assert path.read_bytes().endswith(b"\n")
    assert interleaved_lines(path) == []
    records = list(read_records(path))
    assert len(records) == threads * per_thread
    for worker in range(threads):
        assert [r["n"] for r in records if r["worker"] == worker] == list(range(per_thread))


def test_the_interleaving_check_can_fail(tmp_path: Path) -> None:
    """Positive control: two writers that each write a line in two pieces interleave, and the
    check above sees it."""
    path = tmp_path / "s.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    half_written, other_done = threading.Event(), threading.Event()
    line_a = json.dumps({"t": 1, "type": "event", "who": "a"}).encode() + b"\n"
    line_b = json.dumps({"t": 1, "type": "event", "who": "b"}).encode() + b"\n"

    def writer_a() -> None:
        os.write(fd, line_a[:10])
        half_written.set()
        other_done.wait(5)
        os.write(fd, line_a[10:])

    def writer_b() -> None:
        half_written.wait(5)
        os.write(fd, line_b)
        other_done.set()

    pool = [threading.Thread(target=writer_a), threading.Thread(target=writer_b)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    os.close(fd)
    assert interleaved_lines(path) != []


def test_close_removes_an_empty_record_it_created_only(tmp_path: Path) -> None:
    fresh = Transcript.open(tmp_path / "new.jsonl", margin=None)
    fresh.close()
    assert not (tmp_path / "new.jsonl").exists()
    (tmp_path / "old.jsonl").touch()
    Transcript.open(tmp_path / "old.jsonl", margin=None).close()
    assert (tmp_path / "old.jsonl").exists()  # not ours: left alone


def test_create_checks_free_space_before_making_anything(tmp_path: Path) -> None:
    from orchestrator.errors import RecordWriteError

    sessions = tmp_path / "data" / "sessions"
    with pytest.raises(RecordWriteError) as caught:
        Transcript.create(sessions, "s1", margin=SpaceMargin(bytes=1 << 62))
    assert not (tmp_path / "data").exists()
    message = str(caught.value)
    assert "\n" not in message and str(sessions) in message and "s1.jsonl" in message
    assert "set OI_DATA_DIR" in message
    assert caught.value.exit_code == 1


def test_a_planted_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO where the record goes: opening it read-write returns at once (write-only would
    wait for a reader), and it is refused as not a regular file."""
    from orchestrator.errors import ConfigError

    os.mkfifo(tmp_path / "s1.jsonl")
    result: list[BaseException] = []

    def attempt() -> None:
        try:
            Transcript.create(tmp_path, "s1")
        except ConfigError as exc:
            result.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "opening a planted FIFO hung"
    assert result and "not a regular file" in str(result[0])


# --- typed records (orchestrator/records.py) -----------------------------------------------------

from orchestrator.records import (  # noqa: E402
    BadRecord,
    CodeProposedRecord,
    EndRecord,
    MessageRecord,
    OtherEvent,
    SessionHeader,
    parse_record,
    parse_records,
)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ({"type": "session", "v": 1, "session_id": "s", "model": "m"}, SessionHeader),
        ({"type": "session"}, SessionHeader),  # before the version field: v 0
        ({"type": "message", "message": {"role": "user", "content": "hi"}}, MessageRecord),
        (
            {
                "type": "message",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "x", "arguments": "{}"},
                        }
                    ],
                },
            },
            MessageRecord,
        ),
        (
            {
                "type": "event",
                "event": "code_proposed",
                "index": 1,
                "language": "python",
                "code": "x",
                "sha256": "ab",
            },
            CodeProposedRecord,
        ),
        ({"type": "event", "event": "end", "status": "finished"}, EndRecord),
        ({"type": "event", "event": "notice", "message": "m"}, OtherEvent),
        ({"type": "event", "event": "a-future-event", "anything": 1}, OtherEvent),
    ],
)
def test_records_parse_into_their_models(line: dict, kind: type) -> None:
    assert isinstance(parse_record(line), kind)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"type": "nonsense"}, "record"),
        ({"no": "type"}, "record"),
        ({"type": "message", "message": {"role": "hacker", "content": "x"}}, "message.role"),
        ({"type": "history_truncate", "length": -1}, "length"),
        (
            {"type": "event", "event": "decision", "index": 1, "decision": "maybe", "sha256": "a"},
            "decision",
        ),
        (
            {
                "type": "event",
                "event": "code_proposed",
                "index": "one",
                "language": "py",
                "code": "x",
                "sha256": "a",
            },
            "index",
        ),
        ([1, 2], "record"),
    ],
)
def test_lines_that_are_not_records_are_refused_by_name(line: object, problem: str) -> None:
    with pytest.raises(BadRecord, match=problem):
        parse_record(line)


def test_a_resumed_history_is_exactly_what_was_recorded() -> None:
    lines = [
        {"type": "session"},
        {"type": "message", "message": {"role": "system", "content": "s"}},
        {"type": "message", "message": {"role": "user", "content": "u", "name": "kept"}},
        {"type": "history_truncate", "length": 1},
        {"type": "message", "message": {"role": "user", "content": "again"}},
        {"type": "bogus"},
    ]
    records, problems = parse_records(lines)
    assert len(records) == 5 and len(problems) == 1 and problems[0].startswith("record 6: ")
    from orchestrator.records import rebuild_history

    assert rebuild_history(records) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "again"},
    ]
