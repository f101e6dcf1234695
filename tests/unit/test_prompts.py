"""The system prompt, the execute tool schema and the result text the model receives."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from orchestrator.languages import Language
from orchestrator.llm.prompts import (
    EXECUTE_TOOL,
    PromptContext,
    build_system_prompt,
    format_language_error,
    format_result_for_model,
    trim_middle,
)

BASE = PromptContext(
    workdir_host="/home/ana/sales",
    languages=[
        ("python", "numpy, pandas, matplotlib"),
        ("javascript", "node 20"),
        ("shell", "bash, coreutils, curl"),
    ],
    network="none",
    allowed_hosts=[],
    memory="1 GiB",
    cpus=1.0,
    timeout_s=60.0,
    tool_mode_is_tools=False,
)


# (id, changes to BASE, phrases that must appear, phrases that must not)
PROMPT_CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    (
        "markdown mode, no network",
        {},
        [
            "runs in a NEW container",
            "files under /workspace",
            "/home/ana/sales",
            "python (numpy, pandas, matplotlib)",
            "shell (bash, coreutils, curl)",
            "no network at all",
            "60 s, 1 GiB memory, 1 CPU",
            "ONE fenced code block",
            "```python",
            "without any code block",
        ],
        ["`execute`", "internet"],
    ),
    (
        "tools mode",
        {"tool_mode_is_tools": True},
        ["call the `execute` tool", "One call per reply"],
        ["fenced code block"],
    ),
    (
        "allowlist names the hosts",
        {"network": "allowlist", "allowed_hosts": ["pypi.org", "files.pythonhosted.org"]},
        ["only these hosts can be reached: pypi.org, files.pythonhosted.org"],
        ["no network at all"],
    ),
    ("allowlist without hosts", {"network": "allowlist"}, ["reached: (none)"], []),
    (
        "open network",
        {"network": "open"},
        ["internet access is available"],
        ["no network at all", "only these hosts"],
    ),
    (
        "fractional limits read naturally",
        {"cpus": 0.5, "timeout_s": 1.5, "memory": "512 MiB"},
        ["1.5 s, 512 MiB memory, 0.5 CPU"],
        ["1.50", "0.50"],
    ),
    (
        "language without notes",
        {"languages": [("python", "")]},
        ["Languages: python."],
        ["python ()"],
    ),
]


@pytest.mark.parametrize(
    ("changes", "present", "absent"),
    [c[1:] for c in PROMPT_CASES],
    ids=[c[0] for c in PROMPT_CASES],
)
def test_system_prompt(changes: dict[str, Any], present: list[str], absent: list[str]) -> None:
    prompt = build_system_prompt(dataclasses.replace(BASE, **changes))
    for phrase in present:
        assert phrase in prompt
    for phrase in absent:
        assert phrase not in prompt
    assert len(prompt.split()) <= 250  # a 4B model follows a short prompt


def test_execute_tool_schema_lists_every_language() -> None:
    function = EXECUTE_TOOL["function"]
    assert EXECUTE_TOOL["type"] == "function"
    assert function["name"] == "execute"
    parameters = function["parameters"]
    assert parameters["required"] == ["language", "code"]
    assert parameters["properties"]["language"]["enum"] == [lang.value for lang in Language]
    assert parameters["properties"]["code"]["type"] == "string"
    json.dumps(EXECUTE_TOOL)  # sent as JSON by the SDK


# (id, arguments, expected text)
RESULT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("success", {"exit_code": 0, "stdout": "42\n"}, "exit code 0\nstdout:\n42"),
    (
        "failure with a traceback",
        {"exit_code": 1, "stderr": "Traceback ...\nValueError: bad\n"},
        "exit code 1\nstderr:\nTraceback ...\nValueError: bad",
    ),
    (
        "both streams",
        {"exit_code": 2, "stdout": "a\n", "stderr": "b\n"},
        "exit code 2\nstdout:\na\nstderr:\nb",
    ),
    ("no output", {"exit_code": 0}, "exit code 0\n(no output)"),
    (
        "whitespace-only output counts as none",
        {"exit_code": 0, "stdout": "\n\n"},
        "exit code 0\n(no output)",
    ),
    (
        "timeout",
        {"exit_code": 137, "timed_out": True, "timeout_s": 60.0, "stdout": "step 1\n"},
        "timed out after 60 s (wall-clock limit); the block was killed\nstdout:\nstep 1",
    ),
    (
        "out of memory",
        {"exit_code": 137, "oom_killed": True, "memory_str": "1 GiB"},
        "killed: memory limit 1 GiB; use less memory\n(no output)",
    ),
    (
        "declined wins over everything",
        {"exit_code": None, "declined": True, "stdout": "x"},
        "declined by the user: the block was not run.",
    ),
    (
        "cut noted in the title when the text does not say so",
        {"exit_code": 0, "stdout": "head\ntail\n", "stdout_cut_bytes": 12345},
        "exit code 0\nstdout (12345 bytes cut from the middle):\nhead\ntail",
    ),
    (
        "cut not repeated when the sandbox marked it",
        {
            "exit_code": 0,
            "stderr": "head\n[... 12345 bytes cut by oi ...]\ntail",
            "stderr_cut_bytes": 12345,
        },
        "exit code 0\nstderr:\nhead\n[... 12345 bytes cut by oi ...]\ntail",
    ),
    (
        "max_chars trims each stream",
        {"exit_code": 1, "stdout": "a" * 10 + "b" * 10, "max_chars": 4},
        "exit code 1\nstdout:\naa\n[... 16 characters cut ...]\nbb",
    ),
    ("no exit code", {"exit_code": None, "stdout": "x"}, "no exit code\nstdout:\nx"),
]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [c[1:] for c in RESULT_CASES],
    ids=[c[0] for c in RESULT_CASES],
)
def test_format_result_for_model(arguments: dict[str, Any], expected: str) -> None:
    assert format_result_for_model(**arguments) == expected


# (text, max_chars, expected text, expected cut)
TRIM_CASES: list[tuple[str, int, str, int]] = [
    ("short", 10, "short", 0),
    ("exactly10!", 10, "exactly10!", 0),
    ("0123456789", 4, "01\n[... 6 characters cut ...]\n89", 6),
    ("0123456789", 5, "01\n[... 5 characters cut ...]\n789", 5),  # odd: tail gets the extra
    ("0123456789", 1, "\n[... 9 characters cut ...]\n9", 9),
    ("0123456789", 0, "\n[... 10 characters cut ...]\n", 10),
    ("", 0, "", 0),
]


@pytest.mark.parametrize(("text", "max_chars", "expected", "cut"), TRIM_CASES)
def test_trim_middle(text: str, max_chars: int, expected: str, cut: int) -> None:
    assert trim_middle(text, max_chars) == (expected, cut)


def test_trim_middle_rejects_negative_limit() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        trim_middle("abc", -1)


def test_language_error_names_what_oi_runs() -> None:
    message = format_language_error("ruby")
    assert "'ruby'" in message
    for language in Language:
        assert language.value in message
