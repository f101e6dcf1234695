"""What every command of the CLI shares: the error console, the one-line error handler, the
Docker connection, and loading settings from a command's flags.

Imports stay light (``oi --help`` must not pay for docker, pydantic and the openai SDK); the
heavy modules are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from orchestrator.cli_options import SettingFlags
from orchestrator.errors import OiError

if TYPE_CHECKING:
    from orchestrator.loading import Layer, Loaded

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def classic_help() -> None:
    """Help that reads like click's. Recent typer shows ``<type>`` after every option - flags
    too, so ``--auto-run <bool>`` looks as if it took a value - and ``{TASK}`` for a required
    argument. Here: flags bare, a value by its METAVAR, and ``TASK``. Without those typer
    internals (another version), typer's own help stays."""
    from typer import core  # noqa: PLC0415

    option = getattr(core, "TyperOption", None)
    display = getattr(option, "display_type_rich", None)
    if option is not None and display is not None and not getattr(display, "oi_classic", False):

        def display_type(self: Any, ctx: Any) -> Any:
            return None if self.is_flag else display(self, ctx)

        display_type.oi_classic = True  # type: ignore[attr-defined]
        option.display_type_rich = display_type
    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):

        def display_name(self: Any) -> str:
            return str(self.metavar or self.display_name_raw).upper()

        def usage_name(self: Any) -> str:
            name = display_name(self) if self.required else f"[{display_name(self)}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_name
        if hasattr(argument, "_rich_display_name"):
            argument._rich_display_name = display_name
    if argument is not None and hasattr(argument, "display_type_rich"):
        argument.display_type_rich = lambda self, ctx: None


state = {"debug": False}


def error_line(exc: BaseException) -> Text:
    """``oi: error: <message>``: the message shown as text (never as markup or escapes; a
    continuation line never starts at the margin)."""
    from orchestrator.render import error_text  # noqa: PLC0415

    return error_text(exc)


def say(message: str, style: str = "") -> None:
    """``oi: <message>`` on stderr, made safe (it may hold a file name or a model's words)."""
    from orchestrator.render import oi_line  # noqa: PLC0415

    err_console.print(oi_line(message, style))


def plain(message: str, style: str = "") -> None:
    """A line of ours on stderr that may quote untrusted parts (paths, names)."""
    from orchestrator.safe_text import clean_line  # noqa: PLC0415

    err_console.print(Text(clean_line(message), style=style))


def out(line: str) -> None:
    """A line of ours on stdout that may quote untrusted parts (paths, names, task ids, policy
    lines): shown with every control, bidi and invisible character escaped."""
    from orchestrator.safe_text import clean_line  # noqa: PLC0415

    typer.echo(clean_line(line))


EXIT_INTERRUPTED = 3
"""Stopped before finishing: Ctrl-C, SIGTERM or SIGHUP (never 130/143: those are a block's)."""

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stops_received: list[int] = []  # the stop signals oi's own handler took, in this process


_STOP_WORDS = {
    signal.SIGTERM: "stopped by SIGTERM",
    signal.SIGHUP: "stopped by SIGHUP (the terminal closed)",
}
"""What the record says ended the session (a Ctrl-C says so itself: ``Session``'s default)."""


def _stop(signum: int, _frame: object) -> None:
    _stops_received.append(signum)
    words = _STOP_WORDS.get(signal.Signals(signum))
    raise KeyboardInterrupt(words) if words else KeyboardInterrupt


def stop_if_told() -> None:
    """Raise the ``KeyboardInterrupt`` of a SIGTERM or SIGHUP this process received: for a
    loop (``oi chat``) that takes a Ctrl-C during a block as "back to the prompt", these mean
    "stop" (a service manager, a closed terminal)."""
    for signum in _stops_received:
        words = _STOP_WORDS.get(signal.Signals(signum))
        if words:
            raise KeyboardInterrupt(words)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP stop oi as Ctrl-C does: blocks killed, containers removed, records
    closed, batch reports written. Ctrl-C goes through the same handler, so that the exit code
    can tell a stop by a person from a block's own exit 130 (``run_to_exit``)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _stop)
    state["signals"] = True


