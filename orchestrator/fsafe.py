"""Host-side file handling that another user or a sandboxed block cannot redirect.

Everything oi creates, changes, reads or deletes on the host goes through here when the path
could hold something planted: a symlink (made by a block in the workdir, or by another local
user in a shared folder), a FIFO (an open would hang), a device. The rules:

- paths below a checked directory are walked one component at a time with ``O_NOFOLLOW``
  (``open_beneath``), so no symlink on the way is followed;
- files are opened ``O_NOFOLLOW | O_NONBLOCK`` and must turn out to be regular files (``fstat``);
- new files are written to a temporary name and renamed into place (``write_atomic``), so a
  link planted at the name is replaced, never written through;
- private state lives in directories checked to be ours: owned by us, not a link, and not
  writable by group or others (``private_dir``).

Errors are ``ConfigError`` naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from orchestrator.errors import ConfigError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_relative(name: str, where: str) -> tuple[str, ...]:
    """The parts of a relative path that stays below its root (no '..', not absolute)."""
    parts = Path(name).parts
    if not name or "\0" in name or Path(name).is_absolute() or not parts or ".." in parts:
        raise ConfigError(f"{where}: path {name!r} must be relative, without '..'")
    return parts


@contextlib.contextmanager
def open_dir_beneath(
    root: Path, parts: Iterable[str], *, create: bool = False, dir_mode: int = 0o700
) -> Iterator[int]:
    """A descriptor of ``root/parts...`` reached without following a symlink on the way
    (``root`` itself is opened with O_NOFOLLOW too); folders are made (``dir_mode``) with
    ``create``."""
    try:
        fd = os.open(root, _DIR)
    except OSError as exc:
        raise ConfigError(f"{root}: {exc.strerror}; it must be a real folder") from None
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_mode, dir_fd=fd)
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                raise ConfigError(
                    f"{root}: {part} is not a folder oi may enter ({exc.strerror}; a symlink "
                    "is never followed there)"
                ) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _regular(fd: int, path: Path) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is {kind(info.st_mode)}, not a regular file; remove it")
    return info


def read_regular(
    path: Path, *, limit: int = 16 << 20, dir_fd: int | None = None, follow: bool = False
) -> bytes:
    """The bytes of a regular file, never blocking on a FIFO or reading a device; never
    through a symlink unless ``follow``. ``FileNotFoundError`` when there is none."""
    flags = O_READ & ~os.O_NOFOLLOW if follow else O_READ
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise ConfigError(f"{path} is a symlink; oi does not follow it here") from None
        raise
    info = _regular(fd, path)
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > limit:
            raise ConfigError(f"{path} is larger than {limit} bytes")
        return fh.read(limit + 1)[:limit]


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, dir_fd: int | None = None) -> None:
    """Write ``path`` through a new temporary file renamed over it: a symlink planted at
    ``path`` is replaced, never followed; nobody ever sees a half-written file."""
    base = f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    # With ``dir_fd`` both names are relative to that (checked) folder.
    name, temp = (path.name, base) if dir_fd is not None else (str(path), str(path.parent / base))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise ConfigError(f"cannot write {path}: {exc.strerror}; check the folder") from None


def write_beneath(
    root: Path, relative: str, data: bytes, mode: int = 0o600, dir_mode: int = 0o700
) -> Path:
    """Write ``root/relative`` atomically, reaching its folder without following symlinks and
    making missing folders (``dir_mode``). Returns the path written."""
    *parents, leaf = check_relative(relative, str(root))
    with open_dir_beneath(root, parents, create=True, dir_mode=dir_mode) as fd:
        try:
            info = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{root / relative} is a folder; choose a file name")
        write_atomic(root / relative, data, mode, dir_fd=fd)
    return root / relative


def owned_private(info: os.stat_result) -> bool:
    """Owned by us and writable by nobody else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _only_writer(info: os.stat_result, owners: frozenset[int]) -> str | None:
    """Why someone outside ``owners`` could change this file or folder, or None."""
    if info.st_uid not in owners:
        return f"it belongs to uid {info.st_uid}"
    if info.st_mode & stat.S_IWOTH and not (stat.S_ISDIR(info.st_mode) and info.st_mode & 0o1000):
        return f"anyone may write it (mode {stat.S_IMODE(info.st_mode):o})"
    if info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid, owners):
        return f"its group (gid {info.st_gid}) may write it (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _private_group(gid: int, owners: frozenset[int]) -> bool:
    """A group whose members are all owners (a user's own group, as with umask 002)."""
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return False
    members |= {entry.pw_name for entry in pwd.getpwall() if entry.pw_gid == gid}
    names = set()
    for uid in owners:
        with contextlib.suppress(KeyError):
            names.add(pwd.getpwuid(uid).pw_name)
    return members <= names


