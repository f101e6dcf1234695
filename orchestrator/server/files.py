"""Files of a session's workdir over the API: upload, list, download. Nothing leaves it.

A name from a client is a relative path checked by ``check_name`` (pure): no absolute path,
no ``..`` or ``.`` part, no empty part, no control characters, backslashes or NUL, at most
``MAX_NAME`` bytes. Folders are then entered one by one without following a symlink
(``fsafe.open_dir_beneath``) and the file itself is opened with ``O_NOFOLLOW``, so a symlink a
block planted in the workdir (``out -> /etc/passwd``) is never read or written through. FIFOs
and devices are refused without blocking on them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError, NotFoundError, RequestError, TooLargeError
from orchestrator.fsafe import O_READ, kind, open_dir_beneath

MAX_NAME = 1024
MAX_LISTED = 2000
_CHUNK = 1 << 16


def check_name(name: str) -> tuple[str, ...]:
    """Pure: the parts of a client's file name that stays inside the workdir, or a
    ``RequestError`` saying why not."""
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise RequestError(f"file name must be 1-{MAX_NAME} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise RequestError("file name has a control character; rename the file")
    if "\\" in name:
        raise RequestError("file name has a backslash; use / between folders")
    if name.startswith("/"):
        raise RequestError("file name must be relative to the workdir (no leading /)")
    parts = tuple(name.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise RequestError("file name must not have empty, '.' or '..' parts")
    return parts


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Workdir:
    """One session's workdir, as the API sees it."""

    root: Path

    @contextlib.contextmanager
    def _folder(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        try:
            with open_dir_beneath(self.root, parts, create=create, dir_mode=0o755) as fd:
                yield fd
        except ConfigError:
            raise NotFoundError("no such folder in the workdir (links are not followed)") from None

    def write(
        self, name: str, chunks: Iterator[bytes], limit: int, room: int | None = None
    ) -> FileEntry:
        """Write ``name`` from ``chunks``, at most ``limit`` bytes (else nothing is left); with
        ``room``, only while the workdir stays within that many bytes in all."""
        *parents, leaf = check_name(name)
        if room is not None:
            used = self.used_bytes()
            limit = min(limit, room - used)
            if limit <= 0:
                raise TooLargeError(
                    f"the workdir already holds {used} bytes, its limit is {room} "
                    "(workdir_max_bytes); delete files first"
                )
        temp = f".oi-upload-{secrets.token_hex(8)}.part"
        with self._folder(tuple(parents), create=True) as fd:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(temp, flags, 0o644, dir_fd=fd)
            written = 0
            try:
                with os.fdopen(out, "wb") as fh:
                    for chunk in chunks:
                        written += len(chunk)
                        if written > limit:
                            raise TooLargeError(
                                f"upload is larger than the {limit} bytes it may take "
                                "(your max_upload_bytes, or the room left under the "
                                "workdir's limit); split it or delete files"
                            )
                        fh.write(chunk)
                self._refuse_folder(fd, leaf)
                # rename replaces a planted symlink itself, never what it points to
                os.replace(temp, leaf, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=fd)
                raise
        return FileEntry(name, written, 0.0)

    @staticmethod
    def _refuse_folder(fd: int, leaf: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(leaf, dir_fd=fd, follow_symlinks=False).st_mode):
                raise RequestError(f"{leaf!r} is a folder in the workdir; choose a file name")

    def open(self, name: str, *, one_link: bool = False) -> tuple[int, int]:
        """A read descriptor and the size of the regular file ``name`` (with ``one_link``,
        also refused when it has other names: a hard link may come from outside)."""
        *parents, leaf = check_name(name)
        with self._folder(tuple(parents)) as fd:
            try:
                out = os.open(leaf, O_READ, dir_fd=fd)
            except FileNotFoundError:
                raise NotFoundError(f"no file {name!r} in the workdir") from None
            except OSError:
                raise NotFoundError(f"{name!r} is a link or unreadable; not served") from None
        info = os.fstat(out)
        if not stat.S_ISREG(info.st_mode):
            os.close(out)
            raise NotFoundError(f"{name!r} is {kind(info.st_mode)}, not a file; not served")
        if one_link and info.st_nlink != 1:
            os.close(out)
            raise NotFoundError(
                f"{name!r} has {info.st_nlink} hard links (one may be outside the workdir); "
                "not sent: copy it (cp) and name the copy"
            )
        os.set_blocking(out, True)
        return out, info.st_size

    def read_chunks(self, name: str) -> tuple[int, Iterator[bytes]]:
        fd, size = self.open(name)

        def chunks() -> Iterator[bytes]:
            with os.fdopen(fd, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk

        return size, chunks()

    def read(self, name: str, limit: int, *, one_link: bool = False) -> bytes:
        fd, size = self.open(name, one_link=one_link)
        with os.fdopen(fd, "rb") as fh:
            if size > limit:
                raise TooLargeError(f"{name!r} is larger than {limit} bytes")
            return fh.read(limit)

    def used_bytes(self) -> int:
        """What the workdir takes on disk (allocated blocks, as ``du``; links not followed)."""
        total = 0
        for top, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(top, name)).st_blocks * 512
        return total

    def list(self) -> list[FileEntry]:
        """Regular files under the workdir (links not followed, ``.oi`` left out), sorted."""
        found: list[FileEntry] = []
        for top, dirs, files in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not (top == str(self.root) and d == ".oi"))
            for name in sorted(files):
                path = os.path.join(top, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    rel = os.path.relpath(path, self.root)
                    found.append(FileEntry(rel, info.st_size, info.st_mtime))
                if len(found) >= MAX_LISTED:
                    return found
        return found
