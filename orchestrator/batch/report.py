"""How a batch's tasks ended (pure): the outcome of a task (``judge``), the JUnit and JSON
reports, and the progress line with its ETA.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from orchestrator.sandbox.output import TerminalSanitizer

Outcome = Literal["passed", "failed", "error", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "error", "skipped")
KEEP_ON_RESUME: tuple[Outcome, ...] = ("passed", "failed")
"""Outcomes ``--resume`` keeps; errors (infrastructure) and skipped tasks run again."""

StopKind = Literal["budget", "interrupt"]


@dataclass(frozen=True)
class CheckOutcome:
    exit_code: int
    timed_out: bool
    oom_killed: bool
    timeout_s: float


@dataclass(frozen=True)
class TaskResult:
    """How one task ended. Stored as ``result.json`` and in the reports."""

    task_id: str
    outcome: Outcome
    reason: str
    duration_s: float = 0.0
    session_status: str | None = None
    check_exit_code: int | None = None
    blocks: int = 0
    output_tail: str = ""
    session_id: str = ""
    digest: str = ""
    started_at: float = 0.0
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """Rebuild from ``to_dict``; raises ``ValueError`` on anything malformed."""
        if data.get("outcome") not in OUTCOMES or not isinstance(data.get("task_id"), str):
            raise ValueError("not a task result")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def judge(
    *,
    session_status: str | None,
    session_reason: str,
    check_command: str | None,
    check: CheckOutcome | None,
    stopped: StopKind | None,
    budget_s: float,
) -> tuple[Outcome, str]:
    """Whether a task passed: the model finished and the check (if any) exited 0."""
    if stopped == "interrupt":
        return "skipped", "interrupted (Ctrl-C) before it finished"
    if stopped == "budget":
        return "failed", f"over its budget of {budget_s:g} s: stopped"
    if session_status == "error":  # the engine, the model server or the disk: not the task's
        return "error", session_reason or "an infrastructure error ended the session"
    if session_status != "finished":
        why = f" ({session_reason})" if session_reason else ""
        return "failed", f"the model did not finish: {session_status}{why}"
    if check_command is None:
        return "passed", "the model finished (no check)"
    if check is None:
        return "error", "the check did not run"
    if check.timed_out:
        return "failed", f"check timed out after {check.timeout_s:g} s"
    if check.oom_killed:
        return "failed", "check killed: memory limit"
    if check.exit_code != 0:
        return "failed", f"check exited {check.exit_code}"
    return "passed", "check passed"


def count_outcomes(results: Iterable[TaskResult]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    total = 0
    for result in results:
        counts[result.outcome] += 1
        total += 1
    return {**counts, "total": total}


# --- reports (pure) -----------------------------------------------------------------------------

TAIL_CHARS = 4000
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PLAIN = TerminalSanitizer(keep_color=False)


def xml_text(text: str) -> str:
    """Text that is valid in XML 1.0: terminal escapes dropped, other forbidden characters
    shown as ``\\xNN`` (sandbox output may contain anything)."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group(0)):02x}", _PLAIN.clean(text))


def junit_xml(
    results: Sequence[TaskResult],
    *,
    suite: str,
    timestamp: str,
    duration_s: float,
    properties: Mapping[str, str] | None = None,
) -> bytes:
    """A JUnit XML report: one ``testcase`` per task, with the failure reason and the tail
    of its output (``failure``/``error``/``skipped`` as JUnit readers expect)."""
    counts = count_outcomes(results)
    totals = {
        "tests": str(counts["total"]),
        "failures": str(counts["failed"]),
        "errors": str(counts["error"]),
        "skipped": str(counts["skipped"]),
        "time": f"{duration_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": "oi batch", **totals})
    suite_el = ET.SubElement(
        root, "testsuite", {"name": xml_text(suite), **totals, "timestamp": timestamp}
    )
    if properties:
        props = ET.SubElement(suite_el, "properties")
        for name, value in properties.items():
            ET.SubElement(props, "property", {"name": xml_text(name), "value": xml_text(value)})
    classname = "oi.batch." + re.sub(r"[^A-Za-z0-9_.-]", "_", suite)
    for result in results:
        case = ET.SubElement(
            suite_el,
            "testcase",
            {"name": result.task_id, "classname": classname, "time": f"{result.duration_s:.3f}"},
        )
        reason = xml_text(result.reason)
        tail = xml_text(result.output_tail)
        if result.outcome == "failed":
            ET.SubElement(case, "failure", {"message": reason, "type": "failed"}).text = tail
        elif result.outcome == "error":
            ET.SubElement(case, "error", {"message": reason, "type": "error"}).text = tail
        elif result.outcome == "skipped":
            ET.SubElement(case, "skipped", {"message": reason})
        if tail and result.outcome == "passed":  # otherwise the tail is in failure/error
            ET.SubElement(case, "system-out").text = tail
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def summary(
    results: Sequence[TaskResult],
    *,
    tasks_file: str,
    shard: str | None,
    concurrency: int,
    started_at: str,
    duration_s: float,
    interrupted: bool,
    out_dir: str,
) -> dict[str, Any]:
    """The ``--json`` summary."""
    return {
        "tasks_file": tasks_file,
        "shard": shard,
        "concurrency": concurrency,
        "started_at": started_at,
        "duration_s": round(duration_s, 3),
        "interrupted": interrupted,
        "out_dir": out_dir,
        "counts": count_outcomes(results),
        "passed": bool(results) and all(r.outcome == "passed" for r in results),
        "tasks": [r.to_dict() for r in results],
    }


# --- progress (pure) ----------------------------------------------------------------------------


def format_clock(seconds: float) -> str:
    """ "0:07", "12:30", "1:02:03"."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(
    *, queued: int, running_elapsed: Sequence[float], durations: Sequence[float], concurrency: int
) -> float | None:
    """Seconds until the batch is done, from the mean time of the tasks finished so far.
    None until one task has finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = queued * mean + sum(max(mean - elapsed, 0.0) for elapsed in running_elapsed)
    return work / max(1, concurrency)


@dataclass
class ProgressState:
    """What the progress display shows; ``line(now)`` is pure."""

    total: int
    concurrency: int
    started: float
    done: int = 0
    failed: int = 0
    running: dict[str, float] = field(default_factory=dict)  # task id -> start time
    durations: list[float] = field(default_factory=list)

    def start(self, task_id: str, now: float) -> None:
        self.running[task_id] = now

    def finish(self, result: TaskResult) -> None:
        self.running.pop(result.task_id, None)
        self.done += 1
        if result.outcome in ("failed", "error"):
            self.failed += 1
        if not result.resumed and result.outcome != "skipped":
            self.durations.append(result.duration_s)

    def line(self, now: float) -> str:
        queued = self.total - self.done - len(self.running)
        eta = eta_seconds(
            queued=queued,
            running_elapsed=[now - t for t in self.running.values()],
            durations=self.durations,
            concurrency=self.concurrency,
        )
        return (
            f"{self.done}/{self.total} done · {self.failed} failed · "
            f"{len(self.running)} running · {format_clock(now - self.started)} elapsed · "
            f"ETA {format_clock(eta) if eta is not None else '--'}"
        )
