"""Settings, where each value comes from, and how far each source is trusted.

Sources, from the least to the most precedence (flags win)::

    default  <  user config (~/.config/oi/config.toml)  <  its [profiles.NAME] (--profile)
             <  project file (./oi.toml)  <  OI_* environment  <  flags

and above them all the admin policy (``policy.py``), which caps or fixes what any of them asks.

Trust: the invoking user (flags, ``OI_*`` variables, the user config) may set every key but the
admin's. A project file (``./oi.toml``; a batch tasks file; a replayed record) is untrusted input:
a cloned repo wrote it. It may set harmless keys and *narrow* others (lower limits, less
network, gVisor instead of runc, fewer hosts, auto-run off), never widen access, start code
without a person, pick host paths, or redirect the API key - unless the user trusted that exact
file (``oi trust FILE``, recorded by content hash in ``trust.py``). What each key is, is field
metadata on ``Settings`` (``trust`` and ``policy``): the loader, the tasks file, replay,
``oi config show`` and the policy-completeness test all read it from there.

``loading.load(...)`` is the one path from every source to a ``Loaded`` (settings, policy, the
source of each value); ``Loaded.sandbox_config()`` is what the sandbox layer receives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orchestrator.paths import invoking_uid, xdg_dir
from orchestrator.sandbox.config import (
    DEFAULTS,
    Isolation,
    NetworkTier,
    SessionEnvScope,
)
from orchestrator.sandbox.toolbox import Toolbox
from orchestrator.units import parse_size, size_text

ToolMode = Literal["auto", "tools", "markdown"]
Trust = Literal["any", "narrow", "user", "admin"]
"""Who may set a key: ``any`` source (harmless); a project file only to ``narrow`` it; only the
``user`` (or a file they trusted); only the ``admin`` policy."""

SourceKind = Literal["default", "user config", "profile", "project", "env", "flag", "policy"]


def _setting(default: Any = None, *, trust: Trust, policy: str, description: str, **kw: Any) -> Any:
    """A ``Field`` carrying oi's metadata: who may set it, and the policy's decision for it
    (``cap KEY``, ``fixed KEY``, ``set KEY`` or ``harmless: why``)."""
    extra: dict[str, Any] = {"oi_trust": trust, "oi_policy": policy}
    if "default_factory" in kw:
        return Field(description=description, json_schema_extra=extra, **kw)
    return Field(default=default, description=description, json_schema_extra=extra, **kw)


def user_config_path() -> Path:
    """``$OI_CONFIG_FILE``, else ``$XDG_CONFIG_HOME/oi/config.toml`` (~/.config by default)."""
    explicit = os.environ.get("OI_CONFIG_FILE")
    if explicit:
        return Path(explicit).absolute()
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "oi" / "config.toml"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/oi``; under sudo for someone else, one folder per calling user below
    it, so users of a shared account (the admin guide's sudo rule) never see each other's
    sessions, records or environments."""
    base = xdg_dir("XDG_DATA_HOME", ".local/share") / "oi"
    caller = invoking_uid()
    return base if caller == os.geteuid() else base / "users" / str(caller)


def project_config_path() -> Path:
    return Path.cwd() / "oi.toml"


D = DEFAULTS
SIZE_FIELDS = ("memory", "tmp_size", "max_file_size", "workdir_max_bytes", "env_max_bytes")
"""Settings given as sizes ("512m", "2g"): read with units, shown with units."""
MIN_MEMORY = 6 * 1024**2
"""Docker refuses a smaller memory limit."""


