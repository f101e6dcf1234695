"""Command-line options shared by the commands of ``cli.py`` and ``cli_batch.py``.

Each is a typer ``Annotated`` type; ``None`` means "not given", so lower settings layers
(environment, config files, admin policy) decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MemoryOpt = Annotated[
    str | None, typer.Option("--memory", "-m", help="Memory limit, swap included (default: 1g).")
]
CpusOpt = Annotated[float | None, typer.Option("--cpus", help="CPUs (default: 1).")]
PidsOpt = Annotated[int | None, typer.Option("--pids", help="Max processes (default: 256).")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", "-t", help="Wall-clock seconds per block (default: 60)."),
]
MaxOutputOpt = Annotated[
    int | None,
    typer.Option("--max-output", help="Bytes of each stream kept, head + tail (default: 8192)."),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", "-w", help="Folder mounted at /workspace (default: current dir)."),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="Pass this host variable into the sandbox (repeatable)."),
]
IsolationOpt = Annotated[
    str | None, typer.Option("--isolation", help="runc or gvisor (default: runc).")
]
NetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--network", help="none (loopback only), allowlist (--allow-host via a proxy), open."
    ),
]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host", help="Host reachable under --network allowlist; presets: pypi, npm, debian."
    ),
]
CaBundleOpt = Annotated[
    Path | None, typer.Option("--ca-bundle", help="CA bundle for TLS (default: the host's).")
]
MountOpt = Annotated[
    list[str] | None,
    typer.Option("--mount", help="Extra mount HOST[:CONTAINER][:rw], read-only by default."),
]
ApiBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--api-base", help="OpenAI-compatible endpoint (default: http://localhost:8000/v1)."
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name (default: Qwen/Qwen3-4B-Instruct-2507).")
]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", help="API key (default: EMPTY).")]
ToolModeOpt = Annotated[
    str | None,
    typer.Option("--tool-mode", help="auto (tools, else markdown), tools or markdown."),
]
MaxTurnsOpt = Annotated[
    int | None, typer.Option("--max-turns", help="Model turns before stopping (default: 20).")
]
AutoRunOpt = Annotated[
    bool | None,
    typer.Option("--auto-run", "-y", help="Run every block without asking (it is sandboxed)."),
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="Sampling temperature.")
]
MaxModelLenOpt = Annotated[
    int | None, typer.Option("--max-model-len", help="Context size if the server does not say.")
]
NoPoolOpt = Annotated[
    bool, typer.Option("--no-pool", help="Do not pre-start containers (slower, fewer resources).")
]
