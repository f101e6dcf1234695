"""What the host needs before a session's first block (I/O on the host and the engine):
the workdir checked against every home of the user, the session's environment folder, the
workdir grant for blocks of root, and a gVisor runtime that really is gVisor."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import docker

from orchestrator.errors import RuntimeMissingError
from orchestrator.paths import home
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.grant import SANDBOX_GID, SANDBOX_UID, check_dedicated, grant_workdir
from orchestrator.sandbox.session_env import prepare_env_dir
from orchestrator.sandbox.spec import ExtraMount, Identity, check_workdir, parse_mount


def homes() -> list[Path]:
    """Every folder that is this user's home: ``$HOME`` and the password database's (they can
    differ, and neither may be mounted)."""
    import pwd  # noqa: PLC0415

    found = [home()]
    with contextlib.suppress(KeyError):
        found.append(Path(pwd.getpwuid(os.geteuid()).pw_dir))
    return found


def prepare_host(identity: Identity, config: SandboxConfig) -> Identity:
    """What the host needs before a session's first block: its environment folder (owned by
    the uid its blocks run as), and, when they run as ``SANDBOX_UID`` (oi is root, the workdir
    root's), the workdir and read-write mounts granted to that uid's group (said once)."""
    if config.env_dir is not None:
        prepare_env_dir(config.env_dir, identity.uid, identity.gid)
    if not identity.grant:
        return identity
    check_dedicated()
    # Checked before anything is granted: a mount path a block redirected is refused here.
    folders = [config.workdir.resolve()] + [
        m.host for m in checked_mounts(config) if not m.read_only and m.host.is_dir()
    ]
    changed = sum(grant_workdir(folder).changed for folder in folders)
    if not changed:
        return identity
    return replace(
        identity,
        warning=(
            f"oi runs as root: blocks run as uid {SANDBOX_UID}, not root; {changed} file(s) and "
            f"folder(s) of {config.workdir} now have its group ({SANDBOX_GID}) and group write "
            "so blocks can change them (owners unchanged)"
        ),
    )


def checked_mounts(config: SandboxConfig) -> tuple[ExtraMount, ...]:
    """The session's extra mounts, each checked against every home of the user, and none
    reached through a symlink a block could have made (in the workdir or a read-write
    mount)."""
    user_homes = homes()
    workdir = config.workdir.resolve()
    first = [parse_mount(text, user_homes[0], [workdir]) for text in config.mounts]
    writable = [workdir] + [m.host for m in first if not m.read_only and m.host.is_dir()]
    mounts = tuple(parse_mount(text, user_homes[0], writable) for text in config.mounts)
    for mount in mounts:
        for user_home in user_homes[1:]:
            check_workdir(mount.host if mount.host.is_dir() else mount.host.parent, user_home)
    return mounts


def check_workdir_everywhere(workdir: Path) -> None:
    """The workdir against each of the user's homes (neither may be mounted)."""
    for user_home in homes():
        check_workdir(workdir, home=user_home)


def check_gvisor_runtime(api: docker.APIClient, runtime: str) -> None:
    """A gVisor sandbox runs only on a runtime that is gVisor: the name in the config must be
    registered, its program must be runsc (never runc under gVisor's name), and it must apply
    the container's seccomp profile (``--oci-seccomp``: oi's setuid/setgid denials)."""
    with engine_errors("reading the engine's runtimes"):
        runtimes = api.info().get("Runtimes") or {}
    if runtime not in runtimes:
        raise RuntimeMissingError(
            f"the gVisor runtime {runtime!r} is not registered with Docker, and oi will not "
            "fall back to a weaker one; install runsc and register it in "
            "/etc/docker/daemon.json ('sudo make setup' does), or use --isolation runc"
        )
    entry = runtimes[runtime] or {}
    program = str(entry.get("path") or "")
    if not os.path.basename(program).startswith("runsc"):
        raise RuntimeMissingError(
            f"Docker runtime {runtime!r} runs {program or 'an unnamed program'}, not "
            "gVisor's runsc: oi will not run a gVisor sandbox on it; fix its entry in "
            "/etc/docker/daemon.json (or the policy's gvisor_runtime)"
        )
    if "--oci-seccomp" not in (entry.get("runtimeArgs") or []):
        raise RuntimeMissingError(
            f"Docker runtime {runtime!r} (gVisor) is registered without --oci-seccomp, so "
            "a block could leave setuid files in the workdir; add it to its runtimeArgs in "
            "/etc/docker/daemon.json and reload dockerd ('sudo make setup' does both)"
        )
