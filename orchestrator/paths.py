"""Where a user's files are: the home and the XDG base directories, read from the environment
with the care a tool run inside untrusted folders needs (no relative paths)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The user's home: ``$HOME`` when it is an absolute path, else the password database's
    (a relative ``HOME=.`` would make a repository's folders the user's own)."""
    value = os.environ.get("HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    import pwd  # noqa: PLC0415

    return Path(pwd.getpwuid(os.geteuid()).pw_dir)


def xdg_dir(variable: str, default: str) -> Path:
    """An XDG base directory; relative values are ignored, as the XDG spec says."""
    value = os.environ.get(variable, "")
    return Path(value) if value and os.path.isabs(value) else home() / default
