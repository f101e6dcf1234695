"""Command-line options shared by the commands of ``cli.py`` and ``cli_batch.py``.

Each is a typer ``Annotated`` type; ``None`` means "not given", so lower settings layers
(environment, config files, admin policy) decide. The options that set settings are declared
once (``SETTING_FLAGS``) and added to a command by ``with_setting_flags(...)``, which hands the
command one ``SettingFlags`` object instead of a parameter per flag.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory",
        "-m",
        metavar="SIZE",
        help="Memory limit, swap included, e.g. 512m, 2g. (default: 1g)",
    ),
]
CpusOpt = Annotated[
    float | None, typer.Option("--cpus", metavar="N", help="CPUs, e.g. 0.5 or 2. (default: 1)")
]
PidsOpt = Annotated[
    int | None,
    typer.Option("--pids", metavar="N", help="Max processes and threads. (default: 256)"),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", "-t", metavar="SECONDS", help="Wall-clock limit per block. (default: 60)"
    ),
]
MaxOutputOpt = Annotated[
    int | None,
    typer.Option(
        "--max-output",
        metavar="BYTES",
        help="Bytes of each stream kept, head + tail. (default: 8192)",
    ),
]
WorkdirMaxBytesOpt = Annotated[
    str | None,
    typer.Option(
        "--workdir-max-bytes",
        metavar="SIZE",
        help="Bytes the session's blocks may add to the workdir, e.g. 10g. (default: 4g)",
    ),
]
WorkdirMaxFilesOpt = Annotated[
    int | None,
    typer.Option(
        "--workdir-max-files",
        metavar="N",
        help="Files the session's blocks may add to the workdir. (default: 100000)",
    ),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        "--workdir", "-w", metavar="DIR", help="Folder mounted at /workspace. (default: .)"
    ),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env", "-e", metavar="NAME", help="Pass this host variable into the sandbox (repeat it)."
    ),
]
IsolationOpt = Annotated[
    str | None,
    typer.Option("--isolation", metavar="runc|gvisor", help="The runtime. (default: runc)"),
]
NetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--network",
        metavar="none|allowlist|open",
        help="none: loopback only; allowlist: the --allow-host names via a proxy; open: the "
        "internet. (default: none)",
    ),
]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host",
        metavar="HOST[:PORT]",
        help=(
            "A host the allowlist lets through (HTTP, HTTPS; repeat it); HOST:PORT for plain "
            "TCP to that port (SMTP, a database); presets: pypi, npm, debian, huggingface, "
            "whisper."
        ),
    ),
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option("--ca-bundle", metavar="FILE", help="CA bundle for TLS. (default: the host's)"),
]
MountOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mount",
        metavar="HOST[:PATH][:rw]",
        help="Extra folder to mount, read-only unless :rw, at /mnt/NAME unless PATH is given "
        "(repeat it).",
    ),
]
ApiBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        metavar="URL",
        help="OpenAI-compatible endpoint. (default: http://localhost:8000/v1)",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", metavar="NAME", help="Model name. (default: Qwen/Qwen3-4B-Instruct-2507)"
    ),
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", metavar="KEY", help="API key. (default: EMPTY)")
]
ToolModeOpt = Annotated[
    str | None,
    typer.Option(
        "--tool-mode",
        metavar="auto|tools|markdown",
        help="How code arrives: tool calls, markdown blocks, or tools falling back to markdown. "
        "(default: auto)",
    ),
]
MaxTurnsOpt = Annotated[
    int | None,
    typer.Option("--max-turns", metavar="N", help="Model turns before stopping. (default: 20)"),
]
AutoRunOpt = Annotated[
    bool | None,
    typer.Option("--auto-run", "-y", help="Run every block without asking (it is sandboxed)."),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", metavar="T", help="Sampling temperature. (default: 0.7)"),
]
MaxModelLenOpt = Annotated[
    int | None,
    typer.Option(
        "--max-model-len",
        metavar="TOKENS",
        help="Context size when the server does not say. (default: 32768)",
    ),
]
InstructionsOpt = Annotated[
    str | None,
    typer.Option(
        "--instructions",
        metavar="TEXT|@FILE",
        help="Standing instructions for the model, after oi's own facts (replace your config's).",
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", metavar="NAME", help="Use the profiles.NAME table of your user config."
    ),
]
ToolboxOpt = Annotated[
    str | None,
    typer.Option(
        "--toolbox",
        metavar="standard|full",
        help="Sandbox images: standard, or full (adds a headless browser and media tools). "
        "(default: standard)",
    ),
]
VisionOpt = Annotated[
    bool | None,
    typer.Option(
        "--vision",
        help="Send images blocks make (and those you add: --image, %image) to a vision model.",
    ),
]
NoPoolOpt = Annotated[
    bool, typer.Option("--no-pool", help="Do not pre-start containers (slower, fewer resources).")
]
NoStateOpt = Annotated[
    bool,
    typer.Option("--no-state", help="Do not carry Python variables and imports between blocks."),
]
SessionEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--session-env",
        metavar="session|workdir|off",
        help="Keep what pip and npm install for the session, for this folder, or not at all. "
        "(default: session)",
    ),
]


@dataclass(frozen=True)
class FlagSpec:
    """A command-line option that sets one settings key."""

    annotation: Any
    setting: str
    default: Any = None
    convert: Callable[[Any], Any] = lambda value: value


def _list(value: Any) -> Any:
    return list(value) if value else None


SETTING_FLAGS: Mapping[str, FlagSpec] = {
    "auto_run": FlagSpec(AutoRunOpt, "auto_run"),
    "api_base": FlagSpec(ApiBaseOpt, "api_base"),
    "model": FlagSpec(ModelOpt, "model"),
    "api_key": FlagSpec(ApiKeyOpt, "api_key"),
    "tool_mode": FlagSpec(ToolModeOpt, "tool_mode"),
    "max_turns": FlagSpec(MaxTurnsOpt, "max_turns"),
    "temperature": FlagSpec(TemperatureOpt, "temperature"),
    "max_model_len": FlagSpec(MaxModelLenOpt, "max_model_len"),
    "memory": FlagSpec(MemoryOpt, "memory"),
    "cpus": FlagSpec(CpusOpt, "cpus"),
    "pids": FlagSpec(PidsOpt, "pids"),
    "timeout": FlagSpec(TimeoutOpt, "timeout"),
    "max_output": FlagSpec(MaxOutputOpt, "max_output"),
    "workdir_max_bytes": FlagSpec(WorkdirMaxBytesOpt, "workdir_max_bytes"),
    "workdir_max_files": FlagSpec(WorkdirMaxFilesOpt, "workdir_max_files"),
    "workdir": FlagSpec(WorkdirOpt, "workdir"),
    "env": FlagSpec(EnvOpt, "env", convert=_list),
    "isolation": FlagSpec(IsolationOpt, "isolation"),
    "network": FlagSpec(NetworkOpt, "network"),
    "allow_host": FlagSpec(AllowHostOpt, "allow_hosts", convert=_list),
    "ca_bundle": FlagSpec(CaBundleOpt, "ca_bundle"),
    "mount": FlagSpec(MountOpt, "mounts", convert=_list),
    "no_pool": FlagSpec(NoPoolOpt, "pool", False, lambda value: False if value else None),
    "no_state": FlagSpec(NoStateOpt, "python_state", False, lambda v: False if v else None),
    "session_env": FlagSpec(SessionEnvOpt, "session_env"),
    "instructions": FlagSpec(InstructionsOpt, "instructions"),
    "profile": FlagSpec(ProfileOpt, "profile"),
    "toolbox": FlagSpec(ToolboxOpt, "toolbox"),
    "vision": FlagSpec(VisionOpt, "vision"),
}
MODEL_FLAGS = ("api_base", "model", "api_key", "tool_mode", "max_turns", "temperature", "vision")
LIMIT_FLAGS = (
    "memory", "cpus", "pids", "timeout", "max_output", "workdir_max_bytes", "workdir_max_files",
)  # fmt: skip
SANDBOX_FLAGS = (
    "workdir", "env", "isolation", "network", "allow_host", "ca_bundle", "mount", "toolbox",
)  # fmt: skip


@dataclass(frozen=True)
class SettingFlags:
    """The setting flags a person gave (settings key -> value; flags not given are absent)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)


F = TypeVar("F", bound=Callable[..., Any])


def with_setting_flags(*names: str) -> Callable[[F], F]:
    """Add the named setting flags to a command; it receives them as ``flags: SettingFlags``."""
    specs = {name: SETTING_FLAGS[name] for name in names}

    def decorate(command: F) -> F:
        signature = inspect.signature(command)
        # Resolved (not string) annotations, so typer sees the Annotated options of both.
        hints = typing.get_type_hints(command, include_extras=True)
        kept = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != "flags"
        ]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=spec.default,
                annotation=spec.annotation,
            )
            for name, spec in specs.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values: dict[str, Any] = {}
            for name, spec in specs.items():
                value = spec.convert(kwargs.pop(name, spec.default))
                if value is not None:
                    values[spec.setting] = value
            return command(*args, flags=SettingFlags(values), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
        annotations = {k: v for k, v in hints.items() if k != "flags"}
        annotations.update({name: spec.annotation for name, spec in specs.items()})
        wrapper.__annotations__ = annotations
        return wrapper  # type: ignore[return-value]

    return decorate
