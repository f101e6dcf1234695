"""Append-only JSONL session records: ``<sessions_dir>/<session id>.jsonl``.

One JSON object per line, each with ``t`` (epoch seconds) and ``type``:
``session`` (settings, model, versions), ``message`` (a chat message added to the history),
``history_truncate`` (``%undo``/``%reset``: the history was cut to ``length`` messages),
``event`` (a session event: code with its sha256, decisions, results, usage, end).

Files are created 0600 in a 0700 directory and opened with O_NOFOLLOW, so a symlink planted
where a transcript goes cannot redirect the write.

A record never holds half a line that oi will glue the next entry onto:

- each entry is written whole or not at all: one line, written under a lock (threads) and an
  ``flock`` (other oi processes); on a short write, ENOSPC, EDQUOT, EIO or Ctrl-C the file is
  cut back to where the line started and ``RecordWriteError`` says which entry is missing;
- an append after a torn last line (oi killed mid-write, or a file from an older oi) starts a
  new line, so the torn line stays alone and readers skip it;
- a session does not start when its data dir has less than ``DEFAULT_MARGIN`` free (bytes and
  inodes), and no empty record is left behind;
- readers skip torn lines anywhere, say which (``scan_records``), and recover a whole entry
  that an older oi glued onto a torn line.

The session header and the end event are fsync'ed (the record exists and is complete after a
power cut); other entries are not: a crash of oi itself loses nothing the kernel has, and an
fsync per entry would cost a disk flush per event (bench/transcript_append.py measures it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, RecordWriteError
from orchestrator.events import Event
from orchestrator.fsafe import write_atomic, write_beneath
from orchestrator.records import (
    EndRecord,
    MessageRecord,
    ResultRecord,
    SessionHeader,
    parse_records,
)
from orchestrator.records import rebuild_history as typed_history
from orchestrator.units import format_size

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_RELOCATE_HINT = "set OI_DATA_DIR"
_SPACE_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


@dataclass(frozen=True)
class SpaceMargin:
    """Free space a session needs in its data dir before it starts.

    1 MiB holds the header (~2 KiB) and about 20 blocks at the worst case of the default
    ``--max-output`` 8192 (measured: a block whose stdout and stderr both overflow it writes
    51 KiB, the result entry 34 KiB and the model's copy 17 KiB), or ~500 ordinary ones (an
    ``ls -l`` block: ~2 KiB). 16 inodes: the record needs one; a filesystem with fewer is full.
    """

    bytes: int = 1 << 20
    inodes: int = 16


DEFAULT_MARGIN = SpaceMargin()


@dataclass(frozen=True)
class FreeSpace:
    """What a filesystem has left for an unprivileged writer."""

    bytes: int
    inodes: int | None  # None: the filesystem does not count inodes (btrfs, many FUSE ones)

    @classmethod
    def of(cls, directory: Path) -> FreeSpace:
        vfs = os.statvfs(directory)
        return cls(vfs.f_bavail * vfs.f_frsize, vfs.f_favail if vfs.f_files else None)


def space_shortfall(free: FreeSpace, margin: SpaceMargin) -> str | None:
    """What is missing for a session to start, in words (pure), or None when there is room."""
    if free.bytes < margin.bytes:
        missing = _round_size(margin.bytes - free.bytes)
        return (
            f"only {format_size(free.bytes)} free, a session needs {format_size(margin.bytes)}; "
            f"free at least {format_size(missing)} there"
        )
    if free.inodes is not None and free.inodes < margin.inodes:
        return (
            f"only {free.inodes} free inodes, a session needs {margin.inodes}; "
            f"delete at least {margin.inodes - free.inodes} files there"
        )
    return None


def _round_size(value: int) -> int:
    """Up to whole 64 KiB, or whole MiB from 1 MiB on: sizes a person reads at a glance."""
    step = 1 << 20 if value > 1 << 20 else 64 * 1024
    return -(-value // step) * step


def check_free_space(
    directory: Path, record: Path, margin: SpaceMargin, relocate_hint: str = _RELOCATE_HINT
) -> None:
    """Refuse to start a session record in a (nearly) full filesystem."""
    existing = _nearest_existing(directory)
    try:
        free = FreeSpace.of(existing)
    except OSError:
        return  # cannot tell (e.g. statvfs refused): the write itself will report
    shortfall = space_shortfall(free, margin)
    if shortfall:
        raise RecordWriteError(
            f"no space left in {directory} for the session record {record.name}: {shortfall} "
            f"or {relocate_hint}",
            path=record,
        )


def _nearest_existing(directory: Path) -> Path:
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def _entry_name(record_type: str, data: dict[str, Any]) -> str:
    if record_type == "event":
        return f"'{data.get('event', '?')}' event"
    return f"'{record_type}' entry"


def _is_durable(record_type: str, data: dict[str, Any]) -> bool:
    """The header (the record exists) and the end event (it is complete) survive a power cut."""
    return record_type == "session" or (record_type == "event" and data.get("event") == "end")


class Transcript:
    """Writes one session's records. Construct with ``Transcript.create(dir, id)``.

    ``append`` is safe from several threads (and several processes): each entry is one whole
    line or nothing. When an entry cannot be written, ``RecordWriteError`` is raised and the
    transcript stays usable: a later append (once space is freed) continues the record.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        created: bool = False,
        relocate_hint: str = _RELOCATE_HINT,
        margin: SpaceMargin = DEFAULT_MARGIN,
    ) -> None:
        self.path = path
        self._fd = fd
        self._created = created
        self._closed = False
        self._lock = threading.Lock()
        self._relocate_hint = relocate_hint
        self._margin = margin
        #: The file ended in a torn line when it was opened (the next entry starts a new line).
        self.torn_tail_at_open = _ends_torn(fd)

    @classmethod
    def create(
        cls, sessions_dir: Path, session_id: str, *, margin: SpaceMargin = DEFAULT_MARGIN
    ) -> Transcript:
        path = session_path(sessions_dir, session_id)
        # Before mkdir: on a full disk even the directory may not fit, and nothing is left.
        check_free_space(sessions_dir, path, margin)
        try:
            sessions_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _open_error(path, exc, _RELOCATE_HINT) from None
        return cls.open(path, margin=margin)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        margin: SpaceMargin | None = DEFAULT_MARGIN,
        relocate_hint: str = _RELOCATE_HINT,
    ) -> Transcript:
        """Open (or create) a record to append to; ``margin=None`` skips the free-space check."""
        if margin is not None:
            check_free_space(path.parent, path, margin, relocate_hint)
        fd, created = _open_record(path, relocate_hint)
        return cls(
            path,
            fd,
            created=created,
            relocate_hint=relocate_hint,
            margin=margin if margin is not None else DEFAULT_MARGIN,
        )

    def append(self, record_type: str, **data: Any) -> None:
        """Add one entry as one whole line, or raise ``RecordWriteError`` leaving none of it."""
        record = {"t": round(time.time(), 3), "type": record_type, **data}
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError(f"the session record {self.path} is closed")
            if self._fd < 0:  # a failed first entry removed the empty file: start it again
                self._fd, self._created = _open_record(self.path, self._relocate_hint)
            self._append_locked(line, record_type, data)

    def _append_locked(self, line: bytes, record_type: str, data: dict[str, Any]) -> None:
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # O_APPEND writes land at the end whoever wrote last: take that end under the lock,
            # from this fd, so a failed line is cut back exactly to where it started.
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                line = b"\n" + line  # a torn last line stays alone; this entry starts afresh
            try:
                _write_all(fd, line)
                if _is_durable(record_type, data):
                    os.fsync(fd)
                    if self._created and record_type == "session":
                        _fsync_dir(self.path.parent)
            except OSError as exc:
                self._undo(fd, start)
                raise self._write_error(exc, record_type, data, len(line)) from None
            except BaseException:  # Ctrl-C mid-write: no torn line either
                self._undo(fd, start)
                raise
        finally:
            if self._fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _undo(self, fd: int, start: int) -> None:
        with contextlib.suppress(OSError):  # if even this fails, the next append starts a line
            os.ftruncate(fd, start)
        if start == 0:
            self._discard_if_empty()

    def _discard_if_empty(self) -> None:
        """Remove the file if this transcript created it and it is still empty."""
        if not self._created or self._fd < 0:
            return
        try:
            ours = os.fstat(self._fd)
            at_path = os.stat(self.path, follow_symlinks=False)
            if ours.st_size or (at_path.st_dev, at_path.st_ino) != (ours.st_dev, ours.st_ino):
                return
            os.unlink(self.path)
        except OSError:
            return
        os.close(self._fd)  # also drops the flock
        self._fd = -1

    def _write_error(
        self, exc: OSError, record_type: str, data: dict[str, Any], size: int
    ) -> RecordWriteError:
        entry = _entry_name(record_type, data)
        name = self.path.name
        lost = f"its {entry} ({size} bytes) was not written, so the record ends before it"
        if exc.errno in _SPACE_ERRNOS:
            need = format_size(_round_size(max(self._margin.bytes, size)))
            message = (
                f"{_SPACE_ERRNOS[exc.errno]} in {self.path.parent} for the session record "
                f"{name}: {lost}; free at least {need} there or {self._relocate_hint}"
            )
        else:
            message = (
                f"cannot write the session record {self.path}: {exc.strerror or exc}; {lost}; "
                f"check that disk (dmesg) or {self._relocate_hint}"
            )
        return RecordWriteError(message, path=self.path, record_type=record_type)

    def event(self, event: Event) -> None:
        self.append("event", **event.to_dict())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._discard_if_empty()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; a write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (not every filesystem can: ignored then)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _open_record(path: Path, relocate_hint: str) -> tuple[int, bool]:
    """An fd to append to ``path`` (never through a symlink), and whether we created it."""
    # O_RDWR, not O_WRONLY: append reads the last byte to see whether the last line is torn.
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc, relocate_hint) from None
    if not _is_regular(fd):
        os.close(fd)
        raise ConfigError(f"session record {path} is not a regular file; remove it")
    return fd, created