def read_owned(path: Path, *, owners: frozenset[int], what: str, limit: int = 1 << 20) -> bytes:
    """The bytes of a file that only ``owners`` (and root) can have written: the file and every
    folder above it (as OpenSSH checks ``authorized_keys``). A symlink is followed, and the
    place it leads to is what is checked. ``FileNotFoundError`` when there is none; a
    ``ConfigError`` naming the path, why and the fix when someone else could have written it."""
    owners = owners | {0}
    fd = os.open(path, O_READ & ~os.O_NOFOLLOW)
    try:
        info = _regular(fd, path)
        problem = _only_writer(info, owners)
        real = Path(os.path.realpath(path))
        for folder in real.parents:
            if problem is not None:
                break
            problem = _only_writer(os.lstat(folder), owners)
            if problem is not None:
                problem = f"its folder {folder}: {problem.removeprefix('it ')}"
        if problem is not None:
            raise ConfigError(
                f"{what} {path} could have been written by another user ({problem}); oi will "
                "not use it: make it and its folders yours and writable only by you "
                "(chown, chmod go-w)"
            )
        with os.fdopen(os.dup(fd), "rb") as fh:
            if info.st_size > limit:
                raise ConfigError(f"{what} {path} is larger than {limit} bytes")
            return fh.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """A directory for oi's own state: created with ``mode`` (with missing parents 0700) when
    absent; refused when it is a link, not ours, or writable by group or others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is {kind(info.st_mode)}, not a folder oi made; remove it")
    if not owned_private(info):
        raise ConfigError(
            f"{path} belongs to uid {info.st_uid} or is writable by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); oi keeps its state only in a folder of its own: "
            "remove it, or fix its owner and mode"
        )
    return path


class Descent:
    """What ``descend`` does in each folder (subclass and override)."""

    def enter(self, fd: int, path: Path) -> Iterable[str]:
        """Handle the folder open at ``fd``; return the names of the subfolders to walk into."""
        raise NotImplementedError

    def open_child(self, fd: int, name: str, path: Path) -> int | None:
        """Open subfolder ``name`` of the folder at ``fd`` (None: skip it). Never follows a
        symlink: one swapped in since ``enter`` listed it fails with ELOOP or ENOTDIR."""
        try:
            return os.open(name, _DIR, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise

    def leave(self, parent_fd: int, name: str, path: Path) -> None:
        """After subfolder ``name`` and everything below it was walked."""


def open_real_dir(path: Path) -> int:
    """Open the folder at ``path``, which must hold no symlink at all (a resolved path): each
    component is opened with ``O_NOFOLLOW``, so a link swapped in since ``path`` was resolved
    is refused (``ConfigError``), never followed."""
    if not path.is_absolute():
        raise ConfigError(f"{path} is not an absolute path")
    fd = os.open("/", _DIR)
    try:
        for part in path.parts[1:]:
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfigError(
                        f"{path} changed while oi used it: {part} is no longer a folder; "
                        "run the command again"
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def symlinks_on_the_way(path: Path, limit: int = 40) -> list[Path]:
    """The symlinks met resolving ``path`` (absolute), each named where it really is (its
    folder resolved), in the order they are met. A part that does not exist ends the walk."""
    found: list[Path] = []
    current = Path("/")
    parts = list(reversed(path.parts[1:]))
    while parts:
        name = parts.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        try:
            info = os.lstat(candidate)
        except OSError:
            break
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        found.append(candidate)
        if len(found) > limit:
            break
        target = Path(os.readlink(candidate))
        if target.is_absolute():
            current = Path("/")
            parts.extend(reversed(target.parts[1:]))
        else:
            parts.extend(reversed(target.parts))
    return found


def descend(root: Path, how: Descent, *, real: bool = False) -> None:
    """Walk the folder tree at ``root`` without recursion and without following a symlink,
    however deep it is: one folder is open at a time, and the walk climbs back through ``..``,
    checking it reaches the very folder it came from (a folder moved meanwhile raises
    ``ConfigError``). No path is ever resolved, so depth beyond PATH_MAX does not matter.
    ``real``: ``root`` is a resolved path, opened with no symlink followed on the way."""
    fd = open_real_dir(root) if real else os.open(root, _DIR)
    info = os.fstat(fd)
    # One frame per open level: its name, identity, path (for messages) and the subfolders
    # still to walk (None until ``enter`` ran).
    frames: list[tuple[str, tuple[int, int], Path, list[str] | None]] = [
        ("", (info.st_dev, info.st_ino), root, None)
    ]
    try:
        while frames:
            name, ident, path, pending = frames[-1]
            if pending is None:
                pending = list(how.enter(fd, path))
                pending.reverse()
                frames[-1] = (name, ident, path, pending)
            if pending:
                child = pending.pop()
                child_fd = how.open_child(fd, child, path / child)
                if child_fd is None:
                    continue
                child_info = os.fstat(child_fd)
                os.close(fd)
                fd = child_fd
                frames.append((child, (child_info.st_dev, child_info.st_ino), path / child, None))
                continue
            frames.pop()
            if not frames:
                break
            parent_fd = os.open("..", _DIR, dir_fd=fd)
            parent = os.fstat(parent_fd)
            os.close(fd)
            fd = parent_fd
            if (parent.st_dev, parent.st_ino) != frames[-1][1]:
                raise ConfigError(
                    f"{frames[-1][2]} was moved while oi walked it; run the command again"
                )
            how.leave(fd, name, path)
    finally:
        os.close(fd)


def open_up(fd: int, name: str) -> None:
    """Give the folder ``name`` (in the folder at ``fd``) back to its owner: u+rwx, set
    through an ``O_PATH`` descriptor so a symlink is never followed. For oi's own folders
    (environments, task folders) that a block made unreadable or unwritable."""
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        mode = stat.S_IMODE(os.fstat(path_fd).st_mode)
        os.chmod(f"/proc/self/fd/{path_fd}", mode | stat.S_IRWXU)
    finally:
        os.close(path_fd)


class OwnDescent(Descent):
    """A walk of oi's own folders (environments, task folders): a subfolder a block made
    unreadable is opened back up (``open_up``) and opened again; ``unopenable`` decides what a
    subfolder that still cannot be opened means."""

    def open_child(self, fd: int, name: str, path: Path) -> int | None:
        try:
            return super().open_child(fd, name, path)
        except PermissionError:
            with contextlib.suppress(OSError):
                open_up(fd, name)
        try:
            return super().open_child(fd, name, path)
        except OSError as exc:
            return self.unopenable(fd, name, path, exc)

    def unopenable(self, fd: int, name: str, path: Path, exc: OSError) -> int | None:
        raise exc


class _Remover(OwnDescent):
    def enter(self, fd: int, path: Path) -> list[str]:
        info = os.fstat(fd)
        if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            with contextlib.suppress(OSError):  # a block made it unwritable
                os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
        folders = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                    continue
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise _cannot_remove(path / entry.name, exc) from None
        return folders

    def unopenable(self, fd: int, name: str, path: Path, exc: OSError) -> int | None:
        raise _cannot_remove(path, exc) from None

    def leave(self, parent_fd: int, name: str, path: Path) -> None:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _cannot_remove(path, exc) from None


def _cannot_remove(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot remove {path} ({exc.strerror}); remove it by hand")


def remove_tree(path: Path) -> None:
    """Remove what is at ``path`` without following symlinks, also folders a sandbox made
    unreadable or unwritable, however deep. Raises ``ConfigError`` naming what could not be
    removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return
    if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        with contextlib.suppress(OSError):
            parent = os.open(path.parent, _DIR)
            try:
                open_up(parent, path.name)
            finally:
                os.close(parent)
    try:
        descend(path, _Remover())
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _cannot_remove(path, exc) from None


