"""A session's environment: what a person expects a session to remember, kept around its
throwaway containers.

Every block still runs in a fresh container. Beside the workdir, each of the session's
sandboxes mounts one more host folder at ``/oi/env`` (``bootstrap.ENV_DIR``):

- ``venv/``: a Python virtual environment made on first use with access to the image's
  packages; ``pip install`` (in any language's block) installs there;
- ``npm/``: the npm prefix, so ``npm install -g`` packages are found by ``node`` and on PATH;
- ``state/``: the session's Python state (``sandbox-images/python/oi_state.py``), pickled and
  unpickled only inside the sandbox.

The folder lives under oi's data dir (``envs/``, private to the user), one per session, or one
per workdir with ``session_env = "workdir"`` (so a resumed chat, or the next ``oi run`` in the
same folder, finds its packages). It belongs to the uid the blocks run as. The host never runs,
imports or unpickles anything in it: oi makes it, measures it (without following links) and
removes it. What it holds is bounded by ``env_max_bytes`` while each block runs, as the workdir
quota bounds the workdir (``env_quota``: the same watcher, counting the folder's whole size):
a block that takes it past the bound is stopped, and the model is told. ``oi gc`` removes
environments unused for ``KEEP_DAYS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import time
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.fsafe import (
    kind,
    private_dir,
    read_regular,
    remove_tree,
)
from orchestrator.sandbox.config import SessionEnvScope
from orchestrator.sandbox.workdir_quota import Snapshot, TreeCounter, WorkdirLimits, WorkdirQuota

KEEP_DAYS = 14.0
"""An environment nobody used for this long is removed by ``oi gc`` (and, for a server's
users, by ``oi serve`` when it starts)."""
STATE_SECRET = "state.secret"  # noqa: S105 - a file name
"""Beside the environments: the user's secret that session state keys derive from."""
USED_SUFFIX = ".used"
"""Beside each environment (outside it, where no block writes): touched when a session uses it."""


def env_key(scope: SessionEnvScope, session_id: str, workdir: Path, owner_uid: int) -> str | None:
    """The name of the environment folder for a session (pure); None when ``scope`` is off."""
    if scope == "off":
        return None
    if scope == "workdir":
        place = f"{owner_uid}:{os.path.realpath(workdir)}".encode()
        return "workdir-" + hashlib.sha256(place).hexdigest()[:24]
    return "session-" + session_id


def state_key(envs_root: Path, session_id: str) -> str:
    """The key that seals ``session_id``'s Python state (hex): derived from a secret of the
    user's beside the environments (made on first use, 0600), so a resumed session gets its
    own key back and no other session (nor a block of one) can compute it."""
    private_dir(envs_root)
    path = envs_root / STATE_SECRET
    try:
        secret = read_regular(path, limit=64)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        secret = read_regular(path, limit=64)
    if len(secret) < 32:
        raise ConfigError(f"{path} is damaged (too short); remove it (kept Python states go)")
    return hmac.new(secret, session_id.encode(), hashlib.sha256).hexdigest()


def env_dir(envs_root: Path, key: str) -> Path:
    return envs_root / key


def prepare_env_dir(path: Path, uid: int, gid: int) -> Path:
    """Make (or check) the environment folder: a real folder, 0700, of the uid the blocks run
    as, inside a private ``envs`` folder of the user's. Marks it used."""
    private_dir(path.parent)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"session environment {path} is {kind(info.st_mode)}; remove it")
    if (info.st_uid, info.st_gid) != (uid, gid):
        if info.st_uid not in (uid, os.geteuid()):
            raise ConfigError(
                f"session environment {path} belongs to uid {info.st_uid}, not to the blocks' "
                f"uid {uid}; remove it"
            )
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    mark_used(path)
    return path


def mark_used(path: Path) -> None:
    stamp = path.with_name(path.name + USED_SUFFIX)
    fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def env_snapshot(path: Path) -> Snapshot:
    """What the environment holds (allocated blocks, as ``du``; entries), walked with
    descriptors at any depth and without following a link. A folder a block made unreadable
    is opened back up first (the blocks run as oi's uid, or oi is root): nothing in the
    environment can hide from its bound."""
    return TreeCounter(reopen=True).snapshot(path, one_device=True)


def env_size(path: Path) -> int:
    """Bytes the environment holds (see ``env_snapshot``)."""
    return env_snapshot(path).usage.bytes


def env_quota(path: Path, max_bytes: int | None, max_files: int | None) -> WorkdirQuota | None:
    """The bound on what the environment at ``path`` holds while blocks run (bytes, and
    entries: empty files would exhaust the host's inodes); None when nothing is bounded."""
    limits = WorkdirLimits(max_bytes, max_files)
    if limits.unlimited:
        return None
    return WorkdirQuota(path, limits, walker=env_snapshot, where="environment", absolute=True)


def sweep_envs(
    envs_root: Path, keep_days: float = KEEP_DAYS, now: float | None = None
) -> list[str]:
    """Remove environments not used for ``keep_days`` (by their ``.used`` stamp)."""
    if not envs_root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for stamp in envs_root.glob("*" + USED_SUFFIX):
        with contextlib.suppress(OSError):
            if now - stamp.lstat().st_mtime < keep_days * 86400:
                continue
            folder = stamp.with_name(stamp.name.removesuffix(USED_SUFFIX))
            with contextlib.suppress(ConfigError):
                remove_tree(folder)
                stamp.unlink()
                removed.append(folder.name)
    return removed