def _ignore_stop_signals() -> None:
    """oi has decided how it ends (its containers are being or have been removed): a further
    Ctrl-C or SIGTERM must not turn exit 3 into a death by signal (130/143, no message), nor cut
    the exit-time cleanup short. Only in the process whose handlers ``install_signal_handlers``
    set (never in a test runner that invokes commands in-process)."""
    if not state.get("signals"):
        return
    for sig in _STOP_SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread: nothing to do there
            signal.signal(sig, signal.SIG_IGN)


def run_to_exit(app: Callable[[], object]) -> NoReturn:
    """Run the CLI and exit with a code the README lists, whenever a stop signal arrives.

    A signal that arrives outside every command's ``errors()`` (at start-up, or while the
    command's exit unwinds) would end oi with 130 - typer's code for a ``KeyboardInterrupt``
    - or kill it outright; both become ``EXIT_INTERRUPTED``. A 130 without a signal to oi is
    a block's own exit code (``oi exec``) and is kept.
    """
    code: int | str | None = EXIT_INTERRUPTED
    try:
        try:
            app()
            code = 0
        finally:
            _ignore_stop_signals()
    except SystemExit as exc:
        _ignore_stop_signals()
        code = exc.code
        if code == _TYPER_INTERRUPTED and _stops_received:
            err_console.print(Text("oi: interrupted", style="yellow"))
            code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _ignore_stop_signals()
        err_console.print(Text("oi: interrupted", style="yellow"))
        code = EXIT_INTERRUPTED
    _exit_now(code)


def _exit_now(code: int | str | None) -> NoReturn:
    """Exit without Python's own teardown of every module's objects, which takes about 0.2 s
    once oi is done (measured): the atexit handlers run and the output is flushed first. If a
    thread that is not a daemon still runs, or the code is a message, exit the usual way."""
    import atexit  # noqa: PLC0415
    import os  # noqa: PLC0415
    import threading  # noqa: PLC0415

    code = 0 if code is None else code
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if not isinstance(code, int) or any(not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


_TYPER_INTERRUPTED = 130  # what typer exits with when a KeyboardInterrupt reaches it


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn oi errors into one line on stderr and the error's exit code; a Ctrl-C (or SIGTERM)
    that reaches here ends the command with ``EXIT_INTERRUPTED``."""
    try:
        yield
    except OiError as exc:
        if state["debug"]:
            err_console.print_exception()
        err_console.print(error_line(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _ignore_stop_signals()  # the command ends here: a second signal must not change that
        err_console.print(Text("oi: interrupted", style="yellow"))
        raise typer.Exit(EXIT_INTERRUPTED) from None


def usage(message: str) -> OiError:
    from orchestrator.errors import ConfigError  # noqa: PLC0415

    return ConfigError(message)


def load_flags(
    flags: SettingFlags | None = None, untrusted: tuple[Layer, ...] = (), **extra: Any
) -> Loaded:
    """Settings for a command: its flags (plus ``extra`` values the command sets itself) over
    every other source, the policy applied once."""
    from orchestrator.loading import load  # noqa: PLC0415

    values = {
        **(flags.values if flags else {}),
        **{k: v for k, v in extra.items() if v is not None},
    }
    return load(values, untrusted=untrusted)


def docker_client() -> Any:
    """Connect to Docker and quietly sweep containers left by dead oi processes."""
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415
    from orchestrator.sandbox.gc import sweep  # noqa: PLC0415

    client = connect()
    with contextlib.suppress(OiError):
        sweep(client)
    return client


def image_catalog(client: Any, loaded: Loaded) -> Any:
    from orchestrator.sandbox.images import ImageCatalog  # noqa: PLC0415

    settings = loaded.settings
    return ImageCatalog(
        client,
        prefix=settings.image_prefix,
        base_image=settings.base_image,
        ca_bundle=settings.ca_bundle,
    )