def _open_error(path: Path, exc: OSError, relocate_hint: str) -> RecordWriteError | ConfigError:
    if exc.errno in _SPACE_ERRNOS:
        return RecordWriteError(
            f"{_SPACE_ERRNOS[exc.errno]} in {path.parent} for the session record {path.name}; "
            f"free at least {format_size(DEFAULT_MARGIN.bytes)} there or {relocate_hint}",
            path=path,
        )
    return ConfigError(
        f"cannot write the session record {path}: {exc.strerror}; check OI_DATA_DIR / data_dir"
    )


def _ends_torn(fd: int) -> bool:
    try:
        size = os.fstat(fd).st_size
        return bool(size) and os.pread(fd, 1, size - 1) != b"\n"
    except OSError:
        return False


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def session_path(sessions_dir: Path, session_id: str) -> Path:
    if not _SAFE_ID.match(session_id):
        raise ConfigError(f"invalid session id {session_id!r}")
    return sessions_dir / f"{session_id}.jsonl"


# --- reading ------------------------------------------------------------------------------------

# json.dumps escapes every quote inside strings, so this text starts an object, never sits
# inside a string: where a torn line has one, an older oi may have glued a whole entry on.
_ENTRY_START = re.compile(r'\{"t": ')
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class SkippedLine:
    """A line of a record that holds no whole entry."""

    number: int  # 1-based
    size: int  # bytes, without the newline
    reason: str  # "incomplete" (a torn write) or "not a record" (valid JSON, not an object)
    recovered: bool = False  # a whole entry glued after the torn part was read


