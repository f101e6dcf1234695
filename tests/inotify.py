"""A minimal inotify watcher (Linux, through ctypes) for tests that must show a folder was not
even looked at: opening, listing or reading anything under it is an event, whatever its name.

A bind mount is the same inode on the host and in a runc container, so the host sees what the
container opens; under gVisor its gofer opens host files on the Sentry's behalf, which shows
the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_CLOSE_NOWRITE = 0x010
IN_OPEN = 0x020
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCHED = (
    IN_ACCESS
    | IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_OPEN
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
)
_NAMES = {
    IN_ACCESS: "ACCESS",
    IN_MODIFY: "MODIFY",
    IN_ATTRIB: "ATTRIB",
    IN_CLOSE_WRITE: "CLOSE_WRITE",
    IN_CLOSE_NOWRITE: "CLOSE_NOWRITE",
    IN_OPEN: "OPEN",
    IN_MOVED_FROM: "MOVED_FROM",
    IN_MOVED_TO: "MOVED_TO",
    IN_CREATE: "CREATE",
    IN_DELETE: "DELETE",
    IN_Q_OVERFLOW: "Q_OVERFLOW",
}
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len


@dataclass(frozen=True)
class Event:
    path: str  # relative to the watched root; "." for a directory itself
    mask: int

    def __str__(self) -> str:
        kinds = "|".join(name for bit, name in _NAMES.items() if self.mask & bit)
        return f"{kinds} {self.path}"


class TreeWatch:
    """Watches every directory under ``root`` (as it is when the watch starts)."""

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._root = root
        self._dirs: dict[int, str] = {}
        # Listed before watching: the walk's own listing must not count as an event.
        folders = [folder for folder, _subdirs, _files in os.walk(root)]
        for folder in folders:
            rel = os.path.relpath(folder, root)
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), WATCHED)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self._dirs[wd] = rel

    def events(self) -> list[Event]:
        """Everything that happened since the last call."""
        found: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return found
            except OSError as exc:  # pragma: no cover - EINTR etc.
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                folder = self._dirs.get(wd, "?")
                path = os.path.normpath(os.path.join(folder, name)) if name else folder
                found.append(Event(path, mask))

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> TreeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
