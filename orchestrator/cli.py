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
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import __version__
from orchestrator.cli_options import (
    AllowHostOpt,
    ApiBaseOpt,
    ApiKeyOpt,
    AutoRunOpt,
    CaBundleOpt,
    CpusOpt,
    EnvOpt,
    IsolationOpt,
    MaxModelLenOpt,
    MaxOutputOpt,
    MaxTurnsOpt,
    MemoryOpt,
    ModelOpt,
    MountOpt,
    NetworkOpt,
    NoPoolOpt,
    PidsOpt,
    TemperatureOpt,
    TimeoutOpt,
    ToolModeOpt,
    WorkdirOpt,
)
from orchestrator.errors import OiError
from orchestrator.languages import parse_language, supported_names

# Commands import what they use when they run: `oi --help` must not pay for docker, pydantic
# and the openai SDK (start-up time is measured in bench/overhead.py).
if TYPE_CHECKING:
    from orchestrator.sandbox.images import ImageCatalog
    from orchestrator.sandbox.runner import ExecResult
    from orchestrator.settings import Settings

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

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
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
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.gc import sweep  # noqa: PLC0415

    client = connect()
    with contextlib.suppress(OiError):
        sweep(client)
        _egress_manager(client).sweep_idle()
    return client


def _egress_manager(client: Any) -> Any:
    from orchestrator.sandbox.images import ImageCatalog  # noqa: PLC0415
    from orchestrator.sandbox.network import EgressManager  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415

    return EgressManager(client, ImageCatalog(client, load_settings()))


def _limits(**flags: Any) -> Settings:
    from orchestrator.settings import load_settings  # noqa: PLC0415

    for key in ("env", "allow_host", "mount"):
        values = flags.pop(key, None)
        if values:
            flags[{"allow_host": "allow_hosts", "mount": "mounts"}.get(key, key)] = list(values)
    if flags.get("allow_hosts") and flags.get("network") is None:
        flags["network"] = "allowlist"  # naming hosts means the allowlist tier
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
    network: NetworkOpt = None,
    allow_host: AllowHostOpt = None,
    ca_bundle: CaBundleOpt = None,
    mount: MountOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one block of code in a fresh sandbox; exit with its exit code (124 timeout, 137 OOM)."""
    from orchestrator.sandbox.runner import Sandbox  # noqa: PLC0415

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
            network=network,
            allow_host=allow_host,
            ca_bundle=ca_bundle,
            mount=mount,
        )
        code = _read_code(file)
        with Sandbox.from_settings(settings, client=_docker_client()) as sandbox:
            on_output = None if as_json else _passthrough()
            result = sandbox.run(
                lang, code, on_output=on_output, on_status=lambda m: err_console.print(f"oi: {m}")
            )
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
    from orchestrator.sandbox.output import TerminalSanitizer  # noqa: PLC0415

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
    from orchestrator.units import format_size  # noqa: PLC0415

    if result.timed_out:
        err_console.print(f"oi: timed out after {settings.timeout:g} s (wall-clock limit)")
    elif result.oom_killed:
        err_console.print(f"oi: killed: memory limit {format_size(settings.memory)}")
    if result.truncated:
        err_console.print(
            f"oi: output kept in the result was capped at {settings.max_output} bytes per stream "
            f"({result.stdout_cut + result.stderr_cut} bytes cut)"
        )


# --- oi run / oi chat ---------------------------------------------------------------------------

EXIT_FOR_STATUS = {"finished": 0, "max_turns": 3, "quit": 3, "loop_guard": 3, "interrupted": 3}


def _setting_flags(params: dict[str, Any], *not_settings: str) -> dict[str, Any]:
    """A command's parameters that are setting flags (all but ``not_settings``)."""
    return {key: value for key, value in params.items() if key not in not_settings}


def _agent_settings(**flags: Any) -> Settings:
    if flags.pop("no_pool", False):
        flags["pool"] = False
    return _limits(**flags)