@dataclass
class RecordScan:
    """All whole entries of a record, and what was skipped."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    def notes(self, limit: int = 3) -> list[str]:
        """One line per skipped line (the first ``limit``), for ``sessions show`` and replay."""
        return describe_skipped(self.path, self.skipped, limit)


def describe_skipped(path: Path, skipped: list[SkippedLine], limit: int = 3) -> list[str]:
    notes = []
    for line in skipped[:limit]:
        if line.reason != "incomplete":
            notes.append(f"line {line.number} of {path} is not a session entry; skipped")
        elif line.recovered:
            notes.append(
                f"line {line.number} of {path} starts with an incomplete entry (oi stopped while "
                "writing it); skipped that part and read the whole entry after it"
            )
        else:
            notes.append(
                f"line {line.number} of {path} is incomplete (oi stopped while writing it); skipped"
            )
    if len(skipped) > limit:
        notes.append(f"... and {len(skipped) - limit} more incomplete line(s) in {path}")
    return notes


def parse_line(raw: bytes, number: int) -> tuple[dict[str, Any] | None, SkippedLine | None]:
    """One line of a record (pure): its entry, and a note when (part of) it was skipped."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if not body.strip():
        return None, None
    text = body.decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        glued = _glued_entry(text)
        return glued, SkippedLine(number, len(body), "incomplete", recovered=glued is not None)
    if not isinstance(record, dict):
        return None, SkippedLine(number, len(body), "not a record")
    return record, None


def _glued_entry(text: str) -> dict[str, Any] | None:
    """A whole entry that ends the line after a torn one (older oi versions glued them)."""
    end = len(text.rstrip())
    for match in _ENTRY_START.finditer(text, 1):
        try:
            record, stop = _DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if stop == end and isinstance(record, dict) and "type" in record:
            return record
    return None


def _record_lines(path: Path) -> Iterator[bytes]:
    # O_NONBLOCK: a FIFO planted at the path must not hang the reader (it is refused below).
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not _is_regular(fh.fileno()):
            raise ConfigError(f"{path} is not a regular file")
        yield from fh


def iter_scan(path: Path) -> Iterator[tuple[dict[str, Any] | None, SkippedLine | None]]:
    """Each line of a record parsed, lazily (for large records)."""
    for number, raw in enumerate(_record_lines(path), start=1):
        yield parse_line(raw, number)


