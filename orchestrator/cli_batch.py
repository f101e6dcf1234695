"""`oi batch` and `oi replay` commands (registered on the main Typer app by cli.py).

Thin adapters: parse flags -> plan (``batch.plan``) or load the record (``replay.py``) -> run
-> render their events -> write reports -> exit code.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from orchestrator.cli_common import docker_client, err_console, errors, load_flags, out
from orchestrator.cli_options import (
    LIMIT_FLAGS,
    MODEL_FLAGS,
    SettingFlags,
    with_setting_flags,
)
from orchestrator.errors import ConfigError
from orchestrator.safe_text import clean_line

if TYPE_CHECKING:
    from orchestrator.batch import BatchEvent, BatchReport
    from orchestrator.batch.plan import BatchPlan

# Exit codes of `oi batch` and `oi replay` (bad usage or an unreachable engine: see cli.py).
EXIT_OK = 0
EXIT_FAILED = 1  # a task failed or errored / a replayed block did not match
EXIT_INTERRUPTED = 3  # Ctrl-C: the partial report was written

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
BATCH_FLAGS = (
    *MODEL_FLAGS, "max_model_len", *LIMIT_FLAGS, "network", "allow_host", "isolation", "env",
    "no_pool", "instructions", "profile", "toolbox",
)  # fmt: skip
REPLAY_FLAGS = (
    "memory", "timeout", "network", "allow_host", "isolation", "env", "no_pool", "toolbox",
)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the batch and replay commands to ``app``."""
    app.command("batch")(batch_command)
    app.command("replay")(replay_command)


# --- oi batch -------------------------------------------------------------------------------------


@with_setting_flags(*BATCH_FLAGS)
def batch_command(
    tasks_file: Annotated[Path, typer.Argument(help="Tasks file: YAML, or JSONL (.jsonl).")],
    concurrency: ConcurrencyOpt = 1,
    out: OutOpt = Path("oi-batch-out"),
    junit: JunitOpt = None,
    json_file: JsonFileOpt = None,
    shard: ShardOpt = None,
    resume: ResumeOpt = False,
    budget: BudgetOpt = "15m",
    *,
    flags: SettingFlags,
) -> None:
    """Run a file of tasks unattended (auto-run: every block is sandboxed); JUnit/JSON reports.

    A task passes when the model finished and its check (a shell command run in a sandbox on
    the task's workdir) exits 0. A task's settings may only narrow the command line's (trust
    the file with 'oi trust FILE' to lift that).

    Examples:
      oi batch tasks.yaml --concurrency 4 --junit report.xml
      oi batch tasks.yaml --shard 2/4 --resume --out oi-batch-out

    Exit codes: 0 every task passed, 1 a task failed or errored (or the engine is unreachable),
    2 bad tasks file or usage, 3 interrupted (Ctrl-C; the partial report is written).
    """
    from orchestrator.batch.plan import plan_batch  # noqa: PLC0415

    with errors():
        if concurrency < 1:
            raise ConfigError(f"--concurrency {concurrency}: run at least 1 task at a time")
        plan = plan_batch(
            tasks_file, flags.values, out=out, shard=shard, resume=resume, budget=budget
        )
        if plan.planned:
            docker_client().close()  # fails fast when no engine answers; sweeps orphans
        _announce(err_console, plan, concurrency)
        report = _run_batch(plan, concurrency, str(tasks_file))
        _write_reports(
            report,
            plan,
            junit=junit,
            json_file=json_file,
            tasks_file=tasks_file,
            concurrency=concurrency,
        )
        _print_batch_summary(report, out_dir=plan.out_dir, junit=junit, json_file=json_file)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    passed = all(result.outcome == "passed" for result in report.results)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def _run_batch(plan: BatchPlan, concurrency: int, tasks_file: str) -> BatchReport:
    from orchestrator.batch import BatchRunner  # noqa: PLC0415
    from orchestrator.sandbox.docker import connect  # noqa: PLC0415

    runner = BatchRunner(
        plan.planned,
        out_dir=plan.out_dir,
        concurrency=concurrency,
        docker_factory=connect,
        tasks_file=tasks_file,
    )
    display = BatchDisplay(err_console, len(plan.planned), concurrency)
    display.start()
    try:
        return _drive_batch(runner.run(), display)
    finally:
        display.stop()


