"""`oi batch` and `oi replay` commands (registered on the main Typer app by cli.py).

Thin adapters: parse flags -> build the runner (``batch.py``) or the replay (``replay.py``) ->
render their events -> write reports -> exit code. Helpers of ``orchestrator.cli`` are
imported inside functions, since cli.py imports this module while it is being loaded.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from orchestrator.batch import (
    BatchEvent,
    BatchNotice,
    BatchReport,
    ProgressState,
    TaskFinished,
    TaskStarted,
    format_clock,
)
from orchestrator.cli_options import (
    AllowHostOpt,
    ApiBaseOpt,
    ApiKeyOpt,
    CpusOpt,
    EnvOpt,
    IsolationOpt,
    MaxModelLenOpt,
    MaxOutputOpt,
    MaxTurnsOpt,
    MemoryOpt,
    ModelOpt,
    NetworkOpt,
    NoPoolOpt,
    PidsOpt,
    TemperatureOpt,
    TimeoutOpt,
    ToolModeOpt,
)
from orchestrator.errors import ConfigError, PolicyError
from orchestrator.replay import BlockComparison
from orchestrator.sandbox.output import TerminalSanitizer

# Exit codes of `oi batch` and `oi replay` (bad usage or an unreachable engine: see cli.py).
EXIT_OK = 0
EXIT_FAILED = 1  # a task failed or errored / a replayed block did not match
EXIT_INTERRUPTED = 3  # Ctrl-C: the partial report was written

# Options, defined here (not imported) so these commands do not depend on cli.py's names.
ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", "-j", help="Tasks at once (sandboxes and model requests).")
]
OutOpt = Annotated[
    Path,
    typer.Option("--out", "-o", help="Folder for each task's workdir copy, record and result."),
]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report here.")]
JsonFileOpt = Annotated[Path | None, typer.Option("--json", help="Write a JSON summary here.")]
ShardOpt = Annotated[
    str | None, typer.Option("--shard", help="Run shard I of N (e.g. 2/4): for CI runners.")
]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Keep results in --out of tasks that passed or failed."),
]
BudgetOpt = Annotated[
    str,
    typer.Option("--budget", help="Wall-clock budget per task, e.g. 600 or 15m."),
]

_MARKS = {
    "passed": ("PASS ", "green"),
    "failed": ("FAIL ", "red"),
    "error": ("ERROR", "red"),
    "skipped": ("SKIP ", "yellow"),
}


def register(app: typer.Typer) -> None:
    """Add the batch and replay commands to ``app``."""
    app.command("batch")(batch_command)
    app.command("replay")(replay_command)


# --- oi batch -------------------------------------------------------------------------------------


def batch_command(
    tasks_file: Annotated[Path, typer.Argument(help="Tasks file: YAML, or JSONL (.jsonl).")],
    concurrency: ConcurrencyOpt = 1,
    out: OutOpt = Path("oi-batch-out"),
    junit: JunitOpt = None,
    json_file: JsonFileOpt = None,
    shard: ShardOpt = None,
    resume: ResumeOpt = False,
    budget: BudgetOpt = "15m",
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
    network: NetworkOpt = None,
    allow_host: AllowHostOpt = None,
    isolation: IsolationOpt = None,
    env: EnvOpt = None,
    no_pool: NoPoolOpt = False,
) -> None:
    """Run a file of tasks unattended (auto-run: every block is sandboxed); JUnit/JSON reports.

    A task passes when the model finished and its check (a shell command run in a sandbox on
    the task's workdir) exits 0. Exit codes: 0 every task passed, 1 a task failed or errored
    (or the engine is unreachable), 2 bad tasks file or usage, 3 interrupted (Ctrl-C; the
    partial report is written).
    """
    from orchestrator import batch  # noqa: PLC0415
    from orchestrator.cli import _docker_client, _errors, err_console  # noqa: PLC0415
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415

    with _errors():
        if concurrency < 1:
            raise ConfigError(f"--concurrency {concurrency}: run at least 1 task at a time")
        try:
            budget_s = batch.parse_duration(budget)
        except ValueError as exc:
            raise ConfigError(f"--budget: {exc}") from None
        shard_pair = batch.parse_shard(shard) if shard else None
        specs = batch.load_tasks_file(tasks_file)
        in_file = len(specs)
        if shard_pair:
            specs = batch.select_shard(specs, *shard_pair)
        flags: dict[str, Any] = {
            "api_base": api_base,
            "model": model,
            "api_key": api_key,
            "tool_mode": tool_mode,
            "max_turns": max_turns,
            "temperature": temperature,
            "max_model_len": max_model_len,
            "memory": memory,
            "cpus": cpus,
            "pids": pids,
            "timeout": timeout,
            "max_output": max_output,
            "network": network,
            "allow_hosts": list(allow_host) if allow_host else None,
            "isolation": isolation,
            "env": list(env) if env else None,
            "pool": False if no_pool else None,
        }
        out_dir = out.expanduser().absolute()
        planned = batch.plan_tasks(
            specs,
            flags=flags,
            out_dir=out_dir,
            default_budget_s=budget_s,
            resume=resume,
            source=str(tasks_file),
            owner_reference=tasks_file,
        )
        batch.prepare_out_dir(out_dir, resume=resume)
        shard_text = f"{shard_pair[0]}/{shard_pair[1]}" if shard_pair else None
        if planned:
            _docker_client().close()  # fails fast when no engine answers; sweeps orphans
        _announce(err_console, planned, in_file, shard_text, concurrency, out_dir, budget_s)
        runner = batch.BatchRunner(
            planned,
            out_dir=out_dir,
            concurrency=concurrency,
            docker_factory=connect,
            tasks_file=str(tasks_file),
        )
        display = BatchDisplay(err_console, len(planned), concurrency)
        display.start()
        try:
            report = _drive_batch(runner.run(), display)
        finally:
            display.stop()
        _write_reports(
            report,
            out_dir=out_dir,
            junit=junit,
            json_file=json_file,
            tasks_file=tasks_file,
            shard=shard_text,
            concurrency=concurrency,
        )
        _print_batch_summary(report, out_dir=out_dir, junit=junit, json_file=json_file)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    passed = all(result.outcome == "passed" for result in report.results)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def _announce(
    console: Console,
    planned: list[Any],
    in_file: int,
    shard: str | None,
    concurrency: int,
    out_dir: Path,
    budget_s: float,
) -> None:
    from orchestrator.units import format_size  # noqa: PLC0415

    where = f" (shard {shard} of the {in_file} in the file)" if shard else ""
    kept = sum(1 for p in planned if p.kept is not None)
    resumed = f", {kept} kept from an earlier run (--resume)" if kept else ""
    console.print(
        f"oi batch: {len(planned)} task(s){where}{resumed}, {concurrency} at a time, "
        f"results in {out_dir}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not planned:
        return
    first = planned[0].settings
    console.print(
        "oi batch: auto-run is on: every block runs without asking, each in a throwaway "
        f"sandbox (network {first.network}, memory {format_size(first.memory)}, "
        f"{first.timeout:g} s per block; tasks may set their own limits, capped by policy); "
        f"budget {format_clock(budget_s)} per task unless a task sets one",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _drive_batch(events: Generator[BatchEvent, None, BatchReport], display: Any) -> BatchReport:
    """Consume the runner, rendering events. Ctrl-C while rendering is thrown into the runner
    (which stops every task and returns the partial report); a second one is ignored."""
    pending_interrupt = False
    interrupted = False
    while True:
        try:
            try:
                event = events.throw(KeyboardInterrupt()) if pending_interrupt else next(events)
            except StopIteration as stop:
                if stop.value is None:  # the runner died of a Ctrl-C it could not catch
                    raise typer.Exit(EXIT_INTERRUPTED) from None
                report: BatchReport = stop.value
                return report
            pending_interrupt = False
            display.handle(event)
        except KeyboardInterrupt:
            pending_interrupt = not interrupted  # the first one goes to the runner, once
            interrupted = True


class BatchDisplay:
    """Progress on stderr: a live status line on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, total: int, concurrency: int) -> None:
        self.console = console
        self.state = ProgressState(total, concurrency, time.monotonic())
        self.tty = console.is_terminal
        self._sanitizer = TerminalSanitizer(keep_color=False)
        self._live: Live | None = None

    def start(self) -> None:
        if self.tty and self.state.total:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __rich__(self) -> Group:
        now = time.monotonic()
        lines = [Text("oi batch: " + self.state.line(now), style="bold")]
        for task_id, started in list(self.state.running.items())[:8]:
            lines.append(Text(f"  running {task_id} ({format_clock(now - started)})", "dim"))
        return Group(*lines)

    def handle(self, event: BatchEvent) -> None:
        now = time.monotonic()
        if isinstance(event, TaskStarted):
            self.state.start(event.task_id, now)
            if not self.tty:
                self._print(Text(f"oi batch: start {event.task_id}"))
        elif isinstance(event, TaskFinished):
            result = event.result
            self.state.finish(result)
            mark, style = _MARKS[result.outcome]
            line = Text.assemble(
                (mark, f"bold {style}"),
                f" {result.task_id}: {self._clean(result.reason)}",
                (" (kept from the earlier run)" if result.resumed else "", "dim"),
                (f" · {result.duration_s:.1f} s" if not result.resumed else "", "dim"),
            )
            if not self.tty:
                line.append(f"  [{self.state.line(now)}]")
            self._print(line)
        elif isinstance(event, BatchNotice):
            self._print(Text(f"oi: {self._clean(event.message)}", style="yellow"))

    def _clean(self, text: str) -> str:
        return self._sanitizer.clean(text).replace("\n", " ")

    def _print(self, text: Text) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)


