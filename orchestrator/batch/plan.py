"""Planning a batch (I/O: reads settings, the templates, the out folder): every task's settings
and template checked before anything runs, and what ``--resume`` keeps."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.batch.report import KEEP_ON_RESUME, TaskResult
from orchestrator.batch.tasks import TaskSpec
from orchestrator.errors import ConfigError, PolicyError
from orchestrator.fsafe import O_READ, adopted_owner, check_tree
from orchestrator.loading import Layer, Loaded, Source, load
from orchestrator.policy import Policy

MAX_RESULT_BYTES = 1 << 20


@dataclass
class PlannedTask:
    """A task ready to run: its settings (validated) and, with --resume, its kept result."""

    spec: TaskSpec
    loaded: Loaded
    budget_s: float
    owner: tuple[int, int] | None = None
    kept: TaskResult | None = None

    @property
    def settings(self) -> Any:
        return self.loaded.settings


def task_layer(spec: TaskSpec, source: str, *, trusted: bool) -> Layer:
    """A task's settings as a project-level layer (above the command line: it may narrow it)."""
    where = f"{source}:{spec.line} (task {spec.id!r})"
    return Layer(Source("project", where), dict(spec.settings), trusted=trusted, file=source)


def task_settings(
    spec: TaskSpec,
    flags: Mapping[str, Any],
    workdir: Path,
    budget_s: float,
    source: str,
    *,
    trusted: bool = False,
    policy: Policy | None = None,
) -> Loaded:
    """The task's settings: its keys over the batch's (they may only narrow them unless the
    tasks file is trusted), through ``loading.load`` (validation, policy caps), with auto-run
    on, the task's own workdir copy, and each model request bounded by the task's budget."""
    values = {k: v for k, v in flags.items() if v is not None}
    try:
        layer = task_layer(spec, source, trusted=trusted)
        loaded = load(values, untrusted_top=[layer], policy=policy)
    except PolicyError as exc:
        raise PolicyError(f"{source}:{spec.line} (task {spec.id!r}): {exc}") from None
    timeout = min(loaded.settings.request_timeout, budget_s)
    return loaded.replace(workdir=workdir, auto_run=True, request_timeout=timeout)


def check_template(spec: TaskSpec, base_dir: Path, source: str, *, trusted: bool) -> None:
    """A task's template must be a real folder without FIFOs, sockets or devices, and (for an
    untrusted tasks file) inside the tasks file's own folder."""
    assert spec.workdir is not None
    where = f"{source}:{spec.line} (task {spec.id!r})"
    if not trusted:
        root = base_dir.resolve()
        target = spec.workdir.resolve()
        if target != root and root not in target.parents:
            raise ConfigError(
                f"{where}: workdir {spec.workdir} is outside the tasks file's folder {root}; a "
                "tasks file may only name folders inside its own folder (if you wrote it, "
                f"trust it with 'oi trust {source}')"
            )
    try:
        check_tree(spec.workdir)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def plan_tasks(
    specs: Sequence[TaskSpec],
    *,
    flags: Mapping[str, Any],
    out_dir: Path,
    default_budget_s: float,
    resume: bool,
    source: str,
    owner_reference: Path,
    trusted: bool = False,
    policy: Policy | None = None,
) -> list[PlannedTask]:
    """Validate every task's settings and template before anything runs; with ``resume``,
    keep the stored results of tasks that passed or failed and have not changed since."""
    planned: list[PlannedTask] = []
    base_dir = Path(source).absolute().parent
    for spec in specs:
        budget = spec.budget or default_budget_s
        if budget > default_budget_s and not trusted:
            raise ConfigError(
                f"{source}: task {spec.id!r}: budget {budget:g} s is more than --budget "
                f"{default_budget_s:g} s allows: a tasks file may only narrow what you allow; "
                f"pass a larger --budget, or trust the file with 'oi trust {source}'"
            )
        workdir = out_dir / spec.id / "workdir"
        loaded = task_settings(spec, flags, workdir, budget, source, trusted=trusted, policy=policy)
        if spec.workdir is not None:
            check_template(spec, base_dir, source, trusted=trusted)
        owner = adopted_owner(spec.workdir or owner_reference)
        kept = None
        if resume:
            stored = read_result(out_dir / spec.id)
            if (
                stored is not None
                and stored.outcome in KEEP_ON_RESUME
                and stored.digest == spec.digest()
            ):
                kept = TaskResult(**{**stored.to_dict(), "resumed": True})
        planned.append(PlannedTask(spec, loaded, budget, owner, kept))
    return planned


def prepare_out_dir(out_dir: Path, *, resume: bool) -> None:
    """Create ``--out`` (0700: it holds block output); refuse one that already holds results
    unless resuming."""
    try:
        info = os.lstat(out_dir)
    except FileNotFoundError:
        try:
            out_dir.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create --out {out_dir}: {exc.strerror}") from None
        return
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"--out {out_dir} exists and is not a folder; choose another path")
    if not resume and any(out_dir.iterdir()):
        raise ConfigError(
            f"--out {out_dir} already holds files; pass --resume to continue that batch, "
            "or choose an empty or new folder"
        )


def read_result(task_dir: Path) -> TaskResult | None:
    """The stored result of a task, or None when there is none that can be trusted: a
    symlink, FIFO or other non-regular file is never followed or opened for reading."""
    try:
        dir_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open("result.json", O_READ, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RESULT_BYTES:
            return None
        try:
            return TaskResult.from_dict(json.loads(fh.read()))
        except (ValueError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class BatchPlan:
    """Everything ``oi batch`` decided before it runs anything."""

    planned: list[PlannedTask]
    in_file: int  # tasks in the file (before sharding)
    shard: str | None  # "I/N"
    out_dir: Path
    budget_s: float
    trusted: bool


def plan_batch(
    tasks_file: Path,
    flags: Mapping[str, Any],
    *,
    out: Path,
    shard: str | None,
    resume: bool,
    budget: str,
) -> BatchPlan:
    """Read the tasks file, pick the shard, check every task and the out folder."""
    from orchestrator.batch.tasks import (  # noqa: PLC0415
        load_tasks_file,
        parse_duration,
        parse_shard,
        select_shard,
    )
    from orchestrator.policy import load_policy  # noqa: PLC0415
    from orchestrator.trust import TrustStore  # noqa: PLC0415

    try:
        budget_s = parse_duration(budget)
    except ValueError as exc:
        raise ConfigError(f"--budget: {exc}") from None
    shard_pair = parse_shard(shard) if shard else None
    specs, content = load_tasks_file(tasks_file)
    in_file = len(specs)
    if shard_pair:
        specs = select_shard(specs, *shard_pair)
    trusted = TrustStore.default().is_trusted(tasks_file, content)
    out_dir = out.expanduser().absolute()
    planned = plan_tasks(
        specs,
        flags=flags,
        out_dir=out_dir,
        default_budget_s=budget_s,
        resume=resume,
        source=str(tasks_file),
        owner_reference=tasks_file,
        trusted=trusted,
        policy=load_policy(),
    )
    prepare_out_dir(out_dir, resume=resume)
    shard_text = f"{shard_pair[0]}/{shard_pair[1]}" if shard_pair else None
    return BatchPlan(planned, in_file, shard_text, out_dir, budget_s, trusted)