def _announce(console: Console, plan: BatchPlan, concurrency: int) -> None:
    from orchestrator.batch import format_clock  # noqa: PLC0415
    from orchestrator.units import format_size  # noqa: PLC0415

    planned = plan.planned
    where = f" (shard {plan.shard} of the {plan.in_file} in the file)" if plan.shard else ""
    kept = sum(1 for p in planned if p.kept is not None)
    resumed = f", {kept} kept from an earlier run (--resume)" if kept else ""
    say = _say(console)
    say(
        f"oi batch: {len(planned)} task(s){where}{resumed}, {concurrency} at a time, "
        f"results in {plan.out_dir}"
    )
    if not planned:
        return
    first = planned[0].settings
    trust = (
        "the tasks file is trusted: its tasks may set anything you may"
        if plan.trusted
        else "a task may only narrow these"
    )
    budgets = sorted({p.budget_s for p in planned})
    budget = (
        f"budget {format_clock(budgets[0])} per task"
        if len(budgets) == 1
        else f"budgets of {format_clock(budgets[0])} to {format_clock(budgets[-1])} per task"
    )
    say(
        "oi batch: auto-run is on: every block runs without asking, each in a throwaway "
        f"sandbox (network {first.network}, memory {format_size(first.memory)}, "
        f"{first.timeout:g} s per block; {trust}, capped by policy); {budget}"
    )


OUTPUT_LINES = 6
"""The last lines of a failed task's output (its check's) shown under its line."""


def _say(console: Console) -> Callable[[str], None]:
    def say(text: str) -> None:
        console.print(Text(clean_line(text)), highlight=False, soft_wrap=True)

    return say


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
        from orchestrator.batch import ProgressState  # noqa: PLC0415

        self.console = console
        self.state = ProgressState(total, concurrency, time.monotonic())
        self.tty = console.is_terminal
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
        from orchestrator.batch import format_clock  # noqa: PLC0415

        now = time.monotonic()
        lines = [Text("oi batch: " + self.state.line(now), style="bold")]
        for task_id, started in list(self.state.running.items())[:8]:
            lines.append(
                Text(f"  running {clean_line(task_id)} ({format_clock(now - started)})", "dim")
            )
        return Group(*lines)

    def handle(self, event: BatchEvent) -> None:
        from orchestrator.batch import BatchNotice, TaskFinished, TaskStarted  # noqa: PLC0415

        now = time.monotonic()
        if isinstance(event, TaskStarted):
            self.state.start(event.task_id, now)
            if not self.tty:
                self._print(Text(f"oi batch: start {clean_line(event.task_id)}"))
        elif isinstance(event, TaskFinished):
            result = event.result
            self.state.finish(result)
            mark, style = _MARKS[result.outcome]
            line = Text.assemble(
                (mark, f"bold {style}"),
                f" {clean_line(result.task_id)}: {self._clean(result.reason)}",
                (" (kept from the earlier run)" if result.resumed else "", "dim"),
                (f" · {result.duration_s:.1f} s" if not result.resumed else "", "dim"),
            )
            if not self.tty:
                line.append(f"  [{self.state.line(now)}]")
            self._print(line)
            if result.outcome in ("failed", "error") and result.output_tail.strip():
                for tail in result.output_tail.rstrip().splitlines()[-OUTPUT_LINES:]:
                    self._print(Text(f"    {clean_line(tail)}", style="dim"))
        elif isinstance(event, BatchNotice):
            self._print(Text(f"oi: {self._clean(event.message)}", style="yellow"))

    def _clean(self, text: str) -> str:
        return clean_line(text)

    def _print(self, text: Text) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)