# --- copying folders (batch workdir templates, replay's --workdir-from) ---------------------


def _template_root(src: Path) -> os.stat_result:
    """lstat of a workdir template, which must be a real folder (not a link to one)."""
    try:
        root = os.lstat(src)
    except OSError as exc:
        raise ConfigError(f"workdir template {src}: {exc.strerror}; check the path") from None
    if not stat.S_ISDIR(root.st_mode):
        what = "a symlink" if stat.S_ISLNK(root.st_mode) else kind(root.st_mode)
        raise ConfigError(
            f"workdir template {src} is {what}, not a folder; point 'workdir' at a real folder"
        )
    return root


def copy_tree(src: Path, dst: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Copy folder ``src`` to a new folder ``dst`` without following any symlink.

    Symlinks are copied as symlinks (their targets are not read); FIFOs, sockets and devices
    are refused with ``ConfigError`` (never opened). Modes (minus setuid/setgid/sticky) and
    modification times are kept; with ``owner`` every copy gets that uid:gid.
    """
    root = _template_root(src)
    os.mkdir(dst, 0o700)
    _copy_children(src, dst, owner)
    _finish_entry(dst, root, owner)


def check_tree(src: Path) -> None:
    """Refuse a template that holds FIFOs, sockets or devices before anything runs (lstat
    only). Raises ``ConfigError`` naming the first offending path."""
    _template_root(src)
    pending = [src]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    raise _special_file(Path(entry.path), mode)


def _special_file(path: Path, mode: int) -> ConfigError:
    return ConfigError(
        f"workdir template holds {kind(mode)} at {path}; templates may hold only files, "
        "folders and symlinks: remove it"
    )


def _copy_children(src: Path, dst: Path, owner: tuple[int, int] | None) -> None:
    """Copy what is below ``src`` into ``dst`` (without recursion: a template may be deep).
    Folders get their mode and times after their contents, deepest first."""
    pending = [(src, dst)]
    folders: list[tuple[Path, os.stat_result]] = []
    while pending:
        source_dir, target_dir = pending.pop()
        with os.scandir(source_dir) as iterator:
            entries = sorted(iterator, key=lambda e: e.name)
        for entry in entries:
            source = Path(entry.path)
            target = target_dir / entry.name
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISDIR(info.st_mode):
                os.mkdir(target, 0o700)
                pending.append((source, target))
                folders.append((target, info))
                continue
            elif stat.S_ISREG(info.st_mode):
                _copy_file(source, target, info)
            else:
                raise _special_file(source, info.st_mode)
            _finish_entry(target, info, owner)
    for target, info in reversed(folders):
        _finish_entry(target, info, owner)


def _copy_file(source: Path, target: Path, info: os.stat_result) -> None:
    fd_in = os.open(source, O_READ)
    try:
        opened = os.fstat(fd_in)
        # Swapped for something else between the scan and the open: refuse, never read it.
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise ConfigError(f"{source} changed while it was being copied; try again")
        fd_out = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd_out, "wb") as out, os.fdopen(os.dup(fd_in), "rb") as src_file:
            shutil.copyfileobj(src_file, out, 1 << 20)
    finally:
        os.close(fd_in)


def _finish_entry(path: Path, info: os.stat_result, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o777)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def write_inline_files(
    workdir: Path, files: Iterable[tuple[str, str]], *, owner: tuple[int, int] | None = None
) -> None:
    """Write a task's inline files into ``workdir``. Folders are walked with ``O_NOFOLLOW``
    so a symlink from the template cannot redirect a write outside the workdir."""
    for name, content in files:
        check_relative(name, "files")
        *parents, leaf = Path(name).parts
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parents:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"inline file {name}: {part} in the workdir is not a folder "
                        f"({exc.strerror}); rename the file or fix the template"
                    ) from None
                os.close(fd)
                fd = child
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                out = os.open(leaf, flags | os.O_NONBLOCK, 0o644, dir_fd=fd)
            except OSError as exc:
                raise ConfigError(
                    f"inline file {name}: cannot write it ({exc.strerror}); "
                    "a symlink or special file of that name is in the template"
                ) from None
            with os.fdopen(out, "wb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ConfigError(f"inline file {name}: not a regular file in the template")
                fh.write(content.encode())
            if owner is not None:
                os.chown(leaf, *owner, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)


def adopted_owner(reference: Path) -> tuple[int, int] | None:
    """As root, the uid:gid of ``reference`` when that is not root, so a sandbox runs as that
    user (not uid 0) on its copy; otherwise None (the copy is already the user's)."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(reference)
    except OSError:
        return None
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None
