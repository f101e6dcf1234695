"""The tasks file of ``oi batch`` (pure): YAML or JSONL, declared as a pydantic model, with
errors that name the file, the line, the task and the fix. Sharding is here too.

A task may set the settings keys that a project file may set (``settings.keys_with_trust``:
harmless ones, and ones it can only narrow); ``plan.py`` applies them through
``settings.load`` as an untrusted layer, so they narrow what the batch's command line allows
and the admin policy caps them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from orchestrator.errors import ConfigError
from orchestrator.fsafe import check_relative
from orchestrator.settings import keys_with_trust

TASK_KEYS = ("id", "prompt", "workdir", "files", "check", "budget")
"""Keys that describe a task."""
SETTING_KEYS = tuple(k for k in keys_with_trust("any", "narrow") if k != "auto_run")
"""Settings a task may set (batch runs with auto-run on). Never per task: the endpoint and key,
the workdir, extra mounts, CA bundles, runtimes: a tasks file must not choose host paths or
redirect secrets."""

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


class TaskModel(BaseModel):
    """The task keys of one task (its settings keys are checked by ``_task_from``)."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    prompt: Any = None
    workdir: Any = None
    files: Any = None
    check: Any = None
    budget: Any = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("'prompt' must be the task in plain words (a non-empty text)")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError("'workdir' must be a folder path (relative to the tasks file)")
        return value

    @field_validator("check")
    @classmethod
    def _check(cls, value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError("'check' must be a shell command (text)")
        return value

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"'budget': {exc}") from None

    @field_validator("files")
    @classmethod
    def _files(cls, value: Any) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ValueError("'files' must map relative paths to their text")
        files: list[tuple[str, str]] = []
        for name, content in value.items():
            if not isinstance(name, str) or not isinstance(content, str):
                raise ValueError(f"in 'files', {name!r} must be a path mapped to text")
            try:
                check_relative(name, "files")
            except ConfigError:
                raise ValueError(
                    f"file path {name!r} must be relative to the workdir, without '..'"
                ) from None
            files.append((name, content))
        return tuple(files)


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


def _task_id(merged: Mapping[str, Any], where: str) -> str:
    raw_id = merged.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not _TASK_ID.match(raw_id):
        raise ConfigError(
            f"{where}: task id {raw_id!r} is missing or invalid; use letters, digits, '.', '_' "
            "and '-' (it names the task's folder under --out)"
        )
    return raw_id


def _task_from(
    data: Any, defaults: Mapping[str, Any], *, source: str, line: int, base_dir: Path
) -> TaskSpec:
    where = f"{source}:{line}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a task must be a mapping with id and prompt, got {data!r}")
    merged = {**defaults, **data}
    task_id = _task_id(merged, where)
    where = f"{where} (task {task_id!r})"
    unknown = [key for key in merged if key not in TASK_KEYS and key not in SETTING_KEYS]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, (*TASK_KEYS, *SETTING_KEYS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{where}: unknown key {key!r}; {hint}task keys: {', '.join(TASK_KEYS)}; "
            f"settings a task may set: {', '.join(SETTING_KEYS)}"
        )
    try:
        task = TaskModel.model_validate({k: v for k, v in merged.items() if k != "id"})
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}") from None
    return TaskSpec(
        id=task_id,
        prompt=task.prompt,
        line=line,
        workdir=(base_dir / Path(task.workdir).expanduser()) if task.workdir else None,
        files=task.files,
        check=task.check,
        budget=task.budget,
        settings={key: merged[key] for key in SETTING_KEYS if key in merged},
    )


def load_tasks_file(path: Path) -> tuple[list[TaskSpec], bytes]:
    """Read and validate a tasks file (YAML, or JSONL by its extension); also its bytes, as
    read (trust is checked on exactly those)."""
    from orchestrator.fsafe import read_regular  # noqa: PLC0415

    try:
        content = read_regular(path, limit=16 << 20, follow=True)
        text = content.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read tasks file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"tasks file {path} is not UTF-8 text") from None
    tasks = parse_tasks(text, str(path), base_dir=path.absolute().parent, jsonl=is_jsonl(path))
    return tasks, content


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
