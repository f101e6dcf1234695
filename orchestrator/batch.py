"""Batch mode: many tasks in plain words, unattended, each in its own copy of a workdir.

Pure parts (no I/O, tested by table): the tasks file (``parse_tasks``), sharding
(``parse_shard``, ``select_shard``), judging a task (``judge``), the reports (``junit_xml``,
``summary``) and the progress line (``ProgressState``). Host-side file handling that never
follows a symlink nor opens a FIFO or device (``copy_tree``, ``write_inline_files``,
``remove_tree``, ``read_result``, ``write_file_atomic``). The runner (``BatchRunner``) runs
tasks on worker threads and yields ``BatchEvent``s for the CLI to render; it never prints.

Layout of ``--out DIR``::

    DIR/summary.json              the JSON summary of the last run
    DIR/<task id>/workdir/        the task's copy of its workdir, mounted at /workspace
    DIR/<task id>/session.jsonl   the session record (``oi replay DIR/<task id>/session.jsonl``)
    DIR/<task id>/log.txt         a readable log: model text, code, output, the check
    DIR/<task id>/result.json     the task's result (what ``--resume`` reads)

Only ``workdir/`` is mounted into sandboxes, so whatever a block creates there (symlinks to
host files, FIFOs) never sits where oi writes or reads its own files.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import hashlib
import json
import math
import os
import queue
import re
import shutil
import stat
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from orchestrator.errors import ConfigError, OiError
from orchestrator.sandbox.output import TerminalSanitizer

if TYPE_CHECKING:
    import docker

    from orchestrator.events import Event
    from orchestrator.llm.client import ModelClient
    from orchestrator.sandbox.runner import ExecResult, Sandbox
    from orchestrator.settings import Settings

# --- the tasks file (pure) ----------------------------------------------------------------------

TASK_KEYS = ("id", "prompt", "workdir", "files", "check", "budget")
"""Keys that describe a task."""

SETTING_KEYS = (
    "memory",
    "cpus",
    "pids",
    "timeout",
    "max_output",
    "tmp_size",
    "max_file_size",
    "network",
    "allow_hosts",
    "isolation",
    "env",
    "model",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "tool_mode",
    "max_turns",
    "max_model_len",
)
"""Settings a task may override. They go through ``load_settings`` like flags, so validation
and the admin policy's caps apply. Not per task: the endpoint and key, the workdir, auto-run,
extra mounts and CA bundles (a tasks file must not choose host paths to expose)."""

_T = TypeVar("_T")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_BUDGET_S = 900.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a tasks file, validated."""

    id: str
    prompt: str
    line: int  # where the task starts in its file (1-based), for error messages
    workdir: Path | None = None  # a template folder, copied for each run of the task
    files: tuple[tuple[str, str], ...] = ()  # inline files: (relative path, text)
    check: str | None = None  # a shell command run in a sandbox on the workdir afterwards
    budget: float | None = None  # wall-clock seconds for the whole task
    settings: Mapping[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """A fingerprint of what the task asks, so ``--resume`` notices a changed task."""
        data = {
            "prompt": self.prompt,
            "workdir": str(self.workdir) if self.workdir else None,
            "files": [list(item) for item in self.files],
            "check": self.check,
            "budget": self.budget,
            "settings": dict(self.settings),
        }
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_duration(value: Any) -> float:
    """Seconds from 90, 90.5, "90s", "15m", "1h", "500ms". Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds such as 300 or 15m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "").lower()]
    else:
        raise ValueError(f"expected seconds such as 300 or 15m, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def parse_tasks(text: str, source: str, *, base_dir: Path, jsonl: bool = False) -> list[TaskSpec]:
    """Validate a tasks file. ``source`` names it in errors; relative workdirs are resolved
    against ``base_dir`` (the file's folder). Raises ``ConfigError`` naming file, line, task.

    YAML: a list of tasks, or a mapping with ``tasks:`` and optional ``defaults:`` (keys
    applied to every task unless it sets them). JSONL: one task object per line.
    """
    items = _jsonl_items(text, source) if jsonl else _yaml_items(text, source)
    if not items:
        raise ConfigError(f"{source}: no tasks found; add a list of tasks with id and prompt")
    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for line, data, defaults in items:
        task = _task_from(data, defaults, source=source, line=line, base_dir=base_dir)
        if task.id in seen:
            raise ConfigError(
                f"{source}:{line}: task id {task.id!r} is already used at line {seen[task.id]}; "
                "give every task its own id"
            )
        seen[task.id] = line
        tasks.append(task)
    return tasks


_Item = tuple[int, Any, Mapping[str, Any]]


def _jsonl_items(text: str, source: str) -> list[_Item]:
    items: list[_Item] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append((number, json.loads(line), {}))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "JSONL needs one task object per line"
            ) from None
    return items


def _yaml_items(text: str, source: str) -> list[_Item]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None
    finally:
        loader.dispose()
    if data is None or node is None:
        return []
    defaults: Mapping[str, Any] = {}
    tasks_node: Any = node
    if isinstance(data, dict):
        unknown = set(data) - {"tasks", "defaults"}
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
                "a tasks file has 'tasks:' (a list) and optionally 'defaults:'"
            )
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ConfigError(f"{source}: 'defaults' must be a mapping of task keys")
        for key in ("id", "prompt"):
            if key in defaults:
                raise ConfigError(f"{source}: 'defaults' cannot set {key!r}; set it per task")
        tasks_node = next(
            (value for key, value in node.value if getattr(key, "value", None) == "tasks"), None
        )
        data = data.get("tasks")
    if not isinstance(data, list) or not isinstance(tasks_node, yaml.SequenceNode):
        raise ConfigError(
            f"{source}: expected a list of tasks (or 'tasks:' holding one), each with id and prompt"
        )
    lines = [item.start_mark.line + 1 for item in tasks_node.value]
    return [(line, item, defaults) for line, item in zip(lines, data, strict=True)]


def _task_from(
    data: Any, defaults: Mapping[str, Any], *, source: str, line: int, base_dir: Path
) -> TaskSpec:
    where = f"{source}:{line}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a task must be a mapping with id and prompt, got {data!r}")
    merged = {**defaults, **data}
    raw_id = merged.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not _TASK_ID.match(raw_id):
        raise ConfigError(
            f"{where}: task id {raw_id!r} is missing or invalid; use letters, digits, '.', '_' "
            "and '-' (it names the task's folder under --out)"
        )
    where = f"{where} (task {raw_id!r})"
    unknown = [key for key in merged if key not in TASK_KEYS and key not in SETTING_KEYS]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, (*TASK_KEYS, *SETTING_KEYS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{where}: unknown key {key!r}; {hint}task keys: {', '.join(TASK_KEYS)}; "
            f"settings a task may set: {', '.join(SETTING_KEYS)}"
        )
    prompt = merged.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: 'prompt' must be the task in plain words (a non-empty text)")
    workdir = merged.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.strip()):
        raise ConfigError(f"{where}: 'workdir' must be a folder path (relative to the tasks file)")
    check = merged.get("check")
    if check is not None and (not isinstance(check, str) or not check.strip()):
        raise ConfigError(f"{where}: 'check' must be a shell command (text)")
    budget = None
    if merged.get("budget") is not None:
        try:
            budget = parse_duration(merged["budget"])
        except ValueError as exc:
            raise ConfigError(f"{where}: 'budget': {exc}") from None
    return TaskSpec(
        id=raw_id,
        prompt=prompt,
        line=line,
        workdir=(base_dir / Path(workdir).expanduser()) if workdir else None,
        files=_inline_files(merged.get("files"), where),
        check=check,
        budget=budget,
        settings={key: merged[key] for key in SETTING_KEYS if key in merged},
    )


def _inline_files(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'files' must map relative paths to their text")
    files: list[tuple[str, str]] = []
    for name, content in value.items():
        if not isinstance(name, str) or not isinstance(content, str):
            raise ConfigError(f"{where}: in 'files', {name!r} must be a path mapped to text")
        check_relative_path(name, where)
        files.append((name, content))
    return tuple(files)


def check_relative_path(name: str, where: str) -> None:
    """Refuse an inline file path that is absolute, empty, or climbs out with '..'."""
    parts = Path(name).parts
    if not name or "\0" in name or Path(name).is_absolute() or not parts or ".." in parts:
        raise ConfigError(
            f"{where}: file path {name!r} must be relative to the workdir, without '..'"
        )


# --- sharding (pure) ----------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based) -> ``(I, N)``. Raises ``ConfigError`` with the fix."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: use I/N, e.g. --shard 2/4 for the 2nd of 4 runners")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: I must be between 1 and N (N >= 1), e.g. 1/{count}")
    return index, count


def select_shard(items: Sequence[_T], index: int, count: int) -> list[_T]:
    """The items of shard ``index`` of ``count``: round-robin over the file's order, so every
    item is in exactly one shard and shard sizes differ by at most one."""
    return [item for position, item in enumerate(items) if position % count == index - 1]


# --- results (pure) -----------------------------------------------------------------------------

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


# --- host-side files: never follow a symlink, never open a FIFO or device -----------------------

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_RESULT_BYTES = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file or folder"


def _template_root(src: Path) -> os.stat_result:
    """lstat of a workdir template, which must be a real folder (not a link to one)."""
    try:
        root = os.lstat(src)
    except OSError as exc:
        raise ConfigError(f"workdir template {src}: {exc.strerror}; check the path") from None
    if not stat.S_ISDIR(root.st_mode):
        what = "a symlink" if stat.S_ISLNK(root.st_mode) else _kind(root.st_mode)
        raise ConfigError(
            f"workdir template {src} is {what}, not a folder; point 'workdir' at a real folder"
        )
    return root


def copy_tree(src: Path, dst: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Copy folder ``src`` to a new folder ``dst`` without following any symlink.

    Symlinks are copied as symlinks (their targets are not read); FIFOs, sockets and devices
    are refused with ``ConfigError`` (never opened). Modes (minus setuid/setgid/sticky) and
    modification times are kept; with ``owner`` every copy gets that uid:gid.
    """
    root = _template_root(src)
    os.mkdir(dst, 0o700)
    _copy_children(src, dst, owner)
    _finish_entry(dst, root, owner)


def check_tree(src: Path) -> None:
    """Refuse a template that holds FIFOs, sockets or devices before anything runs (lstat
    only). Raises ``ConfigError`` naming the first offending path."""
    _template_root(src)
    pending = [src]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    raise _special_file(Path(entry.path), mode)


def _special_file(path: Path, mode: int) -> ConfigError:
    return ConfigError(
        f"workdir template holds {_kind(mode)} at {path}; templates may hold only files, "
        "folders and symlinks: remove it"
    )


def _copy_children(src: Path, dst: Path, owner: tuple[int, int] | None) -> None:
    with os.scandir(src) as iterator:
        entries = sorted(iterator, key=lambda e: e.name)
    for entry in entries:
        source = Path(entry.path)
        target = dst / entry.name
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISDIR(info.st_mode):
            os.mkdir(target, 0o700)
            _copy_children(source, target, owner)
        elif stat.S_ISREG(info.st_mode):
            _copy_file(source, target, info)
        else:
            raise _special_file(source, info.st_mode)
        _finish_entry(target, info, owner)


def _copy_file(source: Path, target: Path, info: os.stat_result) -> None:
    fd_in = os.open(source, _O_READ)
    try:
        opened = os.fstat(fd_in)
        # Swapped for something else between the scan and the open: refuse, never read it.
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise ConfigError(f"{source} changed while it was being copied; try again")
        fd_out = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd_out, "wb") as out, os.fdopen(os.dup(fd_in), "rb") as src_file:
            shutil.copyfileobj(src_file, out, 1 << 20)
    finally:
        os.close(fd_in)


def _finish_entry(path: Path, info: os.stat_result, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o777)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def write_inline_files(
    workdir: Path, files: Iterable[tuple[str, str]], *, owner: tuple[int, int] | None = None
) -> None:
    """Write a task's inline files into ``workdir``. Folders are walked with ``O_NOFOLLOW``
    so a symlink from the template cannot redirect a write outside the workdir."""
    for name, content in files:
        check_relative_path(name, "files")
        *parents, leaf = Path(name).parts
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parents:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"inline file {name}: {part} in the workdir is not a folder "
                        f"({exc.strerror}); rename the file or fix the template"
                    ) from None
                os.close(fd)
                fd = child
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                out = os.open(leaf, flags | os.O_NONBLOCK, 0o644, dir_fd=fd)
            except OSError as exc:
                raise ConfigError(
                    f"inline file {name}: cannot write it ({exc.strerror}); "
                    "a symlink or special file of that name is in the template"
                ) from None
            with os.fdopen(out, "wb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ConfigError(f"inline file {name}: not a regular file in the template")
                fh.write(content.encode())
            if owner is not None:
                os.chown(leaf, *owner, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove what is at ``path`` without following symlinks, also folders a sandbox made
    unwritable. Raises ``ConfigError`` naming what could not be removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return

    def retry(function: Callable[..., Any], failed: str, _exc: Any) -> None:
        # A folder without write/search permission: open it up (never through a symlink:
        # rmtree only descends into real folders) and try once more.
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            if not os.path.islink(parent):
                os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
        try:
            function(failed)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"cannot remove {failed} ({exc.strerror}); remove {path} by hand"
            ) from None

    shutil.rmtree(path, onerror=retry)


def read_result(task_dir: Path) -> TaskResult | None:
    """The stored result of a task, or None when there is none that can be trusted: a
    symlink, FIFO or other non-regular file is never followed or opened for reading."""
    try:
        dir_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open("result.json", _O_READ, dir_fd=dir_fd)
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


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` through a new temporary file renamed over it: a symlink planted at
    ``path`` is replaced, never followed."""
    folder = path.parent
    temp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise ConfigError(f"cannot write {path}: {exc.strerror}; check the folder") from None


def adopted_owner(reference: Path) -> tuple[int, int] | None:
    """As root, the uid:gid of ``reference`` when that is not root, so a sandbox runs as that
    user (not uid 0) on its copy; otherwise None (the copy is already the user's)."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(reference)
    except OSError:
        return None
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


# --- the runner (I/O) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskStarted:
    task_id: str


@dataclass(frozen=True)
class TaskFinished:
    result: TaskResult


@dataclass(frozen=True)
class BatchNotice:
    message: str


BatchEvent = TaskStarted | TaskFinished | BatchNotice


@dataclass(frozen=True)
class BatchReport:
    results: list[TaskResult]  # in the tasks file's order
    interrupted: bool
    started_at: float
    duration_s: float


@dataclass
class PlannedTask:
    """A task ready to run: its settings (validated) and, with --resume, its kept result."""

    spec: TaskSpec
    settings: Settings
    budget_s: float
    owner: tuple[int, int] | None = None
    kept: TaskResult | None = None


class _Control:
    """Shared between a task's worker thread and the runner: stop requests and the sandbox."""

    def __init__(self, planned: PlannedTask, deadline: float) -> None:
        self.planned = planned
        self.deadline = deadline
        self.stopped: StopKind | None = None
        self.sandbox: Sandbox | None = None
        self.session_id: str | None = None

    def stop(self, kind: StopKind) -> None:
        if self.stopped is None:
            self.stopped = kind
        self.cancel()

    def cancel(self) -> None:
        sandbox = self.sandbox
        if sandbox is not None:
            with contextlib.suppress(Exception):
                sandbox.cancel()


class TaskLog:
    """The readable log of one task (``log.txt``), and the tail kept for the reports."""

    def __init__(self, path: Path, tail_chars: int = TAIL_CHARS) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(path, flags, 0o644), "w", encoding="utf-8")
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._tail_chars = tail_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, text: str) -> None:
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len - len(self._tail[0]) >= self._tail_chars:
            self._tail_len -= len(self._tail.popleft())

    def write_bytes(self, _stream: str, data: bytes) -> None:
        self.write(self._decoder.decode(data))

    def event(self, event: Event) -> None:
        from orchestrator.events import (  # noqa: PLC0415
            BlockOutput,
            BlockResult,
            CodeProposed,
            ModelReply,
            Notice,
            SessionEnded,
        )

        if isinstance(event, ModelReply):
            self.write(f"\n## model\n{event.text.rstrip()}\n")
        elif isinstance(event, CodeProposed):
            self.write(f"\n## block {event.index} ({event.language}) sha256 {event.sha256}\n")
            self.write(event.code.rstrip() + "\n## output\n")
        elif isinstance(event, BlockOutput):
            self.write(event.text)
        elif isinstance(event, BlockResult):
            self.write(f"\n## block {event.index}: {event.for_model.splitlines()[0]}\n")
        elif isinstance(event, Notice):
            self.write(f"\n## oi: {event.message}\n")
        elif isinstance(event, SessionEnded):
            self.write(f"\n## {event.status}: {event.reason}\n")

    def tail(self) -> str:
        text = "".join(self._tail)
        return text[-self._tail_chars :]

    def close(self) -> None:
        self._file.close()


DockerFactory = Callable[[], "docker.DockerClient"]
ModelFactory = Callable[["Settings"], "ModelClient"]
STOP_GRACE_S = 20.0  # how long Ctrl-C waits for running tasks to stop before forcing cleanup
_POLL_S = 0.2


class BatchRunner:
    """Runs planned tasks, ``concurrency`` at a time, each on its own worker thread with its
    own sandbox, model client and session record. ``run()`` yields ``BatchEvent``s and
    returns a ``BatchReport``; Ctrl-C (a ``KeyboardInterrupt`` raised in or thrown into it)
    stops every task, removes their containers and returns the partial report."""

    def __init__(
        self,
        tasks: Sequence[PlannedTask],
        *,
        out_dir: Path,
        concurrency: int,
        docker_factory: DockerFactory,
        model_factory: ModelFactory | None = None,
        tasks_file: str = "",
    ) -> None:
        self.tasks = list(tasks)
        self.out_dir = out_dir
        self.concurrency = max(1, concurrency)
        self._docker_factory = docker_factory
        self._model_factory = model_factory
        self._tasks_file = tasks_file
        self._done: queue.Queue[tuple[str, str, Any]] = queue.Queue()

    # --- the main loop (runs on the caller's thread) ----------------------------------------

    def run(self) -> Generator[BatchEvent, None, BatchReport]:
        started_at = time.time()
        clock = time.monotonic()
        results: dict[str, TaskResult] = {}
        pending: deque[PlannedTask] = deque()
        for planned in self.tasks:
            if planned.kept is not None:
                results[planned.spec.id] = planned.kept
            else:
                pending.append(planned)
        running: dict[str, _Control] = {}
        seen_notices: set[str] = set()
        interrupted = False
        try:
            for planned in self.tasks:
                if planned.kept is not None:
                    yield TaskFinished(planned.kept)
            while pending or running:
                while pending and len(running) < self.concurrency:
                    planned = pending.popleft()
                    control = _Control(planned, time.monotonic() + planned.budget_s)
                    running[planned.spec.id] = control
                    threading.Thread(
                        target=self._worker,
                        args=(control,),
                        name=f"oi-batch-{planned.spec.id}",
                        daemon=True,  # Ctrl-C must not wait on a model request forever
                    ).start()
                    yield TaskStarted(planned.spec.id)
                self._watch(running)
                try:
                    kind, task_id, payload = self._done.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if kind == "notice":
                    if payload not in seen_notices:
                        seen_notices.add(payload)
                        yield BatchNotice(payload)
                    continue
                running.pop(task_id, None)
                results[task_id] = payload
                yield TaskFinished(payload)
        except KeyboardInterrupt:
            interrupted = True
            for result in self._stop_all(running):
                results[result.task_id] = result
                yield TaskFinished(result)
        ordered: list[TaskResult] = []
        for planned in self.tasks:
            found = results.get(planned.spec.id)
            if found is None:
                found = TaskResult(
                    planned.spec.id,
                    "skipped",
                    "not started: the batch was interrupted (Ctrl-C)",
                    digest=planned.spec.digest(),
                )
            ordered.append(found)
        return BatchReport(ordered, interrupted, started_at, time.monotonic() - clock)

    def _watch(self, running: Mapping[str, _Control]) -> None:
        now = time.monotonic()
        for control in running.values():
            if control.stopped is None and now > control.deadline:
                control.stop("budget")
            elif control.stopped is not None:
                control.cancel()  # again: a block may have started since the last try

    def _stop_all(self, running: dict[str, _Control]) -> list[TaskResult]:
        """Ctrl-C: stop every running task, wait a little for them, then clean up by force."""
        for control in running.values():
            control.stop("interrupt")
        results: list[TaskResult] = []
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while running and time.monotonic() < deadline:
                try:
                    kind, task_id, payload = self._done.get(timeout=_POLL_S)
                except queue.Empty:
                    self._watch(running)
                    continue
                if kind == "done" and running.pop(task_id, None) is not None:
                    results.append(payload)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting, clean up by force below
        for task_id, control in running.items():
            self._remove_containers(control)
            results.append(
                TaskResult(
                    task_id,
                    "skipped",
                    "interrupted (Ctrl-C); it was still stopping when oi exited",
                    digest=control.planned.spec.digest(),
                )
            )
        return results

    def _remove_containers(self, control: _Control) -> None:
        if control.session_id is None:
            return
        from orchestrator.sandbox.spec import LABEL_SESSION  # noqa: PLC0415

        with contextlib.suppress(Exception):
            client = self._docker_factory()
            try:
                for container in client.api.containers(
                    all=True, filters={"label": f"{LABEL_SESSION}={control.session_id}"}
                ):
                    client.api.remove_container(container["Id"], force=True, v=True)
            finally:
                client.close()

    # --- one task (runs on its worker thread) -------------------------------------------------

    def _worker(self, control: _Control) -> None:
        spec = control.planned.spec
        try:
            result = self._run_task(control)
        except BaseException as exc:  # a worker must always report back
            result = TaskResult(
                spec.id,
                "error",
                f"internal error: {type(exc).__name__}: {exc}",
                digest=spec.digest(),
            )
        self._done.put(("done", spec.id, result))

    def _run_task(self, control: _Control) -> TaskResult:
        from orchestrator.sandbox.runner import new_session_id  # noqa: PLC0415

        planned = control.planned
        spec = planned.spec
        task_dir = self.out_dir / spec.id
        started_at = time.time()
        clock = time.monotonic()
        session_id = new_session_id() + "-" + spec.id[:40]
        control.session_id = session_id
        base: dict[str, Any] = {
            "task_id": spec.id,
            "session_id": session_id,
            "digest": spec.digest(),
        }
        log: TaskLog | None = None
        client: Any = None
        status: str | None = None
        session_reason = ""
        check: CheckOutcome | None = None
        blocks = 0
        try:
            remove_tree(task_dir)
            task_dir.mkdir(mode=0o755)
            workdir = task_dir / "workdir"
            if spec.workdir is not None:
                copy_tree(spec.workdir, workdir, owner=planned.owner)
            else:
                workdir.mkdir(mode=0o755)
                if planned.owner is not None:
                    os.chown(workdir, *planned.owner)
            write_inline_files(workdir, spec.files, owner=planned.owner)
            log = TaskLog(task_dir / "log.txt")
            log.write(f"# task {spec.id}\n{spec.prompt}\n")
            client = self._docker_factory()
            status, session_reason, blocks = self._run_session(
                control, client, session_id, task_dir, log
            )
            if status == "finished" and spec.check is not None and control.stopped is None:
                check = self._run_check(control, log)
            outcome, reason = judge(
                session_status=status,
                session_reason=session_reason,
                check_command=spec.check,
                check=check,
                stopped=control.stopped,
                budget_s=planned.budget_s,
            )
        except Exception as exc:
            if isinstance(exc, OiError):
                reason = str(exc)
            else:
                reason = f"internal error: {type(exc).__name__}: {exc}"
                if log is not None:
                    log.write("\n## internal error\n" + traceback.format_exc())
            outcome = "error"
            if control.stopped is not None:  # stopping it is what failed it, not the engine
                outcome, reason = judge(
                    session_status=status,
                    session_reason=session_reason,
                    check_command=spec.check,
                    check=check,
                    stopped=control.stopped,
                    budget_s=planned.budget_s,
                )
        finally:
            if control.sandbox is not None:
                with contextlib.suppress(Exception):
                    control.sandbox.close()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        if log is not None:
            log.write(f"\n## {outcome}: {reason}\n")
        result = TaskResult(
            outcome=outcome,
            reason=reason,
            duration_s=round(time.monotonic() - clock, 3),
            session_status=status,
            check_exit_code=check.exit_code if check else None,
            blocks=blocks,
            output_tail=log.tail() if log else "",
            started_at=started_at,
            **base,
        )
        return self._finish(task_dir, result, log)

    def _finish(self, task_dir: Path, result: TaskResult, log: TaskLog | None) -> TaskResult:
        if log is not None:
            log.close()
        if task_dir.is_dir() and not task_dir.is_symlink():
            data = json.dumps(result.to_dict(), indent=2).encode() + b"\n"
            write_file_atomic(task_dir / "result.json", data)
        return result

    def _run_session(
        self, control: _Control, client: Any, session_id: str, task_dir: Path, log: TaskLog
    ) -> tuple[str, str, int]:
        """Run the model's session to its end (or a stop); (status, reason, blocks run)."""
        from orchestrator import __version__  # noqa: PLC0415
        from orchestrator.approval import AutoApprover  # noqa: PLC0415
        from orchestrator.events import SessionEnded  # noqa: PLC0415
        from orchestrator.llm.client import ModelClient  # noqa: PLC0415
        from orchestrator.sandbox.runner import Sandbox  # noqa: PLC0415
        from orchestrator.session import Session  # noqa: PLC0415
        from orchestrator.transcript import Transcript  # noqa: PLC0415

        planned = control.planned
        settings = planned.settings
        sandbox = Sandbox.from_settings(settings, session_id=session_id, client=client)
        control.sandbox = sandbox
        if sandbox.identity.warning:
            self._done.put(("notice", planned.spec.id, sandbox.identity.warning))
        model = (self._model_factory or ModelClient.from_settings)(settings)
        transcript = Transcript.open(task_dir / "session.jsonl")
        try:
            transcript.append(
                "session",
                session_id=session_id,
                resumed=False,
                oi_version=__version__,
                model=settings.model,
                api_base=settings.api_base,
                settings=settings.model_dump(mode="json", exclude={"api_key"}),
                batch={
                    "task_id": planned.spec.id,
                    "tasks_file": self._tasks_file,
                    "check": planned.spec.check,
                },
            )
            session = Session(
                model=model,
                sandbox=sandbox,
                approver=AutoApprover(),
                settings=settings,
                transcript=transcript,
            )
            events = session.send(planned.spec.prompt)
            ended: SessionEnded | None = None
            status = "interrupted"
            try:
                while True:
                    try:
                        if control.stopped is None:
                            event = next(events)
                        else:  # what Ctrl-C does in `oi run`: kills a running block
                            event = events.throw(KeyboardInterrupt())
                    except StopIteration as stop:
                        status = str(stop.value)
                        break
                    except KeyboardInterrupt:
                        break
                    log.event(event)
                    if isinstance(event, SessionEnded):
                        ended = event
            finally:
                events.close()
            if ended is None:
                reason = "over budget" if control.stopped == "budget" else "interrupted"
                transcript.event(
                    SessionEnded(
                        "interrupted",
                        f"stopped by oi batch: {reason}",
                        0,
                        session.totals.prompt_tokens,
                        session.totals.completion_tokens,
                    )
                )
            return status, ended.reason if ended else "", session.totals.blocks
        finally:
            transcript.close()

    def _run_check(self, control: _Control, log: TaskLog) -> CheckOutcome:
        from orchestrator.languages import Language  # noqa: PLC0415

        spec = control.planned.spec
        assert control.sandbox is not None and spec.check is not None
        log.write(f"\n## check: {spec.check}\n")
        result: ExecResult = control.sandbox.run(
            Language.SHELL, spec.check, on_output=log.write_bytes
        )
        log.write(f"\n## check exit code {result.shell_exit_code}\n")
        return CheckOutcome(
            result.exit_code, result.timed_out, result.oom_killed, control.planned.settings.timeout
        )


# --- planning (I/O: reads the tasks file, settings, the out folder) -------------------------------


def load_tasks_file(path: Path) -> list[TaskSpec]:
    """Read and validate a tasks file (YAML, or JSONL by its extension)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read tasks file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"tasks file {path} is not UTF-8 text") from None
    return parse_tasks(text, str(path), base_dir=path.absolute().parent, jsonl=is_jsonl(path))


def task_settings(
    spec: TaskSpec, flags: Mapping[str, Any], workdir: Path, budget_s: float, source: str
) -> Settings:
    """The task's settings: its overrides layered over the batch's flags, through
    ``load_settings`` (so validation and policy caps apply), with auto-run on and each model
    request bounded by the task's budget."""
    from orchestrator.settings import load_settings  # noqa: PLC0415

    layered = {**{k: v for k, v in flags.items() if v is not None}, **spec.settings}
    if layered.get("allow_hosts") and layered.get("network") is None:
        layered["network"] = "allowlist"  # naming hosts means the allowlist tier, as in oi run
    layered.update(workdir=workdir, auto_run=True)
    try:
        settings = load_settings(**layered)
    except OiError as exc:
        raise type(exc)(f"{source}:{spec.line} (task {spec.id!r}): {exc}") from None
    timeout = min(settings.request_timeout, budget_s)
    return settings.model_copy(update={"request_timeout": timeout})


def plan_tasks(
    specs: Sequence[TaskSpec],
    *,
    flags: Mapping[str, Any],
    out_dir: Path,
    default_budget_s: float,
    resume: bool,
    source: str,
    owner_reference: Path,
) -> list[PlannedTask]:
    """Validate every task's settings and template before anything runs; with ``resume``,
    keep the stored results of tasks that passed or failed and have not changed since."""
    planned: list[PlannedTask] = []
    for spec in specs:
        budget = spec.budget or default_budget_s
        settings = task_settings(spec, flags, out_dir / spec.id / "workdir", budget, source)
        if spec.workdir is not None:
            try:
                check_tree(spec.workdir)
            except ConfigError as exc:
                raise ConfigError(f"{source}:{spec.line} (task {spec.id!r}): {exc}") from None
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
        planned.append(PlannedTask(spec, settings, budget, owner, kept))
    return planned


def prepare_out_dir(out_dir: Path, *, resume: bool) -> None:
    """Create ``--out``; refuse one that already holds results unless resuming."""
    try:
        info = os.lstat(out_dir)
    except FileNotFoundError:
        try:
            out_dir.mkdir(parents=True, mode=0o755)
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