def _write_reports(
    report: BatchReport,
    *,
    out_dir: Path,
    junit: Path | None,
    json_file: Path | None,
    tasks_file: Path,
    shard: str | None,
    concurrency: int,
) -> None:
    from orchestrator import batch  # noqa: PLC0415

    started = datetime.fromtimestamp(report.started_at, UTC).isoformat(timespec="seconds")
    data = batch.summary(
        report.results,
        tasks_file=str(tasks_file),
        shard=shard,
        concurrency=concurrency,
        started_at=started,
        duration_s=report.duration_s,
        interrupted=report.interrupted,
        out_dir=str(out_dir),
    )
    blob = json.dumps(data, indent=2).encode() + b"\n"
    batch.write_file_atomic(out_dir / "summary.json", blob)
    if json_file is not None:
        batch.write_file_atomic(json_file, blob)
    if junit is not None:
        suite = tasks_file.stem + (f" shard {shard}" if shard else "")
        properties = {"tasks_file": str(tasks_file), "host": socket.gethostname()}
        if shard:
            properties["shard"] = shard
        xml = batch.junit_xml(
            report.results,
            suite=suite,
            timestamp=started,
            duration_s=report.duration_s,
            properties=properties,
        )
        batch.write_file_atomic(junit, xml)


def _print_batch_summary(
    report: BatchReport, *, out_dir: Path, junit: Path | None, json_file: Path | None
) -> None:
    from orchestrator.batch import count_outcomes  # noqa: PLC0415

    counts = count_outcomes(report.results)
    sanitizer = TerminalSanitizer(keep_color=False)
    state = " (interrupted: partial report)" if report.interrupted else ""
    typer.echo(
        f"oi batch: {counts['total']} task(s): {counts['passed']} passed, {counts['failed']} "
        f"failed, {counts['error']} error(s), {counts['skipped']} skipped in "
        f"{format_clock(report.duration_s)}{state}"
    )
    for result in report.results:
        if result.outcome != "passed":
            mark = _MARKS[result.outcome][0]
            reason = sanitizer.clean(result.reason).replace("\n", " ")
            typer.echo(f"  {mark} {result.task_id}: {reason}")
    written = [f"{out_dir}/<task id>/ (workdir, session.jsonl, log.txt, result.json)"]
    written += [f"junit {junit}"] if junit else []
    written += [f"json {json_file}"] if json_file else []
    typer.echo("oi batch: wrote " + "; ".join(written))