def _write_reports(
    report: BatchReport,
    plan: BatchPlan,
    *,
    junit: Path | None,
    json_file: Path | None,
    tasks_file: Path,
    concurrency: int,
) -> None:
    """summary.json in --out, and the --json/--junit copies: 0600 (they hold block output)."""
    from orchestrator import batch  # noqa: PLC0415
    from orchestrator.fsafe import write_atomic  # noqa: PLC0415

    started = datetime.fromtimestamp(report.started_at, UTC).isoformat(timespec="seconds")
    data = batch.summary(
        report.results,
        tasks_file=str(tasks_file),
        shard=plan.shard,
        concurrency=concurrency,
        started_at=started,
        duration_s=report.duration_s,
        interrupted=report.interrupted,
        out_dir=str(plan.out_dir),
    )
    blob = json.dumps(data, indent=2).encode() + b"\n"
    write_atomic(plan.out_dir / "summary.json", blob, 0o600)
    if json_file is not None:
        write_atomic(json_file, blob, 0o600)
    if junit is not None:
        suite = tasks_file.stem + (f" shard {plan.shard}" if plan.shard else "")
        properties = {"tasks_file": str(tasks_file), "host": socket.gethostname()}
        if plan.shard:
            properties["shard"] = plan.shard
        xml = batch.junit_xml(
            report.results,
            suite=suite,
            timestamp=started,
            duration_s=report.duration_s,
            properties=properties,
        )
        write_atomic(junit, xml, 0o600)


def _print_batch_summary(
    report: BatchReport, *, out_dir: Path, junit: Path | None, json_file: Path | None
) -> None:
    from orchestrator.batch import count_outcomes, format_clock  # noqa: PLC0415

    counts = count_outcomes(report.results)
    state = " (interrupted: partial report)" if report.interrupted else ""
    out(
        f"oi batch: {counts['total']} task(s): {counts['passed']} passed, {counts['failed']} "
        f"failed, {counts['error']} error(s), {counts['skipped']} skipped in "
        f"{format_clock(report.duration_s)}{state}"
    )
    for result in report.results:
        if result.outcome != "passed":
            mark = _MARKS[result.outcome][0]
            out(f"  {mark} {result.task_id}: {result.reason}")
    written = [f"{out_dir}/<task id>/ (workdir, session.jsonl, log.txt, result.json)"]
    written += [f"junit {junit}"] if junit else []
    written += [f"json {json_file}"] if json_file else []
    out("oi batch: wrote " + "; ".join(written))


# --- oi replay ------------------------------------------------------------------------------------


@with_setting_flags(*REPLAY_FLAGS)
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
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Run every block without showing and asking.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    *,
    flags: SettingFlags,
) -> None:
    """Re-run a recorded session's approved blocks, in order, in fresh sandboxes, without the
    model; report per block whether exit code and output match the record (with a diff).

    Each block is shown and asked about first (--yes: run them all). The record's limits
    apply when they are within yours (flags override them); network, isolation and passed-in
    variables are yours to choose, never the record's.

    Examples:
      oi replay 20261207T101500-ab12cd
      oi replay oi-batch-out/t1/session.jsonl --yes --workdir-from fixtures/sales

    Exit codes: 0 every block matched, 1 a mismatch or a block not run (or the engine is
    unreachable), 2 bad record or usage, 3 interrupted.
    """
    from orchestrator import replay  # noqa: PLC0415
    from orchestrator.cli_replay import Replayer  # noqa: PLC0415

    with errors():
        notes: list[str] = []
        path, records = replay.load_records(source, load_flags().settings.sessions_dir, notes)
        with Replayer(path, records, flags, out=out, workdir_from=workdir_from) as run:
            run.notes[:0] = notes
            run.announce(err_console)  # stderr: --json keeps stdout for the report
            comparisons, interrupted = run.blocks(
                compare_output=not ignore_output, ask=None if yes else run.asker(), show=not as_json
            )
        totals = replay.summarize(comparisons)
        if as_json:
            typer.echo(json.dumps(run.report(comparisons, totals, interrupted), indent=2))
        else:
            _print_replay_summary(totals, len(run.recorded), interrupted, run.kept)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_OK if totals.ok else EXIT_FAILED)


def _print_replay_summary(totals: Any, total: int, interrupted: bool, kept: Path | None) -> None:
    state = " (interrupted)" if interrupted else ""
    not_run = f", {totals.not_run} not run" if totals.not_run else ""
    out(
        f"oi replay: {totals.matched} of {total} block(s) match, {totals.mismatched} "
        f"mismatch(es), {totals.not_compared} not compared{not_run}{state}"
    )
    if kept is not None:
        out(f"oi replay: the files are in {kept}")
