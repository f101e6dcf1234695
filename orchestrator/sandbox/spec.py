"""Pure translation: (language, sandbox config, who runs it) -> Docker container arguments.

Nothing here talks to Docker; every rule of SECURITY.md's "defaults" list lives in
``build_spec`` and is unit-tested by table. ``docker.py`` only executes what this returns.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.fsafe import symlinks_on_the_way
from orchestrator.languages import Language
from orchestrator.paths import invoking_uid
from orchestrator.sandbox.bootstrap import ENV_DIR, START_DIR, bootstrap_command
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.grant import SANDBOX_GID, SANDBOX_UID
from orchestrator.sandbox.seccomp import docker_security_opt

WORKSPACE = "/workspace"
LABEL_MANAGED = "oi.managed"
LABEL_SESSION = "oi.session"
LABEL_OWNER = "oi.owner"
LABEL_PID = "oi.pid"
LABEL_PID_START = "oi.pid_start"
LABEL_CREATED = "oi.created"
LABEL_LANGUAGE = "oi.language"

# The sandbox's own environment. Nothing of the host's is copied unless allowlisted.
BASE_ENVIRONMENT: Mapping[str, str] = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp/.matplotlib",
}

# Directories whose contents must never be mounted into a sandbox, relative to $HOME.
_SECRET_HOME_DIRS = (".ssh", ".aws", ".gnupg", ".docker", ".kube", ".config", ".azure")
# System paths that are never a workdir (they hold the Docker socket or the host's state).
_FORBIDDEN_SYSTEM_DIRS = ("/run", "/var/run", "/var/lib/docker", "/etc", "/proc", "/sys", "/dev")


CA_IN_SANDBOX = "/etc/ssl/certs/oi-ca-bundle.crt"


@dataclass(frozen=True)
class NetworkAttachment:
    """How a sandbox reaches the network beyond ``none`` (decided by settings and policy).

    ``network`` is the Docker network to join (an internal allowlist network, or the bridge);
    ``proxy_url`` the egress proxy of an allowlist; ``ca_bundle`` a host CA bundle to mount so
    TLS works on networks that intercept it; ``extra_hosts`` names that resolve to an address
    in this container only (an allowlist's TCP hosts: its proxy, which forwards them).
    """

    network: str
    proxy_url: str | None = None
    ca_bundle: Path | None = None
    extra_hosts: tuple[tuple[str, str], ...] = ()


def proxy_environment(proxy_url: str | None, ca_bundle: bool) -> dict[str, str]:
    """Variables that make ordinary tools (pip, npm, curl, requests, node) use the proxy and
    trust the mounted CA bundle."""
    env: dict[str, str] = {}
    if proxy_url:
        local = "localhost,127.0.0.1,::1"
        env.update(
            {
                "HTTP_PROXY": proxy_url,
                "HTTPS_PROXY": proxy_url,
                "http_proxy": proxy_url,
                "https_proxy": proxy_url,
                "NO_PROXY": local,
                "no_proxy": local,
                "npm_config_proxy": proxy_url,
                "npm_config_https_proxy": proxy_url,
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            }
        )
    if ca_bundle:
        env.update(
            {
                "PIP_CERT": CA_IN_SANDBOX,
                "REQUESTS_CA_BUNDLE": CA_IN_SANDBOX,
                "SSL_CERT_FILE": CA_IN_SANDBOX,
                "CURL_CA_BUNDLE": CA_IN_SANDBOX,
                "NODE_EXTRA_CA_CERTS": CA_IN_SANDBOX,
                "npm_config_cafile": CA_IN_SANDBOX,
            }
        )
    return env


@dataclass(frozen=True)
class Identity:
    """Who runs the block, for ``user=`` and the reaping labels."""

    uid: int
    gid: int
    owner_uid: int  # the invoking user's uid (label), may differ from uid when run as root
    pid: int
    pid_start: str  # start time of the oi process, so a reused pid is not mistaken for it
    warning: str | None = None  # something the person should hear once (the workdir grant)
    grant: bool = False  # blocks run as SANDBOX_UID: the workdir must be granted to its group


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one sandbox container (docker-py low-level arguments)."""

    language: Language
    image: str
    command: list[str]
    user: str
    environment: dict[str, str]
    labels: dict[str, str]
    host_config: dict[str, Any] = field(default_factory=dict)
    # Not the workdir: the wrappers and the interpreters waiting for their block start outside it
    # and only the program's process enters /workspace (bootstrap.py: nothing before approval).
    working_dir: str = START_DIR

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments for ``APIClient.create_container`` (minus ``host_config``)."""
        return {
            "image": self.image,
            "command": self.command,
            "user": self.user,
            "environment": self.environment,
            "labels": self.labels,
            "working_dir": self.working_dir,
            # The program arrives on stdin, then stdin closes: with detach=False docker-py sets
            # StdinOnce, so the daemon closes the container's stdin when we half-close ours.
            "stdin_open": True,
            "detach": False,
            "tty": False,
            # Never copy proxy settings from ~/.docker/config.json into a sandbox.
            "use_config_proxy": False,
            "network_disabled": self.host_config.get("network_mode") == "none",
        }


def check_workdir(workdir: Path, home: Path) -> None:
    """Refuse workdirs that would expose the host: /, $HOME or above, secrets, system dirs."""
    workdir = workdir.resolve()
    home = home.resolve()
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is not a directory; create it or pass --workdir DIR")
    if workdir == Path("/"):
        raise ConfigError("refusing to mount / into the sandbox; pass --workdir with a project dir")
    if home != Path("/") and (workdir == home or workdir in home.parents):
        raise ConfigError(
            f"refusing to mount {workdir}: it holds your home directory (keys, tokens); "
            "cd into a project folder or pass --workdir DIR"
        )
    for name in _SECRET_HOME_DIRS:
        secret = home / name
        if workdir == secret or secret in workdir.parents:
            raise ConfigError(
                f"refusing to mount {workdir}: it is inside {secret}, which holds credentials; "
                "pass --workdir with a project folder"
            )
    for system in _FORBIDDEN_SYSTEM_DIRS:
        system_path = Path(system)
        if workdir == system_path or system_path in workdir.parents:
            raise ConfigError(
                f"refusing to mount {workdir}: system directory {system} is never a workdir"
            )


@dataclass(frozen=True)
class ExtraMount:
    host: Path
    container: str
    read_only: bool


def parse_mount(text: str, home: Path, writable: Sequence[Path] = ()) -> ExtraMount:
    """``HOST[:CONTAINER][:rw|:ro]`` -> an extra mount, read-only unless ``:rw`` is said.

    The same rules as the workdir apply to HOST (never /, $HOME, secrets, system dirs, the
    Docker socket); CONTAINER defaults to /mnt/<name> and may not shadow /workspace or /tmp.
    HOST may not lead through a symlink that a block could have made: one inside a
    ``writable`` folder (the workdir, read-write mounts; resolved paths), or one of
    ``SANDBOX_UID``'s.
    """
    parts = text.split(":")
    mode = "ro"
    if parts[-1] in ("ro", "rw") and len(parts) > 1:
        mode = parts.pop()
    if len(parts) > 2 or not parts[0]:
        raise ConfigError(f"--mount {text!r}: use HOST[:CONTAINER][:rw]")
    host = Path(parts[0]).expanduser()
    if not host.exists():
        raise ConfigError(f"--mount {text!r}: {host} does not exist")
    check_no_block_links(text, host if host.is_absolute() else Path.cwd() / host, writable)
    host = host.resolve()
    if host.name == "docker.sock" or host.is_socket():
        raise ConfigError(
            f"--mount {text!r}: sockets (the Docker socket above all) are never mounted"
        )
    if host.is_dir():
        check_workdir(host, home)
    else:
        check_workdir(host.parent, home)
    container = parts[1] if len(parts) == 2 else f"/mnt/{host.name or 'data'}"
    if not container.startswith("/") or ".." in container.split("/"):
        raise ConfigError(f"--mount {text!r}: the container path must be absolute")
    if container == "/" or any(
        container == reserved or container.startswith(reserved + "/")
        for reserved in (WORKSPACE, "/tmp", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin")
    ):
        raise ConfigError(f"--mount {text!r}: {container} is reserved; use e.g. /mnt/NAME")
    return ExtraMount(host, container, mode == "ro")


def check_no_block_links(what: str, path: Path, writable: Sequence[Path]) -> None:
    """Refuse ``path`` (absolute, as the user wrote it) when resolving it meets a symlink a
    block could have made: a link inside a folder blocks write (a block turns the ``data``
    of ``--mount data:rw`` into a link to ``~/.local/bin``, and the next session would mount
    that), or one owned by the sandbox's uid."""
    for link in symlinks_on_the_way(path):
        inside = next((root for root in writable if root in link.parents), None)
        owner = os.lstat(link).st_uid
        if inside is None and owner != SANDBOX_UID:
            continue
        where = f"inside {inside}, where blocks write" if inside else "made by a block"
        raise ConfigError(
            f"--mount {what!r}: {link} is a symlink {where}, so a block may have pointed it "
            f"elsewhere (it leads to {os.path.realpath(link)}); remove the link, or mount "
            "the folder it leads to by its own path if you mean it"
        )


def resolve_identity(
    *,
    uid: int,
    gid: int,
    workdir_uid: int,
    workdir_gid: int,
    pid: int,
    pid_start: str,
) -> Identity:
    """The uid:gid the sandbox runs as, so files it writes in the workdir stay the user's.

    As root, the workdir owner's ids when that is not root; never uid 0: in a folder root owns,
    the dedicated ``SANDBOX_UID``, which gets the workdir through its group (``grant.py``).
    """
    if uid != 0:
        return Identity(uid, gid, uid, pid, pid_start)
    if workdir_uid != 0:
        return Identity(workdir_uid, workdir_gid, uid, pid, pid_start)
    return Identity(SANDBOX_UID, SANDBOX_GID, uid, pid, pid_start, grant=True)


START_HOOK_PREFIXES = ("LD_", "BASH_FUNC_", "GCONV_PATH", "MALLOC_")
"""Variables the dynamic linker, libc or bash act on as a process starts: passed in, they would
run code in the pre-started wrappers before anything is approved."""


def sandbox_environment(allowlist: list[str], host_env: Mapping[str, str]) -> dict[str, str]:
    """The base environment plus only the host variables named in ``allowlist`` (never one
    that acts at process start, see ``START_HOOK_PREFIXES``)."""
    env = dict(BASE_ENVIRONMENT)
    for name in allowlist:
        if name.startswith(START_HOOK_PREFIXES):
            raise ConfigError(
                f"--env {name}: variables the dynamic linker, libc or bash act on at start "
                f"({', '.join(p + '*' for p in START_HOOK_PREFIXES)}) are never passed into a "
                "sandbox; set it inside the block instead"
            )
        if name in host_env:
            env[name] = host_env[name]
    return env


GVISOR_PATH = "/opt/oi/gvisor-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH under gVisor: the images' busybox ``ls`` and ``stat`` first, because Debian bookworm's
runsc (2022-12) rejects the statx flags (AT_NO_AUTOMOUNT) of coreutils' ``ls -l`` and ``stat``
with "Invalid argument". An allowlisted ``--env PATH`` wins."""

GVISOR_TASKS_PER_PROCESS = 12
GVISOR_BASE_TASKS = 128
"""Host tasks a gVisor sandbox may hold: its Sentry's own threads (~55 when idle) and, on the
ptrace platform, a stub process with its threads per sandbox process (~10 each, measured: 250
concurrent `sleep`s hold ~2,450 host tasks; threads cost almost nothing). When the host cgroup's
limit is reached the Sentry dies, which contains the block but tells the user nothing, so the
limit users meet is enforced inside instead (``sandbox_nproc``); this one bounds a runaway
Sentry on the host (a fork bomb's stubs outgrow any limit: it ends there)."""


def host_pids_limit(config: SandboxConfig) -> int:
    """The container's ``pids_limit``: ``--pids`` itself under runc, where the cgroup counts
    exactly the block's processes and threads; under gVisor, room for ``--pids`` processes."""
    if config.isolation == "gvisor":
        return config.pids * GVISOR_TASKS_PER_PROCESS + GVISOR_BASE_TASKS
    return config.pids


def sandbox_nproc(config: SandboxConfig) -> list[dict[str, Any]]:
    """Under gVisor, ``--pids`` is enforced as RLIMIT_NPROC by the Sentry, which counts only
    the tasks of its own sandbox (on the host, this ulimit would count every process of the
    uid, which is why runc gets none). A thread or fork bomb then gets EAGAIN at ``--pids``,
    as under runc, and the block goes on."""
    if config.isolation != "gvisor":
        return []
    return [{"Name": "nproc", "Soft": config.pids, "Hard": config.pids}]


def state_dir_in_sandbox(session_id: str) -> str:
    """Where a session keeps its Python state in its environment: a folder of its own (with
    ``--session-env workdir`` sessions share the environment, never their state)."""
    return f"{ENV_DIR}/state/" + hashlib.sha256(session_id.encode()).hexdigest()[:24]


def build_spec(
    language: Language,
    image: str,
    config: SandboxConfig,
    identity: Identity,
    session_id: str,
    host_env: Mapping[str, str],
    *,
    created: float | None = None,
    attachment: NetworkAttachment | None = None,
    extra_mounts: tuple[ExtraMount, ...] = (),
) -> ContainerSpec:
    """Translate a sandbox config into a hardened container spec (SECURITY.md "defaults").

    ``attachment`` is required for the ``allowlist`` and ``open`` tiers and ignored for
    ``none``, so a bug elsewhere can only fail closed.
    """
    network_mode = "none"
    binds: dict[str, dict[str, str]] = {str(config.workdir): {"bind": WORKSPACE, "mode": "rw"}}
    for mount in extra_mounts:
        binds[str(mount.host)] = {
            "bind": mount.container,
            "mode": "ro" if mount.read_only else "rw",
        }
    environment = sandbox_environment(list(config.env), host_env)
    if config.env_dir is not None:  # the session's environment (session_env.py)
        binds[str(config.env_dir)] = {"bind": ENV_DIR, "mode": "rw"}
        environment["OI_ENV"] = ENV_DIR
        environment["PIP_NO_CACHE_DIR"] = "1"  # downloads would fill /tmp, or the environment
        if config.python_state and config.state_key:
            environment["OI_STATE_DIR"] = state_dir_in_sandbox(session_id)
            environment["OI_STATE_KEY"] = config.state_key
    if config.network != "none":
        if attachment is None:
            raise ConfigError(f"network tier {config.network!r} needs a network attachment")
        network_mode = attachment.network
        if attachment.ca_bundle is not None:
            binds[str(attachment.ca_bundle)] = {"bind": CA_IN_SANDBOX, "mode": "ro"}
        environment.update(
            proxy_environment(attachment.proxy_url, attachment.ca_bundle is not None)
        )
    extra_hosts = dict(attachment.extra_hosts) if attachment and network_mode != "none" else {}
    runtime = config.runtime
    if config.isolation == "gvisor":
        environment.setdefault("PATH", GVISOR_PATH)
    host_config: dict[str, Any] = {
        "binds": binds,
        "network_mode": network_mode,
        "cap_drop": ["ALL"],
        # oi's seccomp profile (seccomp.py) under runc; under gVisor (a runtime registered
        # with --oci-seccomp, which the runner checks) only its setuid/setgid denials: Debian's
        # runsc (2022-12) answers every errno rule with EPERM (gVisor issue 14688), so the
        # full profile's clone3 ENOSYS would become EPERM and glibc could not start threads.
        "security_opt": ["no-new-privileges", docker_security_opt(config.isolation)],
        "privileged": False,
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={config.tmp_size}"},
        "pids_limit": host_pids_limit(config),
        "mem_limit": config.memory,
        "memswap_limit": config.memory,  # equal: swap must not double the limit
        "nano_cpus": int(config.cpus * 1_000_000_000),
        "ulimits": [
            {"Name": "nofile", "Soft": config.nofile, "Hard": config.nofile},
            {"Name": "fsize", "Soft": config.max_file_size, "Hard": config.max_file_size},
            *sandbox_nproc(config),
        ],
        "init": True,
        "ipc_mode": "private",
        # stdout is read over the attach stream; a log driver would only copy it to disk.
        "log_config": {"Type": "none", "Config": {}},
        "auto_remove": False,  # we remove it ourselves, after reading the exit status
    }
    if runtime:
        host_config["runtime"] = runtime
    if extra_hosts:
        host_config["extra_hosts"] = extra_hosts
    labels = {
        **owner_labels(identity, session_id),
        LABEL_CREATED: f"{created if created is not None else time.time():.3f}",
        LABEL_LANGUAGE: language.value,
    }
    return ContainerSpec(
        language=language,
        image=image,
        command=bootstrap_command(language),
        user=f"{identity.uid}:{identity.gid}",
        environment=environment,
        labels=labels,
        host_config=host_config,
    )


def owner_labels(identity: Identity, session_id: str) -> dict[str, str]:
    """The labels that tie what oi makes on the engine (containers, networks) to its session
    and its oi process, so a dead process's leftovers are found and removed (``gc``)."""
    return {
        LABEL_MANAGED: "1",
        LABEL_SESSION: session_id,
        LABEL_OWNER: str(identity.owner_uid),
        LABEL_PID: str(identity.pid),
        LABEL_PID_START: identity.pid_start,
    }


def process_start_time(pid: int) -> str:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return "0"
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else "0"


def current_identity(workdir: Path) -> Identity:
    """The identity of this oi process for a given workdir (reads the process and the fs)."""
    st = workdir.stat()
    pid = os.getpid()
    identity = resolve_identity(
        uid=os.getuid(),
        gid=os.getgid(),
        workdir_uid=st.st_uid,
        workdir_gid=st.st_gid,
        pid=pid,
        pid_start=process_start_time(pid),
    )
    # Quotas and the audit log count the person who asked (sudo's caller under the admin
    # guide's shared account), not the account oi runs as.
    return replace(identity, owner_uid=invoking_uid())