# --- oi replay ------------------------------------------------------------------------------------


def replay_command(
    source: Annotated[str, typer.Argument(help="A session id (or prefix), or a .jsonl record.")],
    workdir_from: Annotated[
        Path | None,
        typer.Option("--workdir-from", help="Copy this folder as the starting workdir."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Replay in this new folder and keep it [default: temp]."),
    ] = None,
    ignore_output: Annotated[
        bool, typer.Option("--ignore-output", help="Compare exit codes only, not the output.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    memory: MemoryOpt = None,
    timeout: TimeoutOpt = None,
    network: NetworkOpt = None,
    allow_host: AllowHostOpt = None,
    isolation: IsolationOpt = None,
    env: EnvOpt = None,
    no_pool: NoPoolOpt = False,
) -> None:
    """Re-run a recorded session's approved blocks, in order, in fresh sandboxes, without the
    model; report per block whether exit code and output match the record (with a diff).

    Limits come from the record (flags override them); network, isolation and passed-in
    variables are yours to choose, never the record's. Exit codes: 0 every block matched,
    1 a mismatch (or the engine is unreachable), 2 bad record or usage, 3 interrupted.
    """
    from orchestrator import replay  # noqa: PLC0415
    from orchestrator.batch import adopted_owner, copy_tree, remove_tree  # noqa: PLC0415
    from orchestrator.cli import _docker_client, _errors, err_console  # noqa: PLC0415
    from orchestrator.sandbox.runner import Sandbox, new_session_id  # noqa: PLC0415
    from orchestrator.settings import load_settings  # noqa: PLC0415

    temp_root: Path | None = None
    with _errors():
        path, records = replay.load_records(source, load_settings().sessions_dir)
        blocks = replay.recorded_blocks(records, str(path))
        info = replay.session_info(records)
        if out is not None:
            workdir = out.expanduser().absolute()
            _claim_empty_folder(workdir)
        else:
            temp_root = Path(tempfile.mkdtemp(prefix="oi-replay-"))
            workdir = temp_root / "workdir"
        try:
            if workdir_from is not None:
                copy_tree(workdir_from, workdir, owner=adopted_owner(workdir_from))
            else:
                workdir.mkdir(mode=0o755)
                owner = adopted_owner(workdir.parent) if out is not None else None
                if owner is not None:
                    os.chown(workdir, *owner)
            flags: dict[str, Any] = {
                **replay.recorded_limits(records),
                "memory": memory,
                "timeout": timeout,
                "network": network or ("allowlist" if allow_host else None),
                "allow_hosts": list(allow_host) if allow_host else None,
                "isolation": isolation,
                "env": list(env) if env else None,
                "pool": False if no_pool else None,
                "workdir": workdir,
            }
            try:
                settings = load_settings(**flags)
            except PolicyError as exc:
                raise PolicyError(
                    f"{exc} (limits not given as flags come from the session record; "
                    "pass lower ones, e.g. --memory, --timeout)"
                ) from None
            sandbox = Sandbox.from_settings(
                settings, session_id=new_session_id() + "-replay", client=_docker_client()
            )
            if not as_json:
                _announce_replay(err_console, path, info, blocks, workdir, settings, out)
                if sandbox.identity.warning:
                    err_console.print(
                        f"oi: {sandbox.identity.warning}", style="yellow", soft_wrap=True
                    )
            comparisons: list[BlockComparison] = []
            interrupted = False
            try:
                for comparison in replay.replay_blocks(
                    blocks, sandbox, compare_output=not ignore_output
                ):
                    comparisons.append(comparison)
                    if not as_json:
                        _show_comparison(comparison)
            except KeyboardInterrupt:
                interrupted = True
                err_console.print("oi: interrupted", style="yellow")
            finally:
                sandbox.close()
        finally:
            if temp_root is not None:
                remove_tree(temp_root)
        totals = replay.summarize(comparisons)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "source": str(path),
                        "session_id": info.get("session_id"),
                        "workdir": str(workdir) if out is not None else None,
                        "blocks": [c.to_dict() for c in comparisons],
                        "matched": totals.matched,
                        "mismatched": totals.mismatched,
                        "not_compared": totals.not_compared,
                        "interrupted": interrupted,
                        "ok": totals.ok and not interrupted,
                    },
                    indent=2,
                )
            )
        else:
            _print_replay_summary(totals, len(blocks), interrupted, workdir if out else None)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_OK if totals.ok else EXIT_FAILED)


