"""Effective settings: flags > environment (``OI_*``) > ./oi.toml > ~/.config/oi/config.toml.

``Settings`` is the single source for limits, network, images and the model endpoint. The CLI
passes only the flags a person actually gave, so lower layers fill in the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.errors import ConfigError
from orchestrator.units import parse_size

NetworkTier = Literal["none", "allowlist", "open"]
Isolation = Literal["runc", "gvisor"]
ToolMode = Literal["auto", "tools", "markdown"]


def user_config_path() -> Path:
    """``$OI_CONFIG_FILE``, else ``$XDG_CONFIG_HOME/oi/config.toml`` (~/.config by default)."""
    explicit = os.environ.get("OI_CONFIG_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "oi" / "config.toml"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "oi"


def config_files() -> list[Path]:
    """Config files in increasing precedence."""
    return [user_config_path(), Path.cwd() / "oi.toml"]


class Settings(BaseSettings):
    """Everything a person or admin can set. The model can set none of it."""

    model_config = SettingsConfigDict(
        env_prefix="OI_",
        extra="forbid",
        validate_default=True,
    )

    # --- sandbox limits -------------------------------------------------------------------
    memory: int = Field(default=parse_size("1g"), description="memory limit (swap included)")
    cpus: float = Field(default=1.0, gt=0, description="CPU share, e.g. 0.5 or 2")
    pids: int = Field(default=256, gt=0, description="max processes+threads in a sandbox")
    timeout: float = Field(default=60.0, gt=0, description="wall-clock seconds per block")
    max_output: int = Field(
        default=8192, gt=0, description="bytes of each stream kept (head + tail)"
    )
    tmp_size: int = Field(default=parse_size("256m"), description="size of the /tmp tmpfs")
    max_file_size: int = Field(
        default=parse_size("1g"), description="largest file a block may write (fsize)"
    )
    nofile: int = Field(default=1024, gt=0, description="max open files per process")
    kill_grace: float = Field(
        default=1.0, ge=0, description="seconds between SIGTERM and SIGKILL on timeout"
    )

    # --- pre-started containers (see sandbox/pool.py) --------------------------------------
    pool: bool = Field(default=True, description="pre-start throwaway containers for speed")
    pool_size: int = Field(default=1, ge=1, description="ready containers kept per shape")
    pool_idle: float = Field(
        default=60.0, gt=0, description="seconds an unused pool waits before draining"
    )

    # --- what the sandbox sees ------------------------------------------------------------
    workdir: Path = Field(default_factory=Path.cwd, description="mounted at /workspace")
    env: list[str] = Field(
        default_factory=list, description="names of host variables passed into the sandbox"
    )
    network: NetworkTier = "none"
    allow_hosts: list[str] = Field(
        default_factory=list, description="hosts (or presets pypi, npm, debian) for allowlist"
    )
    egress_ranges: list[str] = Field(
        default_factory=list,
        description="private address ranges the allowlist proxy may reach (CIDR); none by default",
    )
    ca_bundle: Path | None = Field(
        default=None, description="CA bundle mounted for TLS (default: the host's, if found)"
    )
    mounts: list[str] = Field(
        default_factory=list, description="extra mounts HOST[:CONTAINER][:rw], read-only default"
    )
    isolation: Isolation = "runc"
    gvisor_runtime: str = Field(
        default="runsc", description="Docker runtime name of gVisor without network"
    )
    gvisor_network_runtime: str = Field(
        default="runsc-host", description="Docker runtime name of gVisor for networked tiers"
    )
    audit_log: Path | None = Field(default=None, description="JSON audit line per block here")

    # --- images -----------------------------------------------------------------------------
    image_prefix: str = "oi-sandbox"
    base_image: str = "debian:bookworm-slim"

    # --- model ------------------------------------------------------------------------------
    api_base: str = "http://localhost:8000/v1"
    model: str = "Qwen/Qwen3-4B-Instruct-2507"
    api_key: str = Field(default="EMPTY", repr=False)
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_tokens: int | None = None
    tool_mode: ToolMode = "auto"
    max_turns: int = Field(default=20, gt=0)
    max_model_len: int = Field(default=32768, gt=0, description="used when /v1/models lacks it")
    request_timeout: float = Field(default=600.0, gt=0)
    auto_run: bool = False

    # --- model server faults (model-faults branch) ---
    # Time bounds and retries of the model client (orchestrator/llm/client.py, whose module
    # docstring tells what each bounds; its defaults match these). request_timeout above stays
    # the bound on one whole reply.
    connect_timeout: float = Field(
        default=5.0, gt=0, description="seconds to open a connection to the model server"
    )
    first_token_timeout: float = Field(
        default=60.0, gt=0, description="seconds from sending a request to the reply's first chunk"
    )
    stream_idle_timeout: float = Field(
        default=60.0, gt=0, description="longest silence, in seconds, between two reply chunks"
    )
    models_timeout: float = Field(
        default=10.0, gt=0, description="seconds for GET /v1/models (context length, oi doctor)"
    )
    retry_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="tries of a model request on HTTP 429/5xx or a refused or dropped connection",
    )
    retry_deadline: float = Field(
        default=30.0, ge=0, description="seconds after a request's first try when no try starts"
    )
    retry_backoff: float = Field(
        default=0.5, ge=0, description="first wait between tries; doubled each time, with jitter"
    )
    # --- end of model server faults ---

    # --- records ----------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("memory", "tmp_size", "max_file_size", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> int:
        if isinstance(value, str | int):
            return parse_size(value)
        raise ValueError(f"expected a size such as 512m or 1g, got {value!r}")

    @field_validator("workdir", mode="after")
    @classmethod
    def _absolute_workdir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

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
        # Later TOML files override earlier ones, so ./oi.toml beats the user config.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_files())
        return (init_settings, env_settings, toml)


def load_settings(**flags: Any) -> Settings:
    """Build settings from the flags a person gave (``None`` means "not given"), capped by
    the admin policy (``/etc/oi/policy.toml`` or ``$OI_POLICY_FILE``).

    Raises ``ConfigError`` naming the offending key and where it may come from, and
    ``PolicyError`` naming the policy line that forbids what was asked.
    """
    from orchestrator.policy import apply_policy, load_policy  # noqa: PLC0415

    given = {key: value for key, value in flags.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        sources = ", ".join(str(p) for p in config_files())
        raise ConfigError(
            f"invalid settings: {problems} (from flags, OI_* variables or {sources})"
        ) from None
    except (OSError, ValueError) as exc:  # e.g. a TOML syntax error
        raise ConfigError(f"cannot read config: {exc}") from None
    return apply_policy(settings, load_policy())