class Settings(BaseSettings):
    """Everything a person or admin can set. The model can set none of it."""

    model_config = SettingsConfigDict(
        env_prefix="OI_", extra="forbid", validate_default=True, allow_inf_nan=False
    )

    # --- sandbox limits -------------------------------------------------------------------
    memory: int = _setting(
        D.memory,
        trust="narrow",
        policy="cap max_memory",
        description="memory limit (swap included)",
    )
    cpus: float = _setting(
        D.cpus,
        trust="narrow",
        policy="cap max_cpus",
        description="CPU share, e.g. 0.5 or 2",
        ge=0.01,  # Docker rounds less to a quota of 0: no limit at all
    )
    pids: int = _setting(
        D.pids, trust="narrow", policy="cap max_pids", description="max processes+threads", gt=0
    )
    timeout: float = _setting(
        D.timeout,
        trust="narrow",
        policy="cap max_timeout",
        description="wall-clock seconds per block",
        gt=0,
    )
    max_output: int = _setting(
        D.max_output,
        trust="narrow",
        policy="cap max_output",
        description="bytes of each stream kept (head + tail)",
        gt=0,
    )
    tmp_size: int = _setting(
        D.tmp_size, trust="narrow", policy="cap max_tmp_size", description="size of /tmp"
    )
    max_file_size: int = _setting(
        D.max_file_size,
        trust="narrow",
        policy="cap max_file_size",
        description="largest file a block may write (fsize)",
    )
    nofile: int = _setting(
        D.nofile, trust="narrow", policy="cap max_nofile", description="open files", gt=0
    )
    workdir_max_bytes: int = _setting(
        D.workdir_max_bytes,
        trust="narrow",
        policy="cap max_workdir_bytes",
        description="bytes the session's blocks may add to the workdir",
    )
    workdir_max_files: int = _setting(
        D.workdir_max_files,
        trust="narrow",
        policy="cap max_workdir_files",
        description="files the session's blocks may add to the workdir",
        gt=0,
    )
    kill_grace: float = _setting(
        D.kill_grace,
        trust="narrow",
        policy="cap max_timeout (timeout + kill_grace)",
        description="seconds between SIGTERM and SIGKILL on timeout",
        ge=0,
    )

    # --- what a session remembers (see sandbox/session_env.py) -----------------------------
    python_state: bool = _setting(
        D.python_state,
        trust="any",
        policy="harmless: kept in the session's own environment, loaded only in its sandboxes",
        description="carry Python variables and imports from block to block",
    )
    session_env: SessionEnvScope = _setting(
        D.session_env,
        trust="narrow",
        policy="harmless: the user's own folder under the data dir, bounded by env_max_bytes",
        description="keep installed packages per session, per workdir, or off",
    )
    env_max_bytes: int = _setting(
        D.env_max_bytes,
        trust="narrow",
        policy="cap max_env_bytes",
        description="bytes a session's environment (packages, Python state) may hold",
    )

    # --- pre-started containers (see sandbox/pool.py) --------------------------------------
    pool: bool = _setting(
        D.pool,
        trust="any",
        policy="harmless: pre-started containers count towards the quotas",
        description="pre-start throwaway containers for speed",
    )
    pool_size: int = _setting(
        D.pool_size,
        trust="narrow",
        policy="cap max_pool_size",
        description="ready containers kept per shape",
        ge=1,
    )
    pool_idle: float = _setting(
        D.pool_idle,
        trust="any",
        policy="harmless: idle containers count towards the quotas and go when oi ends",
        description="seconds an unused pool waits before draining",
        gt=0,
    )

    # --- what the sandbox sees ------------------------------------------------------------
    workdir: Path = _setting(
        trust="user",
        policy="harmless: the sandbox refuses /, homes, secrets and system folders itself",
        description="mounted at /workspace",
        default_factory=Path.cwd,
    )
    env: list[str] = _setting(
        trust="narrow",
        policy="set allow_env",
        description="names of host variables passed into the sandbox",
        default_factory=list,
    )
    network: NetworkTier = _setting(
        D.network, trust="narrow", policy="set allowed_networks", description="network tier"
    )
    allow_hosts: list[str] = _setting(
        trust="narrow",
        policy="set allowed_hosts and allowed_tcp_ports",
        description=(
            "hosts (or presets pypi, npm, debian, huggingface, whisper) for allowlist; "
            "HOST:PORT for plain TCP to that port"
        ),
        default_factory=list,
    )
    egress_ranges: list[str] = _setting(
        trust="admin",
        policy="fixed egress_ranges",
        description="private ranges the allowlist proxy may reach (admin policy only)",
        default_factory=list,
    )
    ca_bundle: Path | None = _setting(
        None,
        trust="user",
        policy="set allowed_ca_bundles",
        description="CA bundle mounted for TLS (default: the host's, if found)",
    )
    mounts: list[str] = _setting(
        trust="narrow",
        policy="set allow_extra_mounts",
        description="extra mounts HOST[:CONTAINER][:rw], read-only by default",
        default_factory=list,
    )
    isolation: Isolation = _setting(
        D.isolation, trust="narrow", policy="set required_isolation", description="runc or gvisor"
    )
    toolbox: Toolbox = _setting(
        D.toolbox,
        trust="narrow",
        policy="set allowed_toolboxes",
        description="images: standard, or full (adds a headless browser and media tools)",
    )
    gvisor_runtime: str = _setting(
        D.gvisor_runtime,
        trust="admin",
        policy="fixed gvisor_runtime",
        description="Docker runtime name of gVisor without network (admin policy only)",
    )
    gvisor_network_runtime: str = _setting(
        D.gvisor_network_runtime,
        trust="admin",
        policy="fixed gvisor_network_runtime",
        description="Docker runtime name of gVisor for networked tiers (admin policy only)",
    )
    audit_log: Path | None = _setting(
        None, trust="user", policy="fixed audit_log", description="JSON audit line per block"
    )

    # --- images -----------------------------------------------------------------------------
    image_prefix: str = _setting(
        D.image_prefix, trust="user", policy="fixed image_prefix", description="image names"
    )
    base_image: str = _setting(
        D.base_image,
        trust="user",
        policy="harmless: only used when building images (oi images build)",
        description="base of the sandbox images",
    )

    # --- model ------------------------------------------------------------------------------
    api_base: str = _setting(
        "http://localhost:8000/v1",
        trust="user",
        policy="harmless: the model endpoint is not reachable from sandboxes by it",
        description="OpenAI-compatible endpoint",
    )
    model: str = _setting(
        "Qwen/Qwen3-4B-Instruct-2507",
        trust="any",
        policy="harmless: a name on the user's own endpoint",
        description="model name",
    )
    api_key: str = _setting(
        "EMPTY",
        trust="user",
        policy="harmless: a credential for the user's endpoint",
        description="API key",
        repr=False,
    )
    temperature: float = _setting(
        0.7,
        trust="any",
        policy="harmless: how the model samples",
        description="sampling temperature",
    )
    top_p: float = _setting(
        0.8, trust="any", policy="harmless: how the model samples", description="top_p"
    )
    top_k: int = _setting(
        20, trust="any", policy="harmless: how the model samples", description="top_k"
    )
    max_tokens: int | None = _setting(
        None, trust="any", policy="harmless: reply length", description="tokens per reply"
    )
    tool_mode: ToolMode = _setting(
        "auto", trust="any", policy="harmless: how code arrives", description="tool mode"
    )
    vision: bool = _setting(
        False,
        trust="any",
        policy=(
            "harmless: images a block made in the workdir go to the user's own model "
            "endpoint, as the block's output does"
        ),
        description="send images blocks make (and --image) to a vision model",
    )
    max_turns: int = _setting(
        20,
        trust="any",
        policy="harmless: every block is approved, or bounded by a batch budget",
        description="model turns per task",
        gt=0,
    )
    max_model_len: int = _setting(
        32768,
        trust="any",
        policy="harmless: only sizes the context budget",
        description="context size when /v1/models lacks it",
        gt=0,
    )
    request_timeout: float = _setting(
        600.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="bound on one whole model reply, in seconds",
        gt=0,
    )
    instructions: str | None = _setting(
        None,
        trust="any",
        policy=(
            "harmless: words for the model, placed after oi's own facts, which they cannot "
            "change; a project's are added to yours, never replace them"
        ),
        description="standing instructions for the model: text, or @FILE",
    )
    max_model_requests: int = _setting(
        4,
        trust="narrow",
        policy="cap max_model_requests",
        description="model requests in flight at once to one endpoint, across your oi processes",
        ge=1,
    )
    profile: str | None = _setting(
        None,
        trust="user",
        policy="harmless: selects a table of your own config, whose values the policy caps",
        description="a [profiles.NAME] table of the user config to use",
    )
    auto_run: bool = _setting(
        False,
        trust="narrow",
        policy="harmless: every block is sandboxed within the policy either way",
        description="run blocks without asking",
    )

    # --- model server faults: time bounds and retries of the model client ----------------
    # (orchestrator/llm/client.py's docstring tells what each bounds; its defaults match.)
    connect_timeout: float = _setting(
        5.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="seconds to open a connection to the model server",
        gt=0,
    )
    first_token_timeout: float = _setting(
        60.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="seconds from sending a request to the reply's first chunk",
        gt=0,
    )
    stream_idle_timeout: float = _setting(
        60.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="longest silence, in seconds, between two reply chunks",
        gt=0,
    )
    models_timeout: float = _setting(
        10.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="seconds for GET /v1/models (context length, oi doctor)",
        gt=0,
    )
    retry_attempts: int = _setting(
        4,
        trust="any",
        policy="harmless: retries of a model request, bounded by retry_deadline",
        description="tries of a model request on HTTP 429/5xx or a refused or dropped connection",
        ge=1,
        le=20,
    )
    retry_deadline: float = _setting(
        30.0,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="seconds after a request's first try when no try starts",
        ge=0,
    )
    retry_backoff: float = _setting(
        0.5,
        trust="any",
        policy="harmless: a wait on the model server, not sandbox time",
        description="first wait between tries; doubled each time, with jitter",
        ge=0,
    )

    # --- records ----------------------------------------------------------------------------
    data_dir: Path = _setting(
        trust="user",
        policy="harmless: the user's own records",
        description="where session records go",
        default_factory=default_data_dir,
    )

    @field_validator("memory")
    @classmethod
    def _docker_minimum(cls, value: int) -> int:
        if value < MIN_MEMORY:
            raise ValueError(
                f"{value} bytes is below Docker's minimum of 6 MiB; give a unit, e.g. 512m or 1g"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http(s) URL; write it in full, e.g. http://{value}"
                if "://" not in value
                else f"{value!r} is not an http(s) URL, e.g. http://localhost:8000/v1"
            )
        return value

    @field_validator(*SIZE_FIELDS, mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> int:
        if isinstance(value, str | int) and not isinstance(value, bool):
            return parse_size(value)
        raise ValueError(f"expected a size such as 512m or 1g, got {value!r}")

    @field_validator("workdir", mode="after")
    @classmethod
    def _absolute_workdir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="before")
    @classmethod
    def _hosts_imply_allowlist(cls, data: Any) -> Any:
        """Naming hosts means the allowlist tier, unless a tier is named too."""
        if isinstance(data, dict) and data.get("allow_hosts") and data.get("network") is None:
            return {**data, "network": "allowlist"}
        return data

    @model_validator(mode="after")
    def _hosts_need_a_networked_tier(self) -> Settings:
        if self.allow_hosts and self.network == "none":
            raise ValueError(
                "allow_hosts names hosts but network is none; use network allowlist "
                "(or leave network unset: naming hosts implies it)"
            )
        return self

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``load`` reads every source itself, so it knows where each value came from and how
        # far to trust it; constructing Settings reads nothing but its arguments.
        return (init_settings,)


FIELDS: tuple[str, ...] = tuple(Settings.model_fields)


def field_meta(name: str) -> tuple[Trust, str]:
    """(trust, policy decision) of a settings key."""
    extra = Settings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict), name
    return cast("Trust", extra["oi_trust"]), str(extra["oi_policy"])


def shown_value(name: str, value: Any) -> Any:
    """A value as it may be printed: a secret (a field declared with ``repr=False``, such as
    ``api_key``) is masked unless it is empty or the placeholder ``EMPTY``; a size is written
    as one would set it ("1g", "512m")."""
    field = Settings.model_fields.get(name)
    if field is not None and field.repr is False and value not in ("", "EMPTY", None):
        return "***"
    if name in SIZE_FIELDS and isinstance(value, int):
        return size_text(value)
    return value


def keys_with_trust(*levels: Trust) -> tuple[str, ...]:
    return tuple(name for name in FIELDS if field_meta(name)[0] in levels)