def _claim_empty_folder(path: Path) -> None:
    """``--out`` must be new or empty: replay never mixes its files with others'."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"--out {path} exists and is not a folder; choose a new folder")
    if path.is_dir():
        if any(path.iterdir()):
            raise ConfigError(f"--out {path} is not empty; remove it or choose a new folder")
        path.rmdir()
    path.parent.mkdir(parents=True, exist_ok=True)


def _announce_replay(
    console: Console,
    path: Path,
    info: Any,
    blocks: list[Any],
    workdir: Path,
    settings: Any,
    out: Path | None,
) -> None:
    sanitizer = TerminalSanitizer(keep_color=False)
    where = str(workdir) if out else "a temporary folder (removed after; --out keeps it)"
    console.print(
        sanitizer.clean(  # the record may come from anyone: no terminal escapes from it
            f"oi replay: {len(blocks)} block(s) of session {info.get('session_id', path.stem)} "
            f"(model {info.get('model', '?')}) from {path}, without the model, in {where}"
        ),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    note = info.get("note")
    if isinstance(note, str) and note:
        console.print(
            f"oi replay: note: {sanitizer.clean(note)}", markup=False, style="cyan", soft_wrap=True
        )
    recorded_network = (info.get("settings") or {}).get("network")
    if recorded_network and recorded_network != settings.network:
        console.print(
            f"oi replay: the session ran with network {recorded_network}; replaying with "
            f"{settings.network} (pass --network {recorded_network} to match)",
            markup=False,
            style="yellow",
            soft_wrap=True,
        )


def _show_comparison(comparison: BlockComparison) -> None:
    block = comparison.block
    tty = sys.stdout.isatty()
    sanitizer = TerminalSanitizer(keep_color=False)
    head = f"block {block.number} (#{block.index}, {block.language})"
    if comparison.status == "not_compared":
        typer.echo(f"{head}: not compared: {block.note}")
        return
    replayed = comparison.replayed or {}
    took = f"{float(replayed.get('duration_s', 0.0)):.2f} s"
    if comparison.status == "match":
        typer.echo(f"{head}: match · exit {replayed.get('exit_code')} · {took}")
        return
    typer.echo(f"{head}: MISMATCH: {'; '.join(comparison.differences)} · {took}")
    diff = sanitizer.clean(comparison.diff) if tty else comparison.diff
    for line in diff.splitlines():
        typer.echo(f"    {line}")


def _print_replay_summary(totals: Any, total: int, interrupted: bool, kept: Path | None) -> None:
    state = " (interrupted)" if interrupted else ""
    typer.echo(
        f"oi replay: {totals.matched} of {total} block(s) match, {totals.mismatched} "
        f"mismatch(es), {totals.not_compared} not compared{state}"
    )
    if kept is not None:
        typer.echo(f"oi replay: the files are in {kept}")
