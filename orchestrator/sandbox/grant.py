"""Blocks never run as host uid 0. When oi runs as root in a folder root owns (CI's usual case),
a block runs as ``SANDBOX_UID``, a uid no account has, and oi lets it write the workdir through
its group.

Why not root: a block running as host uid 0 could leave a setuid-root copy of a shell in the
workdir for any local user to run (the seccomp profile refuses the setuid bit, but nothing
else should have to hold that line alone). Why the group and not an ACL: gVisor checks
permissions itself from the mode bits and ignores POSIX ACLs, so only the mode bits work under
both runtimes. The grant gives every folder and regular file of the workdir the group
``SANDBOX_GID`` (a gid no group has: nobody else gains anything) and group read/write (and
search/execute where the owner has it). Owners are unchanged, so ``git`` still sees root's
repository; ``git`` does not track groups or group write. Symlinks are never followed, and
FIFOs, sockets, devices, setuid/setgid files and files with more than one hard link (the same
file may have a name outside the workdir) are left alone, and so is everything another user
owns (a folder of theirs is not even entered): in a shared folder, root's oi must not open
another user's files to the blocks.

Files a block creates belong to ``SANDBOX_UID``; root can read and change them as ever.
Granting is idempotent: a later session finds the workdir granted and changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.fsafe import Descent, descend

SANDBOX_UID = 2_000_000_000
SANDBOX_GID = 2_000_000_000
"""A uid and gid no account on a normal host has (above the subordinate id ranges of user
namespaces, below 2^31). ``check_dedicated`` refuses to run if one does."""

_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)
_SETID = stat.S_ISUID | stat.S_ISGID


def check_dedicated(uid: int = SANDBOX_UID, gid: int = SANDBOX_GID) -> None:
    """Refuse when an account or group holds the sandbox's ids (it would share the grant)."""
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    holders = []
    with contextlib.suppress(KeyError):
        holders.append(f"user {pwd.getpwuid(uid).pw_name!r}")
    with contextlib.suppress(KeyError):
        holders.append(f"group {grp.getgrgid(gid).gr_name!r}")
    if holders:
        raise ConfigError(
            f"oi runs blocks of root as uid/gid {uid}, but {' and '.join(holders)} has it on "
            "this host; run oi as a normal user, or give the workdir to one (blocks then run "
            "as its owner)"
        )


def granted_mode(mode: int, *, directory: bool) -> int:
    """The mode bits a workdir entry gets (pure): group read and write, and group search or
    execute where the owner has it (always for a folder)."""
    bits = stat.S_IMODE(mode) | stat.S_IRGRP | stat.S_IWGRP
    if directory or mode & stat.S_IXUSR:
        bits |= stat.S_IXGRP
    return bits


@dataclass
class GrantResult:
    entries: int = 0  # folders and regular files seen
    changed: int = 0  # of them, given the group or its bits now
    skipped: int = 0  # left as they are: setuid/setgid, hard-linked, or another user's


def grant_workdir(root: Path, gid: int = SANDBOX_GID) -> GrantResult:
    """Give ``root`` (a resolved path) and everything below it to the group ``gid`` (see the
    module docstring).

    Walks with descriptors (``O_NOFOLLOW`` at every step, ``fsafe.descend``: no recursion, any
    depth), so a symlink planted anywhere - by a block, or by someone racing the walk - is
    never followed. Raises ``ConfigError`` naming the entry when the filesystem refuses
    (read-only, no group support).
    """
    result = GrantResult()
    try:
        descend(root, _Granter(gid, result), real=True)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"workdir {root}: {exc.strerror}") from None
    return result


class _Granter(Descent):
    def __init__(self, gid: int, result: GrantResult) -> None:
        self.gid = gid
        self.result = result
        self.owner: int | None = None  # the workdir's owner: only their entries are granted

    def enter(self, fd: int, path: Path) -> list[str]:
        gid, result = self.gid, self.result
        info = os.fstat(fd)
        if self.owner is None:
            self.owner = info.st_uid
        elif info.st_uid not in (self.owner, SANDBOX_UID):
            result.entries += 1
            result.skipped += 1  # another user's folder: neither granted nor entered
            return []
        _grant(fd, path, gid, result, directory=True, info=info, owner=self.owner)
        folders, files = [], []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue  # never open a FIFO, socket or device
                # A file already granted (a later session) is not even opened.
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if info.st_gid == gid and stat.S_IMODE(info.st_mode) == granted_mode(
                        info.st_mode, directory=False
                    ):
                        result.entries += 1
                        continue
                files.append(entry.name)
        for name in files:
            try:
                file_fd = os.open(name, _FILE, dir_fd=fd)
            except OSError as exc:
                # Gone meanwhile, or swapped for a symlink (ELOOP) or something else.
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                    continue
                raise _cannot_open(path / name, exc) from None
            try:
                info = os.fstat(file_fd)
                if stat.S_ISREG(info.st_mode):
                    _grant(
                        file_fd,
                        path / name,
                        gid,
                        result,
                        directory=False,
                        info=info,
                        owner=self.owner,
                    )
            finally:
                os.close(file_fd)
        return folders

    def open_child(self, fd: int, name: str, path: Path) -> int | None:
        try:
            return super().open_child(fd, name, path)
        except OSError as exc:
            raise _cannot_open(path, exc) from None


def _cannot_open(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot open {path} to grant it: {exc.strerror}")


def _grant(
    fd: int,
    path: Path,
    gid: int,
    result: GrantResult,
    *,
    directory: bool,
    info: os.stat_result | None = None,
    owner: int | None = None,
) -> None:
    info = info or os.fstat(fd)
    result.entries += 1
    if owner is not None and info.st_uid not in (owner, SANDBOX_UID):
        result.skipped += 1  # another user's: not root's to open to the blocks
        return
    if not directory and info.st_mode & _SETID:
        result.skipped += 1  # a change of group would clear the bits: not ours to decide
        return
    if not directory and info.st_nlink > 1:
        # The same file under another name, maybe outside the workdir (a hard link made by
        # root): giving it to the group would reach there too.
        result.skipped += 1
        return
    mode = granted_mode(info.st_mode, directory=directory)
    if info.st_gid == gid and stat.S_IMODE(info.st_mode) == mode:
        return
    try:
        if info.st_gid != gid:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise ConfigError(
            f"cannot let the sandbox write {path} ({exc.strerror}); oi runs as root, so blocks "
            f"run as uid {SANDBOX_UID} and need the workdir's group: run oi as a normal user, "
            "or give the workdir to one"
        ) from None
    result.changed += 1
