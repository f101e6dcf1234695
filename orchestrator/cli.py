"""The ``oi`` command line: parse flags -> build objects -> render events -> exit code.

Thin by design: the work happens in ``sandbox/`` and ``session.py``. Errors for people are
one line (what failed, where, the fix); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import __version__
from orchestrator.errors import OiError
from orchestrator.languages import parse_language, supported_names
from orchestrator.sandbox.docker import connect, engine_errors, engine_versions
from orchestrator.sandbox.gc import sweep
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.output import TerminalSanitizer
from orchestrator.sandbox.runner import ExecResult, Sandbox
from orchestrator.settings import Settings, config_files, load_settings
from orchestrator.units import format_size

app = typer.Typer(
    name="oi",
    help="Let a local model write code, and run every block in a throwaway, hardened container.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # settings hold API keys
    context_settings={"help_option_names": ["-h", "--help"]},
)
images_app = typer.Typer(help="Build and list the sandbox images.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(config_app, name="config")

err_console = Console(stderr=True, highlight=False)
_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"oi {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn oi errors into one line on stderr and the error's exit code."""
    try:
        yield
    except OiError as exc:
        if _state["debug"]:
            err_console.print_exception()
        err_console.print(f"[bold red]oi: error:[/] {exc}", markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _docker_client() -> Any:
    """Connect to Docker and quietly sweep containers left by dead oi processes."""
    client = connect()
    with contextlib.suppress(OiError):
        sweep(client)
    return client


# --- shared option types ----------------------------------------------------------------------
MemoryOpt = Annotated[
    str | None, typer.Option("--memory", "-m", help="Memory limit, swap included [default: 1g].")
]
CpusOpt = Annotated[float | None, typer.Option("--cpus", help="CPUs [default: 1].")]
PidsOpt = Annotated[int | None, typer.Option("--pids", help="Max processes [default: 256].")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", "-t", help="Wall-clock seconds per block [default: 60]."),
]
MaxOutputOpt = Annotated[
    int | None,
    typer.Option("--max-output", help="Bytes of each stream kept, head + tail [default: 8192]."),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", "-w", help="Folder mounted at /workspace [default: current dir]."),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="Pass this host variable into the sandbox (repeatable)."),
]
IsolationOpt = Annotated[
    str | None, typer.Option("--isolation", help="runc or gvisor [default: runc].")
]


def _limits(**flags: Any) -> Settings:
    env = flags.pop("env", None)
    if env:
        flags["env"] = list(env)
    return load_settings(**flags)


# --- oi exec ------------------------------------------------------------------------------------
@app.command("exec")
def exec_command(
    language: Annotated[str, typer.Argument(help=f"Language: {supported_names()}.")],
    file: Annotated[str, typer.Argument(help="File with the code, or - for standard input.")] = "-",
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids: PidsOpt = None,
    timeout: TimeoutOpt = None,
    max_output: MaxOutputOpt = None,
    workdir: WorkdirOpt = None,
    env: EnvOpt = None,
    isolation: IsolationOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one block of code in a fresh sandbox; exit with its exit code (124 timeout, 137 OOM)."""
    with _errors():
        lang = parse_language(language)
        settings = _limits(
            memory=memory,
            cpus=cpus,
            pids=pids,
            timeout=timeout,
            max_output=max_output,
            workdir=workdir,
            env=env,
            isolation=isolation,
        )
        code = _read_code(file)
        sandbox = Sandbox.from_settings(settings, client=_docker_client())
        on_output = None if as_json else _passthrough()
        result = sandbox.run(lang, code, on_output=on_output)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            _report_limits(result, settings)
        raise typer.Exit(result.shell_exit_code)


def _read_code(file: str) -> bytes:
    if file == "-":
        if sys.stdin.isatty():
            err_console.print("reading code from the terminal; end with Ctrl-D")
        return sys.stdin.buffer.read()
    path = Path(file)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _usage(f"cannot read code from {path}: {exc.strerror}") from None


def _usage(message: str) -> OiError:
    from orchestrator.errors import ConfigError  # noqa: PLC0415

    return ConfigError(message)


def _passthrough() -> Any:
    """Write block output to our stdout/stderr; neutralise escapes when it is a terminal."""
    sanitizers = {
        "stdout": TerminalSanitizer() if sys.stdout.isatty() else None,
        "stderr": TerminalSanitizer() if sys.stderr.isatty() else None,
    }
    streams = {"stdout": sys.stdout, "stderr": sys.stderr}

    def write(stream: str, data: bytes) -> None:
        target = streams[stream]
        target.flush()
        sanitizer = sanitizers[stream]
        if sanitizer is None:
            target.buffer.write(data)
        else:
            target.buffer.write(sanitizer.clean(data.decode("utf-8", "replace")).encode())
        target.buffer.flush()

    return write


def _report_limits(result: ExecResult, settings: Settings) -> None:
    if result.timed_out:
        err_console.print(f"oi: timed out after {settings.timeout:g} s (wall-clock limit)")
    elif result.oom_killed:
        err_console.print(f"oi: killed: memory limit {format_size(settings.memory)}")
    if result.truncated:
        err_console.print(
            f"oi: output kept in the result was capped at {settings.max_output} bytes per stream "
            f"({result.stdout_cut + result.stderr_cut} bytes cut)"
        )


# --- oi images ----------------------------------------------------------------------------------
@images_app.command("build")
def images_build(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Images to build: python, node, shell [default: all]."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if up to date.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Remove stale image tags.")] = False,
) -> None:
    """Build the sandbox images (offline: bootstraps a Debian base when nothing can be pulled)."""
    with _errors():
        catalog = ImageCatalog(connect(), load_settings())
        unknown = set(names or []) - {"python", "node", "shell"}
        if unknown:
            raise _usage(f"unknown image(s) {', '.join(sorted(unknown))}; use python, node, shell")
        catalog.build(names, force=force, progress=err_console.print)
        if prune:
            for tag in catalog.prune_stale():
                err_console.print(f"removed stale {tag}")
        _print_images(catalog)


@images_app.command("list")
def images_list() -> None:
    """Show each sandbox image: present, missing or stale."""
    with _errors():
        _print_images(ImageCatalog(connect(), load_settings()))


def _print_images(catalog: ImageCatalog) -> None:
    table = Table("image", "expected tag", "status", "stale tags")
    for status in catalog.status():
        state = "[green]present[/]" if status.present else "[red]missing[/] (oi images build)"
        table.add_row(status.name, status.tag, state, ", ".join(status.stale_tags) or "-")
    Console().print(table)


# --- oi gc --------------------------------------------------------------------------------------
@app.command("gc")
def gc_command() -> None:
    """Remove sandbox containers left behind by oi processes that are gone."""
    with _errors():
        result = sweep(connect())
        typer.echo(
            f"removed {len(result.removed)} orphaned container(s); "
            f"{result.kept} belong to running oi processes"
        )


# --- oi config ----------------------------------------------------------------------------------
@config_app.command("show")
def config_show() -> None:
    """Print the effective settings (flags > OI_* env > ./oi.toml > user config)."""
    with _errors():
        settings = load_settings()
        for key, value in settings.model_dump().items():
            shown = "***" if key == "api_key" and value not in ("", "EMPTY") else value
            typer.echo(f"{key} = {json.dumps(shown, default=str)}")
        typer.echo(
            "# config files: "
            + ", ".join(f"{p}{'' if p.exists() else ' (absent)'}" for p in config_files())
        )


# --- oi doctor ----------------------------------------------------------------------------------
@app.command("doctor")
def doctor() -> None:
    """Check the Docker engine, runtimes, images and disk; print the fix for each problem."""
    problems = 0

    def report(ok: bool, what: str, fix: str = "", *, fatal: bool = True) -> None:
        nonlocal problems
        mark = "[green]ok[/]  " if ok else ("[red]FAIL[/]" if fatal else "[yellow]warn[/]")
        err_console.print(f"{mark} {what}")
        if not ok and fix:
            err_console.print(f"      fix: {fix}")
        if not ok and fatal:
            problems += 1

    with _errors():
        settings = load_settings()
    try:
        client = connect()
        versions = engine_versions(client)
        report(
            True,
            f"Docker engine: client API {client.api.api_version}, "
            f"server {versions.get('Version')} (API {versions.get('ApiVersion')})",
        )
    except OiError as exc:
        report(False, f"Docker engine: {exc}")
        raise typer.Exit(1) from None
    with _errors(), engine_errors("reading engine info"):
        info = client.info()
    runtimes = set((info.get("Runtimes") or {}).keys())
    report("runc" in runtimes, "runtime runc", "reinstall Docker")
    report(
        "runsc" in runtimes,
        "runtime runsc (gVisor)" + ("" if "runsc" in runtimes else " not registered"),
        "install runsc and register it in /etc/docker/daemon.json ('sudo make setup' does)",
        fatal=settings.isolation == "gvisor",
    )
    with _errors():
        for status in ImageCatalog(client, settings).status():
            stale = f" (stale: {', '.join(status.stale_tags)})" if status.stale_tags else ""
            report(
                status.present,
                f"image {status.tag}{'' if status.present else ' missing'}{stale}",
                "oi images build",
            )
    root = info.get("DockerRootDir") or "/"
    try:
        free = shutil.disk_usage(root).free
        report(
            free > 2 * 1024**3,
            f"free disk at {root}: {format_size(free)}",
            "free space: docker system prune, or remove stale images (oi images build --prune)",
            fatal=free < 512 * 1024**2,
        )
    except OSError:
        report(False, f"free disk at {root}: cannot read", fatal=False)
    if os.getuid() == 0:
        st = settings.workdir.stat()
        report(
            st.st_uid != 0,
            "sandbox user: oi runs as root and the workdir is root's, so "
            "blocks run as uid 0 (capabilities dropped)",
            "run oi as a normal user, or use a workdir owned by one",
            fatal=False,
        )
    if problems:
        err_console.print(f"[red]{problems} problem(s): the sandbox cannot run until fixed[/]")
        raise typer.Exit(1)
    err_console.print("[green]the sandbox is ready[/]")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
