"""Folder trees deeper than PATH_MAX and than Python's recursion limit, made in a moment:
100-character names take a path past PATH_MAX (4,096) in 41 levels, and ``shallow_stack()``
lowers the recursion limit around the code under test, so that ``DEPTH`` levels are beyond it
(a recursive walk raises RecursionError; a path-based one fails with ENAMETOOLONG)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

NAME = "d" * 100
DEPTH = 300
"""30,300 characters of path; twice the stack ``shallow_stack`` leaves."""


def nest(top: Path, depth: int = DEPTH, *, name: str = NAME, mode: int = 0o755) -> int:
    """``depth`` folders inside each other below ``top`` (made by descriptor); returns an open
    descriptor of the deepest (the caller closes it)."""
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, mode, dir_fd=fd)
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


@contextlib.contextmanager
def shallow_stack(room: int = DEPTH // 2) -> Iterator[None]:
    """Python's recursion limit at ``room`` frames above the caller's, meanwhile."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + room)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)
