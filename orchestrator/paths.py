"""Where a user's files are: the home, the XDG base directories and oi's run folder, read from
the environment with the care a tool run inside untrusted folders needs (no relative paths)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
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


def run_dir() -> Path:
    """oi's folder for this user's locks: private, so no other user can plant or hold anything
    in it. ``$OI_RUN_DIR`` (absolute) if set; as root ``/run/oi`` (root's, 0755); otherwise
    ``$XDG_RUNTIME_DIR/oi``, or ``/tmp/oi-UID`` (0700) when there is no runtime dir. The folder
    is made, then checked: ours, a real folder, writable by nobody else."""
    from orchestrator.errors import ConfigError  # noqa: PLC0415
    from orchestrator.fsafe import private_dir  # noqa: PLC0415

    explicit = os.environ.get("OI_RUN_DIR", "")
    uid = os.geteuid()
    if explicit and os.path.isabs(explicit):
        return private_dir(Path(explicit))
    if uid == 0:
        return private_dir(Path("/run/oi" if os.path.isdir("/run") else "/var/run/oi"), 0o755)
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        with contextlib.suppress(OSError):
            info = os.lstat(runtime)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o077:
                return private_dir(Path(runtime) / "oi")
    try:
        return private_dir(Path(tempfile.gettempdir()) / f"oi-{uid}")
    except ConfigError:
        # Someone else made /tmp/oi-UID first (it is never followed or used): the home's
        # cache folder is nobody else's to plant in.
        fallback = xdg_dir("XDG_CACHE_HOME", ".cache") / "oi" / "run"
        try:
            return private_dir(fallback)
        except (ConfigError, OSError):
            raise ConfigError(
                f"{Path(tempfile.gettempdir()) / f'oi-{uid}'} is not a folder of yours (another "
                f"user may have made it), and {fallback} cannot be used either; set "
                "XDG_RUNTIME_DIR or OI_RUN_DIR to a folder only you can write"
            ) from None


def invoking_uid() -> int:
    """Who asked oi to run: the effective uid, or the user ``sudo`` says called it (the admin
    guide's rule runs oi as one shared account; ``SUDO_UID`` is sudo's own, not the user's, to
    set). Their sessions, records and environments are kept apart by it."""
    euid = os.geteuid()
    caller = os.environ.get("SUDO_UID", "")
    if caller.isdigit() and int(caller) != euid:
        return int(caller)
    return euid
