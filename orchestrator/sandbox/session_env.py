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
removes it. Its size is bounded by ``env_max_bytes``: measured after each block (off the hot
path); a session over it runs no further block until it frees room, and the model is told so.
``oi gc`` removes environments unused for ``KEEP_DAYS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.fsafe import kind, private_dir, remove_tree
from orchestrator.sandbox.config import SessionEnvScope

KEEP_DAYS = 14.0
"""An environment nobody used for this long is removed by ``oi gc`` (and every oi start)."""
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


def env_size(path: Path) -> int:
    """Bytes the environment holds (allocated blocks, as ``du``), walked without following a
    link; unreadable folders a block made count as nothing more (oi reads as their owner or
    root)."""
    total = 0
    stack = [str(path)]
    while stack:
        folder = stack.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
    return total


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
