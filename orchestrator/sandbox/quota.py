"""Quotas: how many sandboxes one user, and all users, may run at once on this host.

The count is taken from the engine itself (containers labelled ``oi.managed``, by
``oi.owner``), so it holds across every oi process. A user's own oi processes count and create
one at a time, under a lock in that user's private run folder (``paths.run_dir``): no other
user can hold it or plant anything there. Between users there is no shared lock (any shared
file could be held by anyone, stalling every oi on the host); instead a new container is
counted again once it exists, and if the host is then over its total, it is removed and the
creation tried again after a random pause. Of two users racing for the last slot at least one
sees the other's container, so the cap holds; the loser just waits its turn. A block over the
quota waits in line, and the caller is told that it waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker

from orchestrator.errors import SandboxError
from orchestrator.paths import run_dir
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.spec import LABEL_MANAGED, LABEL_OWNER, ContainerSpec

ROLE_LABEL = "oi.role"
Launched = TypeVar("Launched")


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


@contextlib.contextmanager
def user_lock(name: str, directory: Path | None = None) -> Iterator[None]:
    """An exclusive lock among this user's oi processes (in the private run folder)."""
    fd = os.open(
        (directory or run_dir()) / name,
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
        0o600,
    )
    try:
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

    def launch(
        self,
        spec: ContainerSpec,
        launch: Callable[[ContainerSpec], Launched],
        remove: Callable[[Launched], None],
        on_status: StatusCallback | None = None,
        make_room: Callable[[], bool] | None = None,
        *,
        wait: bool = True,
    ) -> Launched:
        """``launch(spec)`` once there is room, and return what it made.

        ``make_room`` may free slots this process holds itself (idle pre-started containers);
        it returns True if it freed any. With ``wait=False`` (pre-starting for a pool) a full
        quota raises ``QuotaFullError`` instead of waiting in line.
        """
        if self.caps.unlimited:
            return launch(spec)
        told = False
        while True:
            reason = None
            with user_lock("quota.lock"):
                reason = over_quota(*self.counts(), self.caps)
                if reason is None:
                    made = launch(spec)
                    mine, everyone = self.counts()
                    # Counted with the new one: room for it means room for one less.
                    reason = over_quota(mine - 1, everyone - 1, self.caps)
                    if reason is None:
                        return made
                    remove(made)  # another user's oi took the slot at the same moment
            if not wait:
                raise QuotaFullError(f"no sandbox slot free: {reason}")
            if make_room is not None and make_room():
                continue
            if on_status is not None and not told:
                on_status(f"waiting for a sandbox slot: {reason}")
                told = True
            time.sleep(self.poll_s * (0.5 + random.random()))  # noqa: S311  (jitter)


class QuotaLauncher:
    """A launcher that creates containers only within the quota, never waiting (for pools)."""

    def __init__(self, inner: Any, gate: QuotaGate, remove: Callable[[Any], None]) -> None:
        self._inner = inner
        self._gate = gate
        self._remove = remove

    def launch(self, spec: ContainerSpec) -> Any:
        return self._gate.launch(spec, self._inner.launch, self._remove, wait=False)