def _drive(events: Any, renderer: Any) -> str:
    """Consume a session generator, rendering each event. Ctrl-C while a block runs is thrown
    into the session (which kills the block's container); elsewhere it stops the turn."""
    pending_interrupt = False
    while True:
        try:
            event = events.throw(KeyboardInterrupt()) if pending_interrupt else next(events)
            pending_interrupt = False
        except StopIteration as stop:
            return str(stop.value)
        except KeyboardInterrupt:
            renderer.interrupt()
            err_console.print("[yellow]oi: interrupted[/]")
            return "interrupted"
        try:
            renderer.render(event)
        except KeyboardInterrupt:
            renderer.interrupt()
            pending_interrupt = True


def _make_renderer(as_json: bool, *, markdown: bool) -> Any:
    from orchestrator.render import HumanRenderer, JsonRenderer  # noqa: PLC0415

    return JsonRenderer() if as_json else HumanRenderer(markdown=markdown)


def _open(settings: Settings, resume: str | None = None) -> Any:
    from orchestrator.render import InteractiveApprover  # noqa: PLC0415
    from orchestrator.session import open_session  # noqa: PLC0415

    session = open_session(
        settings, InteractiveApprover(), resume=resume, docker_client=_docker_client()
    )
    if session.sandbox.identity.warning:
        err_console.print(f"[yellow]oi: {session.sandbox.identity.warning}[/]")
    return session


@app.command("run")
def run_command(
    task: Annotated[str, typer.Argument(help="What to do, in plain words.")],
    auto_run: AutoRunOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON event per line on stdout.")
    ] = False,
    api_base: ApiBaseOpt = None,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    tool_mode: ToolModeOpt = None,
    max_turns: MaxTurnsOpt = None,
    temperature: TemperatureOpt = None,
    max_model_len: MaxModelLenOpt = None,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids: PidsOpt = None,
    timeout: TimeoutOpt = None,
    max_output: MaxOutputOpt = None,
    workdir: WorkdirOpt = None,
    env: EnvOpt = None,
    isolation: IsolationOpt = None,
    network: NetworkOpt = None,
    allow_host: AllowHostOpt = None,
    ca_bundle: CaBundleOpt = None,
    mount: MountOpt = None,
    no_pool: NoPoolOpt = False,
) -> None:
    """Do one task: the model writes code, you approve, it runs sandboxed, until done.

    Exit codes: 0 finished, 1 model or Docker unreachable, 2 bad usage/config, 3 stopped
    (max turns, quit, loop guard, Ctrl-C).
    """
    with _errors():
        # Every other parameter of this command is a setting flag (None: not given).
        settings = _agent_settings(**_setting_flags(locals(), "task", "as_json"))
        session = _open(settings)
        try:
            status = _drive(session.send(task), _make_renderer(as_json, markdown=False))
        finally:
            session.sandbox.close()
        raise typer.Exit(EXIT_FOR_STATUS.get(status, 3))


CHAT_HELP = """commands:
  %reset          forget the conversation (keeps the system prompt)
  %undo           forget your last message and everything after it
  %tokens         tokens used so far
  %auto on|off    run blocks without asking (sandboxed) / ask again
  %save FILE      save the conversation as markdown
  %help           this help
  exit, quit, Ctrl-D   leave (Ctrl-C stops a running block or reply)"""


@app.command("chat")
def chat_command(
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue a recorded session (id or prefix).")
    ] = None,
    auto_run: AutoRunOpt = None,
    api_base: ApiBaseOpt = None,
    model: ModelOpt = None,
    api_key: ApiKeyOpt = None,
    tool_mode: ToolModeOpt = None,
    max_turns: MaxTurnsOpt = None,
    temperature: TemperatureOpt = None,
    max_model_len: MaxModelLenOpt = None,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids: PidsOpt = None,
    timeout: TimeoutOpt = None,
    max_output: MaxOutputOpt = None,
    workdir: WorkdirOpt = None,
    env: EnvOpt = None,
    isolation: IsolationOpt = None,
    network: NetworkOpt = None,
    allow_host: AllowHostOpt = None,
    ca_bundle: CaBundleOpt = None,
    mount: MountOpt = None,
    no_pool: NoPoolOpt = False,
) -> None:
    """Talk with the model in a loop; every block it writes runs sandboxed after you approve."""
    with _errors():
        settings = _agent_settings(**_setting_flags(locals(), "resume"))
        session = _open(settings, resume=resume)
        renderer = _make_renderer(False, markdown=True)
        err_console.print(
            f"oi chat · {settings.model} at {settings.api_base} · workdir {settings.workdir}"
            f" · session {session.transcript.path.stem if session.transcript else '?'}\n"
            "type a task, %help for commands, Ctrl-D to leave"
        )
        try:
            _chat_loop(session, renderer)
        finally:
            session.sandbox.close()


