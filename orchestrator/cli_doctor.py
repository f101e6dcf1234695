"""``oi doctor``: check the engine, runtimes, images, disk and the model endpoint; print the
fix for each problem (registered on the main app by cli.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from orchestrator.cli_common import err_console, errors, image_catalog, load_flags
from orchestrator.cli_options import SettingFlags, with_setting_flags
from orchestrator.errors import OiError
from orchestrator.safe_text import clean_line

if TYPE_CHECKING:
    from orchestrator.loading import Loaded

Report = Callable[..., None]


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


@with_setting_flags("api_base", "model", "api_key", "isolation", "profile", "instructions")
def doctor(*, flags: SettingFlags) -> None:
    """Check the Docker engine, runtimes, images and disk, and the model endpoint (--api-base,
    --model); print the fix for each problem.

    Examples:  oi doctor     oi doctor --api-base http://gpu-box:8000/v1 --model my-model
    """
    from orchestrator.sandbox.docker import connect, engine_errors, engine_versions  # noqa: PLC0415

    problems = 0

    def report(ok: bool, what: str, fix: str = "", *, fatal: bool = True) -> None:
        nonlocal problems
        mark = ("ok  ", "green") if ok else (("FAIL", "red") if fatal else ("warn", "yellow"))
        err_console.print(Text.assemble(mark, " ", clean_line(what)))  # may quote a server
        if not ok and fix:
            err_console.print(Text("      fix: " + clean_line(fix)))
        if not ok and fatal:
            problems += 1

    with errors():
        loaded = load_flags(flags)
    settings = loaded.settings
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
    with errors(), engine_errors("reading engine info"):
        info = client.info()
    runtimes = info.get("Runtimes") or {}
    report("runc" in runtimes, "runtime runc", "reinstall Docker")
    gvisor = settings.gvisor_runtime
    path = str((runtimes.get(gvisor) or {}).get("path", ""))
    is_gvisor = os.path.basename(path).startswith("runsc")
    report(
        is_gvisor,
        f"runtime {gvisor} (gVisor)"
        + ("" if gvisor in runtimes else " not registered")
        + ("" if is_gvisor or gvisor not in runtimes else f" is {path}, not gVisor's runsc"),
        "install runsc and register it in /etc/docker/daemon.json ('sudo make setup' does)",
        fatal=settings.isolation == "gvisor",
    )
    with errors():
        for status in image_catalog(client, loaded).status():
            stale = f" (stale: {', '.join(status.stale_tags)})" if status.stale_tags else ""
            report(
                status.present,
                f"image {status.tag}{'' if status.present else ' missing'}{stale}",
                "oi images build",
            )
    _doctor_disk(str(info.get("DockerRootDir") or "/"), report)
    model_usable = _doctor_model(loaded, report)
    if problems:
        err_console.print(f"[red]{problems} problem(s): the sandbox cannot run until fixed[/]")
        raise typer.Exit(1)
    if not model_usable:  # oi exec works; oi run, chat and batch would stop at once
        err_console.print(
            "[yellow]the sandbox is ready (oi exec works), but oi run, chat and batch need the "
            "model: fix the model problem above[/]"
        )
        raise typer.Exit(1)
    err_console.print("[green]the sandbox is ready[/]")


def _doctor_disk(root: str, report: Report) -> None:
    from orchestrator.units import format_amount  # noqa: PLC0415

    try:
        free = shutil.disk_usage(root).free
    except OSError:
        report(False, f"free disk at {root}: cannot read", fatal=False)
        return
    report(
        free > 2 * 1024**3,
        f"free disk at {root}: {format_amount(free)}",
        "free space: docker system prune, or remove stale images (oi images build --prune)",
        fatal=free < 512 * 1024**2,
    )


def _doctor_model(loaded: Loaded, report: Report) -> bool:
    """Model endpoint checks: reachable, model served, its context against what the settings
    need, tool calling. Warnings, since the sandbox (oi exec) works without a model; False when
    no session could start (the server cannot be reached, or does not serve the model)."""
    from orchestrator.wiring import model_client  # noqa: PLC0415

    settings = loaded.settings
    quick = {"request_timeout": 15.0, "first_token_timeout": 15.0, "retry_attempts": 1}
    client = model_client(settings.model_copy(update=quick))  # a check, not a conversation
    try:
        served = client.list_models()
    except OiError as exc:  # the message already says what to do
        report(False, f"model endpoint: {exc}", fatal=False)
        return False
    report(True, f"model endpoint {settings.api_base} answers (serves: {', '.join(served)})")
    if settings.model not in served:
        report(
            False,
            f"model {settings.model} is not served there",
            f"use --model / OI_MODEL with one of: {', '.join(served)}",
            fatal=False,
        )
        return False
    length = client.model_max_len()
    report(
        True,
        f"model {settings.model}, context {length or settings.max_model_len} tokens"
        + ("" if length else " (from settings: the server does not say)"),
    )
    _doctor_context(loaded, length or settings.max_model_len, report)
    try:
        tools = client.supports_tools()
    except OiError as exc:
        report(False, f"tool calling: could not check ({exc})", fatal=False)
        return True
    report(
        tools,
        "tool calling " + ("on" if tools else "off: oi will use markdown code blocks"),
        "start vLLM with --enable-auto-tool-choice --tool-call-parser hermes",
        fatal=False,
    )
    return True


def _doctor_context(loaded: Loaded, length: int, report: Report) -> None:
    """Does the model's context hold oi's prompt, the standing instructions and a block's
    whole output? Below that, oi still works (outputs are cut to fit), but say so."""
    import json  # noqa: PLC0415

    from orchestrator.context import context_need, instructions_problem  # noqa: PLC0415
    from orchestrator.llm.prompts import (  # noqa: PLC0415
        EXECUTE_TOOL,
        PromptContext,
        build_system_prompt,
    )
    from orchestrator.sandbox.toolbox import language_notes  # noqa: PLC0415

    settings, instructions = loaded.settings, loaded.instructions
    prompt = build_system_prompt(
        PromptContext(
            str(settings.workdir),
            language_notes(settings.toolbox),
            settings.network,
            tuple(settings.allow_hosts),
            tool_mode_is_tools=settings.tool_mode != "markdown",
        )
    )
    sources = ", ".join(p.source for p in instructions.pieces if p.text.strip())
    problem = instructions_problem(
        instructions.size, sources, length, settings.max_tokens, framing=instructions.framing
    )
    if problem is not None:
        report(
            False,
            f"instructions: {problem}",
            "oi run, chat and batch refuse to start until then",
            fatal=False,
        )
    parts = context_need(
        len(prompt) + len(json.dumps(EXECUTE_TOOL)),
        instructions.size,
        settings.max_output,
        length,
        settings.max_tokens,
    )
    need = sum(parts.values())
    detail = ", ".join(f"{name} ~{tokens}" for name, tokens in parts.items() if tokens)
    report(
        length >= need,
        f"context {length} tokens for about {need} the settings need ({detail}; "
        f"--max-output {settings.max_output})"
        + ("" if length >= need else ": block outputs will be cut to fit"),
        "lower --max-output (max_output in a profile), shorten the instructions, or serve the "
        "model with a larger context (MAX_MODEL_LEN in compose/.env)",
        fatal=False,
    )