def scan_records(path: Path) -> RecordScan:
    """The whole entries of a record, with the lines skipped as incomplete (``.notes()``)."""
    scan = RecordScan(path)
    for record, skipped in iter_scan(path):
        if record is not None:
            scan.records.append(record)
        if skipped is not None:
            scan.skipped.append(skipped)
    return scan


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a transcript file; torn lines anywhere are skipped (``scan_records`` says
    which)."""
    for record, _skipped in iter_scan(path):
        if record is not None:
            yield record


def rebuild_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat history at the end of a session, honouring %undo and %reset (lines that are
    not records oi wrote are skipped)."""
    typed, _problems = parse_records(records)
    return typed_history(typed)


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    path: Path
    started: float
    model: str
    task: str
    status: str
    blocks: int
    incomplete_lines: int = 0  # torn lines skipped (oi stopped while writing them)


def summarize(path: Path) -> SessionInfo:
    scan = scan_records(path)
    records, _problems = parse_records(scan.records)
    start = next((r for r in records if isinstance(r, SessionHeader)), None)
    task = next(
        (
            r.message.content or ""
            for r in records
            if isinstance(r, MessageRecord) and r.message.role == "user"
        ),
        "",
    )
    ends = [r for r in records if isinstance(r, EndRecord)]
    return SessionInfo(
        session_id=path.stem,
        path=path,
        started=start.t if start is not None else path.stat().st_mtime,
        model=start.model if start is not None else "?",
        task=task.splitlines()[0] if task else "",
        status=ends[-1].status if ends else "open",
        blocks=sum(1 for r in records if isinstance(r, ResultRecord)),
        incomplete_lines=sum(1 for line in scan.skipped if line.reason == "incomplete"),
    )


def list_sessions(sessions_dir: Path) -> list[SessionInfo]:
    if not sessions_dir.is_dir():
        return []
    infos = []
    for path in sessions_dir.glob("*.jsonl"):
        if path.is_symlink() or not path.is_file():
            continue
        infos.append(summarize(path))
    return sorted(infos, key=lambda info: info.started, reverse=True)  # newest first


def find_session(sessions_dir: Path, session_id: str) -> Path:
    """A session file by id, or a unique prefix of one (never a path: a record file from
    elsewhere is replayed with ``oi replay FILE``, not continued)."""
    if not _SAFE_ID.match(session_id) or session_id in (".", ".."):
        raise ConfigError(
            f"{session_id!r} is not a session id (ids look like 20260101T120000-ab12cd; "
            "'oi sessions list' shows yours); a record file is re-run with 'oi replay FILE'"
        )
    exact = session_path(sessions_dir, session_id)
    if exact.is_file():
        return exact
    matches = sorted(sessions_dir.glob(f"{glob_escape(session_id)}*.jsonl"))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no session {session_id!r} in {sessions_dir}; 'oi sessions list' shows them"
        )
    raise ConfigError(
        f"{session_id!r} matches {len(matches)} sessions; give more of the id "
        f"({', '.join(m.stem for m in matches[:5])})"
    )


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def save_markdown(messages: list[dict[str, Any]], path: Path, *, base: Path | None = None) -> Path:
    """Write a conversation as markdown. A relative ``path`` is written below ``base`` (the
    current folder) without following any symlink on the way - a block or a repository may have
    planted one - and an absolute one never through a symlink at its last part. A FIFO, socket
    or device at the target is refused, never opened or replaced."""
    lines: list[str] = []
    for message in messages:
        role = message.get("role", "?")
        if role == "system":
            continue
        lines.append(f"## {role}\n")
        lines.append(str(message.get("content") or "").rstrip() + "\n")
        for call in message.get("tool_calls") or []:
            lines.append(f"```json\n{call['function']['arguments']}\n```\n")
    data = "\n".join(lines).encode()
    path = path.expanduser()
    _refuse_unusual_target((base or Path.cwd()).joinpath(path), path)
    if path.is_absolute():
        write_atomic(path, data, 0o600)
        return path
    root = base or Path.cwd()
    return write_beneath(root, str(path), data, 0o600, dir_mode=0o755)


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _refuse_unusual_target(target: Path, shown: Path) -> None:
    """A symlink, FIFO, socket or device planted where a file will be saved is never written
    through (a FIFO opened to write would hang until someone reads the conversation from it),
    nor replaced: the person picks another name."""
    try:
        mode = target.lstat().st_mode
    except OSError:
        return  # absent (the usual case), or unreachable: the write itself reports that
    if stat.S_ISLNK(mode):
        raise ConfigError(
            f"{shown} is a symlink; oi does not write through it: choose another name"
        )
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            raise ConfigError(
                f"{shown} is not a regular file ({kind}); oi does not write to it: "
                "choose another name"
            )
