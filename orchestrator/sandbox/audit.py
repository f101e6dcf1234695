"""The audit trail: one structlog JSON line per block, for admins of shared servers.

Each line says who ran what where and how it ended: user (and ``server_user``, the user of
``oi serve`` a block ran for), session, code sha256, language,
image, limits, network tier, runtime, outcome, duration. Nothing secret goes in: no code, no
output, no environment values. The file is opened append-only and never through a symlink.
"""

from __future__ import annotations

import os
import pwd
import threading
from pathlib import Path
from typing import Any

import structlog

from orchestrator.errors import PolicyError


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class AuditLog:
    """Appends audit records to ``path`` (created 0640 if missing)."""

    def __init__(self, path: Path, *, server_user: str = "") -> None:
        self.path = path
        self.server_user = server_user  # oi serve's user, who the block ran for
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, flags, 0o640)
        except OSError as exc:
            # Fail closed: a policy that asks for an audit trail is not met without one.
            raise PolicyError(
                f"cannot write the audit log {path}: {exc.strerror}; the admin must make it "
                "writable for oi users (or change audit_log)"
            ) from None
        self._lock = threading.Lock()
        self._logger = structlog.wrap_logger(
            _FdLogger(self._fd, self._lock),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )

    def block(self, **record: Any) -> None:
        """One line for one block (see the module docstring for the fields)."""
        uid = int(record.pop("uid", os.getuid()))
        if self.server_user:
            record["server_user"] = self.server_user
        self._logger.info("block", uid=uid, user=_user_name(uid), **record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _FdLogger:
    """A structlog logger writing whole lines with one write(2) each (atomic with O_APPEND)."""

    def __init__(self, fd: int, lock: threading.Lock) -> None:
        self._fd = fd
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            os.write(self._fd, (message + "\n").encode())

    info = msg
