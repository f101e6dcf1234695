"""Append-only JSONL session records: ``<sessions_dir>/<session id>.jsonl``.

One JSON object per line, each with ``t`` (epoch seconds) and ``type``:
``session`` (settings, model, versions), ``message`` (a chat message added to the history),
``history_truncate`` (``%undo``/``%reset``: the history was cut to ``length`` messages),
``event`` (a session event: code with its sha256, decisions, results, usage, end).

Files are created 0600 in a 0700 directory and opened with O_NOFOLLOW, so a symlink planted
where a transcript goes cannot redirect the write.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.events import Event

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class Transcript:
    """Writes one session's records. Construct with ``Transcript.create(dir, id)``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, sessions_dir: Path, session_id: str) -> Transcript:
        sessions_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls.open(session_path(sessions_dir, session_id))

    @classmethod
    def open(cls, path: Path) -> Transcript:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the session record {path}: {exc.strerror}; "
                "check OI_DATA_DIR / data_dir"
            ) from None
        if not _is_regular(fd):
            os.close(fd)
            raise ConfigError(f"session record {path} is not a regular file; remove it")
        return cls(path, fd)

    def append(self, record_type: str, **data: Any) -> None:
        line = json.dumps({"t": round(time.time(), 3), "type": record_type, **data}, default=str)
        os.write(self._fd, (line + "\n").encode())

    def event(self, event: Event) -> None:
        self.append("event", **event.to_dict())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def session_path(sessions_dir: Path, session_id: str) -> Path:
    if not _SAFE_ID.match(session_id):
        raise ConfigError(f"invalid session id {session_id!r}")
    return sessions_dir / f"{session_id}.jsonl"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a transcript file; a torn last line (crash mid-write) is skipped."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
        if not _is_regular(fh.fileno()):
            raise ConfigError(f"{path} is not a regular file")
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def rebuild_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat history at the end of a session, honouring %undo and %reset."""
    history: list[dict[str, Any]] = []
    for record in records:
        if record.get("type") == "message":
            history.append(record["message"])
        elif record.get("type") == "history_truncate":
            del history[int(record["length"]) :]
    return history


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    path: Path
    started: float
    model: str
    task: str
    status: str
    blocks: int


def summarize(path: Path) -> SessionInfo:
    records = list(read_records(path))
    start = next((r for r in records if r.get("type") == "session"), {})
    task = next(
        (
            str(r["message"].get("content") or "")
            for r in records
            if r.get("type") == "message" and r["message"].get("role") == "user"
        ),
        "",
    )
    ends = [r for r in records if r.get("type") == "event" and r.get("event") == "end"]
    results = [r for r in records if r.get("type") == "event" and r.get("event") == "result"]
    return SessionInfo(
        session_id=path.stem,
        path=path,
        started=float(start.get("t", path.stat().st_mtime)),
        model=str(start.get("model", "?")),
        task=task.splitlines()[0] if task else "",
        status=str(ends[-1].get("status")) if ends else "open",
        blocks=len(results),
    )


def list_sessions(sessions_dir: Path) -> list[SessionInfo]:
    if not sessions_dir.is_dir():
        return []
    infos = []
    for path in sessions_dir.glob("*.jsonl"):
        if path.is_symlink() or not path.is_file():
            continue
        infos.append(summarize(path))
    return sorted(infos, key=lambda info: info.started)


def find_session(sessions_dir: Path, session_id: str) -> Path:
    """A session file by id, or a unique prefix of one."""
    exact = session_path(sessions_dir, session_id) if _SAFE_ID.match(session_id) else None
    if exact and exact.is_file():
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


def save_markdown(messages: list[dict[str, Any]], path: Path) -> Path:
    """Write a conversation as markdown; never follows a symlink at ``path``."""
    lines: list[str] = []
    for message in messages:
        role = message.get("role", "?")
        if role == "system":
            continue
        lines.append(f"## {role}\n")
        lines.append(str(message.get("content") or "").rstrip() + "\n")
        for call in message.get("tool_calls") or []:
            lines.append(f"```json\n{call['function']['arguments']}\n```\n")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if not _is_regular(fh.fileno()):
            raise ConfigError(f"{path} is not a regular file")
        fh.write("\n".join(lines))
    return path