def _chat_loop(session: Any, renderer: Any) -> None:
    while True:
        try:
            line = input("oi> ")
        except EOFError:
            err_console.print()
            return
        except KeyboardInterrupt:
            err_console.print("\nbye")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("exit", "quit"):
            return
        if text.startswith("%"):
            _chat_command(session, text)
            continue
        with _errors_in_chat():
            _drive(session.send(text), renderer)


@contextlib.contextmanager
def _errors_in_chat() -> Iterator[None]:
    """In chat, a failed turn is reported and the conversation goes on."""
    try:
        yield
    except OiError as exc:
        err_console.print(f"[bold red]oi: error:[/] {exc}", soft_wrap=True)


def _chat_command(session: Any, text: str) -> None:
    command, _, argument = text.partition(" ")
    argument = argument.strip()
    if command == "%reset":
        session.reset()
        err_console.print("conversation reset")
    elif command == "%undo":
        err_console.print("undone" if session.undo() else "nothing to undo")
    elif command == "%tokens":
        totals = session.totals
        err_console.print(
            f"prompt {totals.prompt_tokens} + completion {totals.completion_tokens} tokens; "
            f"{totals.blocks} block(s) run; ~{len(session.messages)} messages in context"
        )
    elif command == "%auto" and argument in ("on", "off"):
        session.auto_run = argument == "on"
        err_console.print(f"auto-run {argument}")
    elif command == "%save" and argument:
        from orchestrator.transcript import save_markdown  # noqa: PLC0415

        with _errors_in_chat():
            path = save_markdown(session.messages, Path(argument))
            err_console.print(f"saved to {path}")
    elif command == "%help":
        err_console.print(CHAT_HELP, markup=False)
    else:
        err_console.print(f"unknown command {text!r}\n{CHAT_HELP}", markup=False)


# --- oi sessions --------------------------------------------------------------------------------
sessions_app = typer.Typer(help="List and show recorded sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")


@sessions_app.command("list")
def sessions_list() -> None:
    """Recorded sessions, oldest first."""
    import datetime  # noqa: PLC0415

    from orchestrator.settings import load_settings  # noqa: PLC0415
    from orchestrator.transcript import list_sessions  # noqa: PLC0415

    with _errors():
        settings = load_settings()
        infos = list_sessions(settings.sessions_dir)
        if not infos:
            err_console.print(f"no sessions in {settings.sessions_dir}")
            return
        table = Table("id", "started", "status", "blocks", "task")
        for info in infos:
            started = datetime.datetime.fromtimestamp(info.started).strftime("%Y-%m-%d %H:%M")
            table.add_row(info.session_id, started, info.status, str(info.blocks), info.task[:60])
        Console().print(table)


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument(help="Session id (or a unique prefix).")],
    raw: Annotated[bool, typer.Option("--json", help="Print the raw JSONL records.")] = False,
) -> None:
    """Show one recorded session: messages, code with hashes, decisions, results."""
    from orchestrator.render import render_transcript  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415
    from orchestrator.transcript import find_session, read_records  # noqa: PLC0415

    with _errors():
        settings = load_settings()
        records = list(read_records(find_session(settings.sessions_dir, session_id)))
        if raw:
            for record in records:
                typer.echo(json.dumps(record))
        else:
            render_transcript(records, Console())


# --- oi images ----------------------------------------------------------------------------------
@images_app.command("build")
def images_build(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Images to build: python, node, shell, proxy (default: all)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if up to date.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Remove stale image tags.")] = False,
) -> None:
    """Build the sandbox images (offline: bootstraps a Debian base when nothing can be pulled)."""
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.images import ALL_IMAGES, ImageCatalog  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415

    with _errors():
        catalog = ImageCatalog(connect(), load_settings())
        unknown = set(names or []) - set(ALL_IMAGES)
        if unknown:
            raise _usage(
                f"unknown image(s) {', '.join(sorted(unknown))}; use {', '.join(ALL_IMAGES)}"
            )
        catalog.build(names, force=force, progress=err_console.print)
        if prune:
            for tag in catalog.prune_stale():
                err_console.print(f"removed stale {tag}")
        _print_images(catalog)


