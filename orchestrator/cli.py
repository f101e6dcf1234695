"""The ``oi`` command line: parse flags -> build objects -> render events -> exit code.

Thin by design: the work happens in ``sandbox/`` and ``session.py``; settings come from
``settings.load`` (one path for every command), sessions from ``wiring.open_session``. Errors
for people are one line (what failed, where, the fix); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import __version__
from orchestrator.cli_common import (
    classic_help,
    docker_client,
    err_console,
    errors,
    image_catalog,
    install_signal_handlers,
    load_flags,
    out,
    plain,
    say,
    state,
    stop_if_told,
    usage,
)
from orchestrator.cli_options import (
    LIMIT_FLAGS,
    MODEL_FLAGS,
    SANDBOX_FLAGS,
    SettingFlags,
    with_setting_flags,
)
from orchestrator.languages import parse_language, supported_names

# Commands import what they use when they run: `oi --help` must not pay for docker, pydantic
# and the openai SDK (start-up time is measured in bench/overhead.py).
if TYPE_CHECKING:
    from orchestrator.events import EndStatus
    from orchestrator.loading import Loaded
    from orchestrator.sandbox.container import ExecResult
    from orchestrator.session import SessionEvents
    from orchestrator.wiring import Opened

classic_help()
app = typer.Typer(
    name="oi",
    help="Let a local model write code, and run every block in a throwaway, hardened container.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # settings hold API keys
    context_settings={"help_option_names": ["-h", "--help"]},
)
images_app = typer.Typer(help="Build and list the sandbox images.", no_args_is_help=True)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
sessions_app = typer.Typer(help="List and show recorded sessions.", no_args_is_help=True)
policy_app = typer.Typer(help="The admin policy for shared servers.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(config_app, name="config")
app.add_typer(sessions_app, name="sessions")
app.add_typer(policy_app, name="policy")

AGENT_FLAGS = (
    "auto_run", *MODEL_FLAGS, "max_model_len", *LIMIT_FLAGS, *SANDBOX_FLAGS, "no_pool",
    "no_state", "session_env", "instructions", "profile",
)  # fmt: skip
EXIT_FOR_STATUS = {
    "finished": 0,
    "error": 1,
    "max_turns": 3,
    "quit": 3,
    "loop_guard": 3,
    "interrupted": 3,
}


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
    state["debug"] = debug


# --- oi exec ------------------------------------------------------------------------------------
@app.command("exec")
@with_setting_flags(*LIMIT_FLAGS, *SANDBOX_FLAGS)
def exec_command(
    language: Annotated[str, typer.Argument(help=f"Language: {supported_names()}.")],
    file: Annotated[str, typer.Argument(help="File with the code, or - for standard input.")] = "-",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    *,
    flags: SettingFlags,
) -> None:
    """Run one block of code in a fresh sandbox, without a model; exit with its exit code
    (124 timeout, 137 out of memory, 73 workdir limit).

    Examples:
      echo 'import pandas; print(pandas.__version__)' | oi exec python
      oi exec sh cleanup.sh --network none --timeout 30
    """
    from orchestrator.render import passthrough, reset_terminal  # noqa: PLC0415
    from orchestrator.sandbox.runner import Sandbox  # noqa: PLC0415

    with errors():
        lang = parse_language(language)
        loaded = load_flags(flags)
        code = _read_code(file)
        config = loaded.sandbox_config()
        with Sandbox.from_config(config, client=docker_client()) as sandbox:
            result = sandbox.run(
                lang,
                code,
                on_output=None if as_json else passthrough(),
                on_status=say,
            )
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            reset_terminal()
            _report_limits(result, loaded)
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
        raise usage(f"cannot read code from {path}: {exc.strerror}") from None


def _report_limits(result: ExecResult, loaded: Loaded) -> None:
    from orchestrator.llm.prompts import workdir_limit_words  # noqa: PLC0415
    from orchestrator.units import format_size  # noqa: PLC0415

    settings = loaded.settings
    if result.timed_out:
        err_console.print(f"oi: timed out after {settings.timeout:g} s (wall-clock limit)")
    elif result.oom_killed:
        err_console.print(f"oi: killed: memory limit {format_size(settings.memory)}")
    elif result.workdir_overrun is not None:
        say(workdir_limit_words(result.workdir_overrun), "red")
    if result.truncated:
        err_console.print(
            f"oi: output kept in the result was capped at {settings.max_output} bytes per stream "
            f"({result.stdout_cut + result.stderr_cut} bytes cut)"
        )


# --- oi run / oi chat ---------------------------------------------------------------------------


def _preload_wiring() -> None:
    """Start importing the session's modules (the openai SDK above all: most of oi's start-up)
    on a thread, so the settings files and the Docker engine are read meanwhile."""
    import importlib  # noqa: PLC0415
    import threading  # noqa: PLC0415

    threading.Thread(
        target=importlib.import_module, args=("orchestrator.wiring",), daemon=True
    ).start()


def _open(loaded: Loaded, resume: str | None = None) -> Opened:
    client = docker_client()  # while the session's modules load (``_preload_wiring``)
    from orchestrator.wiring import open_session  # noqa: PLC0415

    opened = open_session(loaded, resume=resume, docker_client=client, on_model_wait=say)
    if opened.sandbox.identity.warning:
        say(opened.sandbox.identity.warning, "yellow")
    return opened


def _drive_terminal(events: SessionEvents, renderer: Any, render: Any = None) -> EndStatus:
    from orchestrator.drive import drive  # noqa: PLC0415
    from orchestrator.render import InteractiveApprover  # noqa: PLC0415

    def interrupted() -> None:
        renderer.interrupt()
        err_console.print("[yellow]oi: interrupted[/]")

    try:
        return drive(
            events,
            render=render or renderer.render,
            approve=InteractiveApprover(eof="quit").decide,
            on_interrupt=interrupted,
        )
    except BaseException:
        renderer.interrupt()  # no spinner left running under the error line or the prompt
        raise


def _renderer(as_json: bool, *, markdown: bool) -> Any:
    from orchestrator.render import HumanRenderer, JsonRenderer  # noqa: PLC0415

    return JsonRenderer() if as_json else HumanRenderer(markdown=markdown)


@app.command("run")
@with_setting_flags(*AGENT_FLAGS)
def run_command(
    task: Annotated[str, typer.Argument(help="What to do, in plain words.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON event per line on stdout.")
    ] = False,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            metavar="FILE",
            help="An image sent with the task (repeatable; implies --vision).",
        ),
    ] = None,
    *,
    flags: SettingFlags,
) -> None:
    """Do one task: the model writes code, you approve, it runs sandboxed, until done.

    Examples:
      oi run "clean sales.csv and plot monthly revenue"
      oi run -y --allow-host pypi "install tabulate and print data.csv as a table"

    Exit codes: 0 finished, 1 model or Docker unreachable, 2 bad usage or config,
    3 stopped (max turns, you quit, the loop guard, Ctrl-C, SIGTERM/SIGHUP, input ended).
    """
    _preload_wiring()
    with errors():
        if not task.strip():
            raise usage('oi run needs a task, e.g. oi run "plot sales.csv by month"')
        _check_images(images or [])  # before a session (and its record) is opened
        session_id = ""
        try:
            with _open(load_flags(flags, vision=True if images else None)) as opened:
                session_id = opened.session_id
                for image in images or []:
                    opened.session.images.queue(image)
                renderer = _renderer(as_json, markdown=False)
                from orchestrator.wiring import announce_project_instructions  # noqa: PLC0415

                render = announce_project_instructions(renderer.render, opened.session.instructions)
                status = _drive_terminal(opened.session.send(task), renderer, render)
        finally:
            if session_id and not as_json:  # also after an error: the record says what happened
                say(f"session {session_id} (oi sessions show {session_id})", "dim")
        raise typer.Exit(EXIT_FOR_STATUS.get(status, 3))


def _check_images(paths: list[Path]) -> None:
    from orchestrator.vision import image_size, read_user_image  # noqa: PLC0415

    for path in paths:
        if image_size(read_user_image(path)) is None:
            raise usage(f"--image {path}: not a PNG, JPEG or WebP image")


@app.command("chat")
@with_setting_flags(*AGENT_FLAGS)
def chat_command(
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="ID", help="Continue a recorded session (id or prefix)."),
    ] = None,
    *,
    flags: SettingFlags,
) -> None:
    """Talk with the model in a loop; every block it writes runs sandboxed after you approve.

    Examples:
      oi chat
      oi chat --resume 20261207T101500-ab12cd

    In the chat, %help lists the commands (%save, %undo, %tokens, %auto on|off, ...).
    """
    from orchestrator.chat import chat_loop  # noqa: PLC0415

    _preload_wiring()
    with errors():
        loaded = load_flags(flags)
        if resume:
            loaded = _resume_workdir(loaded, resume, given="workdir" in flags.values)
        settings = loaded.settings
        with _open(loaded, resume=resume) as opened:
            renderer = _renderer(False, markdown=True)
            plain(
                f"oi chat · {settings.model} at {settings.api_base} · workdir "
                f"{settings.workdir} · session {opened.session_id}"
            )
            if resume:
                kept = [m for m in opened.session.messages if m.get("role") != "system"]
                told = sum(m.get("role") == "user" for m in kept)
                plain(
                    f"resumed: {len(kept)} message(s) so far, {told} of them yours or block "
                    "results; the model remembers them (%tokens counts from now)"
                )
            plain("type a task, %help for commands, Ctrl-D to leave")
            session = opened.session
            from orchestrator.wiring import announce_project_instructions  # noqa: PLC0415

            render = announce_project_instructions(renderer.render, session.instructions)

            def send(text: str) -> None:
                _drive_terminal(session.send(text), renderer, render)
                stop_if_told()  # a SIGTERM/SIGHUP during a block ends the chat, exit 3

            chat_loop(session, send)
        say(f"session {opened.session_id}", "dim")


def _resume_workdir(loaded: Loaded, resume: str, *, given: bool) -> Loaded:
    """A resumed chat continues in the folder it ran in, unless --workdir says otherwise; a
    different folder is said out loud (the conversation may name files of the old one)."""
    from orchestrator.wiring import recorded_workdir  # noqa: PLC0415

    recorded = recorded_workdir(loaded.settings, resume)
    current = loaded.settings.workdir
    if recorded is None or recorded == current:
        return loaded
    if given:
        say(f"the session ran in {recorded}; resuming it in {current} (--workdir)", "yellow")
        return loaded
    if not recorded.is_dir():
        say(f"the session ran in {recorded}, which is gone; resuming in {current}", "yellow")
        return loaded
    say(f"resuming in the session's folder {recorded} (--workdir DIR to choose another)", "dim")
    return loaded.replace(workdir=recorded)


# --- oi sessions --------------------------------------------------------------------------------
@sessions_app.command("list")
def sessions_list(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most N sessions.")] = 20,
) -> None:
    """Recorded sessions, newest first.

    Example:  oi sessions list -n 5
    """
    import datetime  # noqa: PLC0415

    from orchestrator.render import safe_cell  # noqa: PLC0415
    from orchestrator.transcript import list_sessions  # noqa: PLC0415

    with errors():
        settings = load_flags().settings
        infos = list_sessions(settings.sessions_dir)
        if not infos:
            plain(f"no sessions in {settings.sessions_dir}")
            return
        table = Table()
        table.add_column("id", no_wrap=True, min_width=22)  # never cut: it is what you type next
        table.add_column("started", no_wrap=True)
        table.add_column("status")
        table.add_column("blocks", justify="right")
        table.add_column("task", overflow="fold", ratio=1)
        for info in infos[: max(1, limit)]:
            started = datetime.datetime.fromtimestamp(info.started).strftime("%Y-%m-%d %H:%M")
            status = info.status + (" (incomplete)" if info.incomplete_lines else "")
            cells = (info.session_id, started, status, info.blocks, info.task[:60])
            table.add_row(*(safe_cell(value) for value in cells))
        Console().print(table)
        if len(infos) > limit:
            err_console.print(f"{len(infos) - limit} older session(s) not shown (--limit)")


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument(help="Session id (or a unique prefix).")],
    raw: Annotated[bool, typer.Option("--json", help="Print the raw JSONL records.")] = False,
) -> None:
    """Show one recorded session: messages, code with hashes, decisions, results.

    Example:  oi sessions show 20261207T101500-ab12cd
    """
    from orchestrator.render import render_transcript  # noqa: PLC0415
    from orchestrator.transcript import find_session, scan_records  # noqa: PLC0415

    with errors():
        settings = load_flags().settings
        scan = scan_records(find_session(settings.sessions_dir, session_id))
        if raw:
            for record in scan.records:
                typer.echo(json.dumps(record))
        else:
            render_transcript(scan.records, Console())
        for note in scan.notes():
            say(note, "yellow")


# --- oi images ----------------------------------------------------------------------------------
@images_app.command("build")
def images_build(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Images to build: python, node, shell, full, proxy (default: all)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if up to date.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Remove stale image tags.")] = False,
) -> None:
    """Build the sandbox images (offline: bootstraps a Debian base when nothing can be pulled).

    Examples:  oi images build     oi images build python
    """
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.images import ALL_IMAGES  # noqa: PLC0415

    with errors():
        catalog = image_catalog(connect(), load_flags())
        unknown = set(names or []) - set(ALL_IMAGES)
        if unknown:
            raise usage(
                f"unknown image(s) {', '.join(sorted(unknown))}; use {', '.join(ALL_IMAGES)}"
            )
        catalog.build(names, force=force, progress=plain)
        if prune:
            for tag in catalog.prune_stale():
                plain(f"removed stale {tag}")
        _print_images(catalog)


@images_app.command("list")
def images_list() -> None:
    """Show each sandbox image: present, missing or stale.

    Example:  oi images list
    """
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415

    with errors():
        _print_images(image_catalog(connect(), load_flags()))


def _print_images(catalog: Any) -> None:
    from rich.text import Text  # noqa: PLC0415

    from orchestrator.render import safe_cell  # noqa: PLC0415

    table = Table("image", "expected tag", "status", "stale tags")
    for status in catalog.status():
        state = (
            Text("present", "green")
            if status.present
            else Text.assemble(("missing", "red"), " (oi images build)")
        )
        stale = safe_cell(", ".join(status.stale_tags) or "-")
        table.add_row(safe_cell(status.name), safe_cell(status.tag), state, stale)
    Console().print(table)


# --- oi gc --------------------------------------------------------------------------------------
@app.command("gc")
def gc_command() -> None:
    """Remove sandbox containers, networks and session environments left behind by oi processes
    that are gone (every oi start removes the containers too).

    Example:  oi gc
    """
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.gc import sweep  # noqa: PLC0415
    from orchestrator.sandbox.session_env import KEEP_DAYS, sweep_envs  # noqa: PLC0415

    with errors():
        client = connect()
        result = sweep(client)
        envs = sweep_envs(load_flags().settings.data_dir / "envs")
        typer.echo(
            f"removed {len(result.removed)} orphaned container(s), {len(result.networks)} "
            f"network(s) and {len(envs)} session environment(s) unused for {KEEP_DAYS:g} days; "
            f"{result.kept} container(s) belong to running oi processes"
        )


# --- oi config / oi trust / oi policy -----------------------------------------------------------
@config_app.command("show")
def config_show(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Show the settings with this profile.")
    ] = None,
) -> None:
    """Print each effective setting with where it comes from (flag, OI_* variable, a config
    file, a profile, the admin policy, or the default), then the standing instructions.

    Examples:  oi config show     oi config show --profile gpu
    """
    from orchestrator.settings import (  # noqa: PLC0415
        project_config_path,
        shown_value,
        user_config_path,
    )

    with errors():
        loaded = load_flags(profile=profile)
        for key, value in loaded.settings.model_dump().items():
            shown = shown_value(key, value)
            source = loaded.source_of(key)
            out(f"{key} = {json.dumps(shown, default=str)}  # {source}")
        for piece in loaded.instructions.pieces:
            out(f"# instructions from {piece.source}:")
            for line in piece.text.strip().splitlines():
                out(f"#   {line}")
        files = [user_config_path(), project_config_path()]
        out(
            "# config files: " + ", ".join(f"{p}{'' if p.exists() else ' (absent)'}" for p in files)
        )


@app.command("trust")
def trust_command(
    file: Annotated[
        Path | None, typer.Argument(help="A project file (./oi.toml, a tasks file) to trust.")
    ] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Stop trusting FILE.")] = False,
    listing: Annotated[bool, typer.Option("--list", help="List the files you trust.")] = False,
) -> None:
    """Trust a project file as your own settings (by its content: a change untrusts it).

    Untrusted, a project's oi.toml or tasks file may only narrow what you allow; trusted, it
    may set anything you may (network, env, mounts, workdir, the model endpoint, ...).

    Examples:  oi trust oi.toml     oi trust --list     oi trust --revoke oi.toml
    """
    from orchestrator.trust import TrustStore  # noqa: PLC0415

    with errors():
        store = TrustStore.default()
        if listing or file is None:
            entries = store.listed()
            for name, sha in sorted(entries.items()):
                out(f"{sha[:16]}  {name}")
            if not entries:
                plain(f"no trusted files ({store.path})")
            return
        if revoke:
            found = store.revoke(file)
            plain(f"{'no longer trusted' if found else 'was not trusted'}: {file.absolute()}")
            return
        digest = store.trust(file)
        plain(f"trusted {file.absolute()} (sha256 {digest[:16]}); it may now set anything you may")


@policy_app.command("show")
def policy_show() -> None:
    """Print the admin policy in force (/etc/oi/policy.toml, $OI_POLICY_FILE), line by line.

    Example:  oi policy show
    """
    from orchestrator.policy import describe, load_policy  # noqa: PLC0415

    with errors():
        for line in describe(load_policy()):
            out(line)


def _register_extensions() -> None:
    from orchestrator.cli_batch import register  # noqa: PLC0415
    from orchestrator.cli_doctor import register as register_doctor  # noqa: PLC0415
    from orchestrator.cli_serve import register as register_serve  # noqa: PLC0415

    register(app)
    register_doctor(app)
    register_serve(app)


_register_extensions()


def main() -> None:
    """Console-script entry point: exit codes as the README lists them, whenever a stop signal
    (Ctrl-C, SIGTERM, SIGHUP) arrives - a second one while oi ends included."""
    from orchestrator.cli_common import run_to_exit  # noqa: PLC0415

    install_signal_handlers()
    run_to_exit(app)


if __name__ == "__main__":
    main()
