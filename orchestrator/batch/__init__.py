"""Batch mode: many tasks in plain words, unattended, each in its own copy of a workdir.

``tasks`` (the tasks file, sharding), ``report`` (outcomes, JUnit/JSON, progress), ``plan``
(settings and templates checked before anything runs, ``--resume``) and ``runner`` (worker
threads, one session each). Host-side file handling is ``orchestrator.fsafe``'s.
"""

from orchestrator.batch.plan import PlannedTask, plan_tasks, prepare_out_dir, read_result
from orchestrator.batch.report import (
    KEEP_ON_RESUME,
    OUTCOMES,
    CheckOutcome,
    ProgressState,
    TaskResult,
    count_outcomes,
    eta_seconds,
    format_clock,
    judge,
    junit_xml,
    summary,
    xml_text,
)
from orchestrator.batch.runner import (
    BatchEvent,
    BatchNotice,
    BatchReport,
    BatchRunner,
    TaskFinished,
    TaskLog,
    TaskStarted,
)
from orchestrator.batch.tasks import (
    DEFAULT_BUDGET_S,
    SETTING_KEYS,
    TASK_KEYS,
    TaskSpec,
    is_jsonl,
    load_tasks_file,
    parse_duration,
    parse_shard,
    parse_tasks,
    select_shard,
)

__all__ = [
    "DEFAULT_BUDGET_S",
    "KEEP_ON_RESUME",
    "OUTCOMES",
    "SETTING_KEYS",
    "TASK_KEYS",
    "BatchEvent",
    "BatchNotice",
    "BatchReport",
    "BatchRunner",
    "CheckOutcome",
    "PlannedTask",
    "ProgressState",
    "TaskFinished",
    "TaskLog",
    "TaskResult",
    "TaskSpec",
    "TaskStarted",
    "count_outcomes",
    "eta_seconds",
    "format_clock",
    "is_jsonl",
    "judge",
    "junit_xml",
    "load_tasks_file",
    "parse_duration",
    "parse_shard",
    "parse_tasks",
    "plan_tasks",
    "prepare_out_dir",
    "read_result",
    "select_shard",
    "summary",
    "xml_text",
]