@images_app.command("list")
def images_list() -> None:
    """Show each sandbox image: present, missing or stale."""
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.images import ImageCatalog  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415

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
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.gc import sweep  # noqa: PLC0415

    with _errors():
        client = connect()
        result = sweep(client)
        proxies = _egress_manager(client).sweep_idle()
        typer.echo(
            f"removed {len(result.removed)} orphaned container(s) and {len(proxies)} idle "
            f"egress proxy(ies); {result.kept} container(s) belong to running oi processes"
        )


# --- oi config ----------------------------------------------------------------------------------
@config_app.command("show")
def config_show() -> None:
    """Print the effective settings (flags > OI_* env > ./oi.toml > user config)."""
    from orchestrator.settings import config_files, load_settings  # noqa: PLC0415

    with _errors():
        settings = load_settings()
        for key, value in settings.model_dump().items():
            shown = "***" if key == "api_key" and value not in ("", "EMPTY") else value
            typer.echo(f"{key} = {json.dumps(shown, default=str)}")
        typer.echo(
            "# config files: "
            + ", ".join(f"{p}{'' if p.exists() else ' (absent)'}" for p in config_files())
        )


# --- oi policy ---------------------------------------------------------------------------------
policy_app = typer.Typer(help="The admin policy for shared servers.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show() -> None:
    """Print the admin policy in force (/etc/oi/policy.toml, $OI_POLICY_FILE), line by line."""
    from orchestrator.policy import describe, load_policy  # noqa: PLC0415

    with _errors():
        for line in describe(load_policy()):
            typer.echo(line)


# --- oi doctor ----------------------------------------------------------------------------------
@app.command("doctor")
def doctor() -> None:
    """Check the Docker engine, runtimes, images and disk; print the fix for each problem."""
    from orchestrator.sandbox.docker import connect, engine_errors, engine_versions  # noqa: PLC0415
    from orchestrator.sandbox.images import ImageCatalog  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415
    from orchestrator.units import format_size  # noqa: PLC0415

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
    _doctor_model(settings, report)
    if problems:
        err_console.print(f"[red]{problems} problem(s): the sandbox cannot run until fixed[/]")
        raise typer.Exit(1)
    err_console.print("[green]the sandbox is ready[/]")


def _doctor_model(settings: Settings, report: Any) -> None:
    """Model endpoint checks: reachable, model served, tool calling. Warnings only, since
    the sandbox (oi exec) works without a model."""
    from orchestrator.llm.client import ModelClient  # noqa: PLC0415

    client = ModelClient.from_settings(settings.model_copy(update={"request_timeout": 15.0}))
    try:
        served = client.list_models()
    except OiError as exc:
        report(
            False,
            f"model endpoint {settings.api_base}: {exc}",
            "make up, or set OI_API_BASE",
            fatal=False,
        )
        return
    report(True, f"model endpoint {settings.api_base} answers (serves: {', '.join(served)})")
    if settings.model not in served:
        report(
            False,
            f"model {settings.model} is not served there",
            f"use --model / OI_MODEL with one of: {', '.join(served)}",
            fatal=False,
        )
        return
    length = client.model_max_len()
    report(
        True,
        f"model {settings.model}, context {length or settings.max_model_len} tokens"
        + ("" if length else " (from settings: the server does not say)"),
    )
    try:
        tools = client.supports_tools()
    except OiError as exc:
        report(False, f"tool calling: could not check ({exc})", fatal=False)
        return
    report(
        tools,
        "tool calling " + ("on" if tools else "off: oi will use markdown code blocks"),
        "start vLLM with --enable-auto-tool-choice --tool-call-parser hermes",
        fatal=False,
    )


def _register_extensions() -> None:
    from orchestrator.cli_batch import register  # noqa: PLC0415

    register(app)


_register_extensions()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
