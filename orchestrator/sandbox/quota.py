"""Quotas: how many sandboxes one user, and all users, may run at once on this host.

The count is taken from the engine itself (containers labelled ``oi.managed``, by
``oi.owner``), so it holds across every oi process. Counting and creating happen under one
host-wide file lock, so two processes cannot both take the last slot. A block over the quota
waits in line, and the caller is told that it waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from orchestrator.errors import SandboxError
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.spec import LABEL_MANAGED, LABEL_OWNER, ContainerSpec

ROLE_LABEL = "oi.role"


class QuotaFullError(SandboxError):
    """No slot is free now (only raised when the caller asked not to wait)."""


StatusCallback = Callable[[str], None]


@dataclass(frozen=True)
class QuotaCaps:
    per_user: int | None
    total: int | None

    @property
    def unlimited(self) -> bool:
        return self.per_user is None and self.total is None


def over_quota(mine: int, everyone: int, caps: QuotaCaps) -> str | None:
    """Pure: why one more sandbox is not allowed now, or None if it is."""
    if caps.per_user is not None and mine >= caps.per_user:
        return f"{mine} of your {caps.per_user} sandboxes are in use"
    if caps.total is not None and everyone >= caps.total:
        return f"all {caps.total} sandboxes of this host are in use"
    return None


def run_dir() -> Path:
    """Host-wide state shared by all oi users (locks, leases): sticky and world-writable."""
    path = Path(os.environ.get("OI_RUN_DIR", "/tmp/oi-run"))
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        path.chmod(0o1777)
    return path


@contextlib.contextmanager
def host_lock(name: str, directory: Path | None = None) -> Iterator[None]:
    """An exclusive lock shared by every oi process on this host (``OI_RUN_DIR``)."""
    fd = os.open(
        (directory or run_dir()) / name,
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
    )
    try:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class QuotaGate:
    """Admits container creations while the user and the host are under their caps."""

    def __init__(
        self,
        client: docker.DockerClient,
        caps: QuotaCaps,
        owner_uid: int,
        *,
        poll_s: float = 0.5,
    ) -> None:
        self._api = client.api
        self.caps = caps
        self.owner_uid = owner_uid
        self.poll_s = poll_s

    def counts(self) -> tuple[int, int]:
        with engine_errors("counting sandboxes for the quota"):
            containers = self._api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
        sandboxes = [c for c in containers if (c.get("Labels") or {}).get(ROLE_LABEL) != "proxy"]
        mine = sum(1 for c in sandboxes if c["Labels"].get(LABEL_OWNER) == str(self.owner_uid))
        return mine, len(sandboxes)

    @contextlib.contextmanager
    def admit(
        self,
        spec: ContainerSpec,
        on_status: StatusCallback | None = None,
        make_room: Callable[[], bool] | None = None,
        *,
        wait: bool = True,
    ) -> Iterator[None]:
        """Hold the host lock while a container for ``spec`` is created, once there is room.

        ``make_room`` may free slots this process holds itself (idle pre-started
        containers); it returns True if it freed any. With ``wait=False`` (pre-starting for a
        pool) a full quota raises ``QuotaFullError`` instead of waiting in line.
        """
        if self.caps.unlimited:
            yield
            return
        told = False
        while True:
            with host_lock("quota.lock"):
                mine, everyone = self.counts()
                reason = over_quota(mine, everyone, self.caps)
                if reason is None:
                    yield
                    return
            if not wait:
                raise QuotaFullError(f"no sandbox slot free: {reason}")
            if make_room is not None and make_room():
                continue
            if on_status is not None and not told:
                on_status(f"waiting for a sandbox slot: {reason}")
                told = True
            time.sleep(self.poll_s)


class QuotaLauncher:
    """A launcher that creates containers only within the quota, never waiting (for pools)."""

    def __init__(self, inner: Any, gate: QuotaGate) -> None:
        self._inner = inner
        self._gate = gate

    def launch(self, spec: ContainerSpec) -> Any:
        with self._gate.admit(spec, wait=False):
            return self._inner.launch(spec)
