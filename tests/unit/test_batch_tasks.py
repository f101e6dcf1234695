"""Pure parts of batch mode: the tasks file, durations and sharding."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.batch import (
    TaskSpec,
    is_jsonl,
    parse_duration,
    parse_shard,
    parse_tasks,
    select_shard,
)
from orchestrator.errors import ConfigError

BASE = Path("/project/ci")


def parse(text: str, *, jsonl: bool = False) -> list[TaskSpec]:
    return parse_tasks(text, "tasks.yaml", base_dir=BASE, jsonl=jsonl)


def test_a_full_yaml_file_with_defaults() -> None:
    tasks = parse(
        """
defaults:
  check: test -f out.txt
  memory: 2g
  budget: 10m
tasks:
  - id: first
    prompt: make out.txt
    workdir: fixtures/first
    files:
      notes/readme.md: "hello"
  - id: second
    prompt: |
      two lines
      of task
    check: "true"
    memory: 512m
    network: open
    budget: 90
"""
    )
    first, second = tasks
    assert first == TaskSpec(
        id="first",
        prompt="make out.txt",
        line=7,
        workdir=BASE / "fixtures/first",
        files=(("notes/readme.md", "hello"),),
        check="test -f out.txt",
        budget=600.0,
        settings={"memory": "2g"},
    )
    assert second.line == 12
    assert second.prompt == "two lines\nof task\n"
    assert second.check == "true" and second.budget == 90.0 and second.workdir is None
    assert second.settings == {"memory": "512m", "network": "open"}


def test_a_plain_yaml_list_and_numeric_ids() -> None:
    tasks = parse("- id: 1\n  prompt: a\n- id: b-2.x_y\n  prompt: b\n")
    assert [(t.id, t.line) for t in tasks] == [("1", 1), ("b-2.x_y", 3)]


def test_jsonl_one_task_per_line_with_comments_and_blank_lines() -> None:
    text = '# a comment\n{"id": "a", "prompt": "x"}\n\n{"id": "b", "prompt": "y", "timeout": 5}\n'
    tasks = parse(text, jsonl=True)
    assert [(t.id, t.line, dict(t.settings)) for t in tasks] == [
        ("a", 2, {}),
        ("b", 4, {"timeout": 5}),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no tasks found"),
        ("tasks: []", "no tasks found"),
        ("tasks:\n  - id: a\n    prompt: [unclosed", "tasks.yaml:3: not valid YAML"),
        ("just a string", "expected a list of tasks"),
        ("tasks: {id: a}", "expected a list of tasks"),
        ("task:\n  - id: a", "unknown top-level key(s) task"),
        ("defaults: 3\ntasks:\n  - id: a\n    prompt: p", "'defaults' must be a mapping"),
        ("defaults: {id: x}\ntasks:\n  - id: a\n    prompt: p", "'defaults' cannot set 'id'"),
        ("- prompt: no id", "tasks.yaml:1: task id None is missing or invalid"),
        ("- id: ../up\n  prompt: p", "task id '../up' is missing or invalid"),
        ("- id: 'has space'\n  prompt: p", "is missing or invalid"),
        ("- id: a", "tasks.yaml:1 (task 'a'): 'prompt' must be the task"),
        ("- id: a\n  prompt: '  '", "'prompt' must be the task"),
        ("- just text", "a task must be a mapping"),
        ("- id: a\n  prompt: p\n  memroy: 2g", "unknown key 'memroy'; did you mean 'memory'?"),
        ("- id: a\n  prompt: p\n  api_key: secret", "unknown key 'api_key'"),
        ("- id: a\n  prompt: p\n  auto_run: false", "unknown key 'auto_run'"),
        ("- id: a\n  prompt: p\n  check: 3", "'check' must be a shell command"),
        ("- id: a\n  prompt: p\n  workdir: ''", "'workdir' must be a folder path"),
        ("- id: a\n  prompt: p\n  budget: soon", "'budget': expected seconds"),
        ("- id: a\n  prompt: p\n  budget: -5", "'budget': a duration must be positive"),
        ("- id: a\n  prompt: p\n  files: [x]", "'files' must map relative paths"),
        ("- id: a\n  prompt: p\n  files: {x: 3}", "must be a path mapped to text"),
        ("- id: a\n  prompt: p\n  files: {/etc/x: t}", "file path '/etc/x' must be relative"),
        ("- id: a\n  prompt: p\n  files: {a/../../x: t}", "without '..'"),
        (
            "- id: a\n  prompt: p\n- id: a\n  prompt: q",
            "tasks.yaml:3: task id 'a' is already used at line 1",
        ),
    ],
)
def test_bad_yaml_files_name_the_place_and_the_fix(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": ', "tasks.yaml:2: not valid JSON"),
        ('["id", "a"]', "tasks.yaml:1: a task must be a mapping"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}', "already used at line 1"),
    ],
)
def test_bad_jsonl_files_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, jsonl=True)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("name", "jsonl"),
    [
        ("tasks.yaml", False),
        ("t.yml", False),
        ("t.json", False),
        ("t.jsonl", True),
        ("T.NDJSON", True),
    ],
)
def test_format_by_extension(name: str, jsonl: bool) -> None:
    assert is_jsonl(Path(name)) is jsonl


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("15min", 900.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        (" 2 M ", 120.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", [0, -1, "0s", "soon", "1d", True, None, [], float("inf"), float("nan")]
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_digest_changes_with_what_the_task_asks_not_with_its_line() -> None:
    base = TaskSpec("a", "p", 1)
    assert base.digest() == TaskSpec("a", "p", 99).digest()
    for changed in (
        TaskSpec("a", "q", 1),
        TaskSpec("a", "p", 1, check="true"),
        TaskSpec("a", "p", 1, settings={"memory": "2g"}),
        TaskSpec("a", "p", 1, files=(("x", "y"),)),
        TaskSpec("a", "p", 1, workdir=Path("/t")),
        TaskSpec("a", "p", 1, budget=5.0),
    ):
        assert changed.digest() != base.digest()


# --- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3)), ("10/12", (10, 12))],
)
def test_parse_shard(text: str, pair: tuple[int, int]) -> None:
    assert parse_shard(text) == pair


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "use I/N"),
        ("2", "use I/N"),
        ("a/b", "use I/N"),
        ("-1/2", "use I/N"),
        ("0/2", "between 1 and N"),
        ("3/2", "between 1 and N"),
        ("1/0", "between 1 and N"),
    ],
)
def test_parse_shard_refuses(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_shard(text)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("items", "count"),
    [(n, c) for n in (0, 1, 2, 5, 7, 12, 100) for c in (1, 2, 3, 4, 7, 13)],
)
def test_shards_cover_every_task_exactly_once_and_are_balanced(items: int, count: int) -> None:
    tasks = [f"t{i}" for i in range(items)]
    shards = [select_shard(tasks, index, count) for index in range(1, count + 1)]
    flat = [task for shard in shards for task in shard]
    assert sorted(flat) == sorted(tasks)  # every task once
    assert len(flat) == len(set(flat))
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    for shard in shards:  # each shard keeps the file's order
        assert shard == sorted(shard, key=tasks.index)


def test_sharding_is_deterministic() -> None:
    tasks = [f"t{i}" for i in range(10)]
    assert select_shard(tasks, 2, 3) == ["t1", "t4", "t7"]
    assert select_shard(tasks, 2, 3) == select_shard(list(tasks), 2, 3)


def test_the_example_tasks_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "tasks.yaml"
    tasks = parse_tasks(path.read_text(), str(path), base_dir=path.parent)
    assert len(tasks) >= 3
    for task in tasks:
        if task.workdir is not None:
            assert task.workdir.is_dir(), task.workdir
