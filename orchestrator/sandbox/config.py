"""What the sandbox layer is told: its own small, frozen config. Pure.

The sandbox package knows nothing of settings files, flags, trust or the admin policy: the
layers above (``orchestrator.settings``) decide, apply the policy once, and hand down a
``SandboxConfig``. Its defaults are the product's defaults; ``Settings`` takes them from here so
they are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.sandbox.toolbox import Toolbox

NetworkTier = Literal["none", "allowlist", "open"]
Isolation = Literal["runc", "gvisor"]
SessionEnvScope = Literal["off", "session", "workdir"]

NETWORK_ORDER: tuple[NetworkTier, ...] = ("none", "allowlist", "open")
"""Network tiers from the narrowest to the widest."""
SESSION_ENV_ORDER: tuple[SessionEnvScope, ...] = ("off", "session", "workdir")
"""How long what a block installs lives, from the shortest to the longest."""

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class SandboxConfig:
    """Everything a ``Sandbox`` needs to decide how a block runs.

    ``allow_hosts`` are host names, already expanded from presets by the layer above;
    ``egress_ranges`` are the private ranges the admin lets the proxy reach. ``quota_*`` are
    the admin's caps on concurrent sandboxes (None: no cap). ``workdir_max_*`` bound how much
    the workdir may grow over the session (``workdir_quota.py``; None: not bounded).
    """

    workdir: Path = field(default_factory=Path.cwd)
    memory: int = 1 * GiB
    cpus: float = 1.0
    pids: int = 256
    timeout: float = 60.0
    max_output: int = 8192
    tmp_size: int = 256 * MiB
    max_file_size: int = 1 * GiB
    # A session may grow the workdir by this much: room for the reference CSV job (a cleaned
    # copy of a 1.8 GB file and its outputs), while a block left alone writes 54 GiB in its
    # 60 s; 100,000 files is a large node_modules, and it also bounds how long a walk takes.
    workdir_max_bytes: int | None = 4 * GiB
    workdir_max_files: int | None = 100_000
    nofile: int = 1024
    kill_grace: float = 1.0
    env: tuple[str, ...] = ()
    network: NetworkTier = "none"
    allow_hosts: tuple[str, ...] = ()
    egress_ranges: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    mounts: tuple[str, ...] = ()
    isolation: Isolation = "runc"
    toolbox: Toolbox = "standard"
    gvisor_runtime: str = "runsc"
    gvisor_network_runtime: str = "runsc-host"
    pool: bool = True
    pool_size: int = 1
    pool_idle: float = 60.0
    image_prefix: str = "oi-sandbox"
    base_image: str = "debian:bookworm-slim"
    audit_log: Path | None = None
    audit_user: str = ""  # a server's own user (oi serve), named in the audit log beside the uid
    quota_per_user: int | None = None
    quota_total: int | None = None
    # The session's environment (session_env.py): a host folder mounted at /oi/env, chosen by
    # the layer above (it knows the data dir and the session); None: nothing is kept.
    env_dir: Path | None = None
    session_env: SessionEnvScope = "session"
    env_max_bytes: int | None = 2 * GiB
    # Entries it may hold: generous for a venv (packages with many files, such as torch, hold
    # tens of thousands), far below a filesystem's inodes. Not a setting.
    env_max_files: int | None = 200_000
    python_state: bool = True
    # Seals the session's Python state (hex; ``session_env.state_key``): without it, none is
    # kept. Only this session's containers get it.
    state_key: str | None = None

    @property
    def runtime(self) -> str | None:
        """The Docker runtime a block uses: None (the engine's default, runc) or gVisor's."""
        if self.isolation != "gvisor":
            return None
        # "runsc" gives the sandbox no network at all; the networked runtime lets gVisor use
        # the container's own network namespace (the allowlist network or the bridge).
        return self.gvisor_runtime if self.network == "none" else self.gvisor_network_runtime


DEFAULTS = SandboxConfig(workdir=Path("/"))
"""The product defaults (the workdir default is the current directory, decided at load)."""


@dataclass(frozen=True)
class SandboxDescription:
    """Where a block will run, in the words the approval screen shows. Decided by settings and
    policy, never by the model."""

    image: str
    memory: str
    cpus: float
    pids: int
    timeout_s: float
    network: str
    isolation: str
    workdir: str
    allow_hosts: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()  # "HOST -> PATH (read-only|read-write)", besides the workdir
    env: tuple[str, ...] = ()  # names of the variables passed in (never their values)
    keeps_installs: bool = False  # pip/npm installs stay for the session (its environment)
    python_state: bool = False  # Python variables and imports carry from block to block
