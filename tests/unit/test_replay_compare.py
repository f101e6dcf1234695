"""Pure parts of replay: which blocks ran with which code, and comparing results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError
from orchestrator.replay import (
    BlockComparison,
    RecordedBlock,
    compare_block,
    output_diff,
    recorded_blocks,
    recorded_limits,
    summarize,
)


def sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def proposed(index: int, code: str, language: str = "python") -> dict[str, Any]:
    return {
        "type": "event",
        "event": "code_proposed",
        "index": index,
        "language": language,
        "code": code,
        "sha256": sha(code),
    }


def decision(index: int, kind: str, code: str) -> dict[str, Any]:
    return {
        "type": "event",
        "event": "decision",
        "index": index,
        "decision": kind,
        "sha256": sha(code),
    }


def result(
    index: int, code: str, exit_code: int = 0, stdout: str = "", **extra: Any
) -> dict[str, Any]:
    full = {
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": "",
        "timed_out": False,
        "oom_killed": False,
    }
    return {
        "type": "event",
        "event": "result",
        "index": index,
        "sha256": sha(code),
        "interrupted": False,
        "result": full,
        **extra,
    }


def test_blocks_that_ran_in_order_with_their_results() -> None:
    records = [
        {"type": "session", "settings": {}},
        {"type": "message", "message": {"role": "user", "content": "x"}},
        proposed(1, "print(1)"),
        decision(1, "run", "print(1)"),
        result(1, "print(1)", stdout="1\n"),
        proposed(2, "echo no", "shell"),
        decision(2, "declined", "echo no"),
        proposed(3, "echo yes", "shell"),
        decision(3, "run", "echo yes"),
        result(3, "echo yes", stdout="yes\n"),
    ]
    blocks = recorded_blocks(records, "s.jsonl")
    assert [(b.number, b.index, b.language, b.code) for b in blocks] == [
        (1, 1, "python", "print(1)"),
        (2, 3, "shell", "echo yes"),
    ]
    assert blocks[1].recorded is not None and blocks[1].recorded["stdout"] == "yes\n"


def test_an_edited_block_replays_the_edited_code() -> None:
    original, edited = "print('model')", "print('person')"
    records = [
        proposed(1, original),
        decision(1, "edited", edited),
        proposed(1, edited),
        decision(1, "run", edited),
        result(1, edited, stdout="person\n"),
    ]
    (block,) = recorded_blocks(records, "s")
    assert block.code == edited and block.sha256 == sha(edited)


def test_a_resumed_chat_repeats_indexes_and_pairs_results_by_order() -> None:
    records = [
        proposed(1, "print('a')"),
        decision(1, "run", "print('a')"),
        result(1, "print('a')", stdout="a\n"),
        proposed(1, "print('b')"),  # a resumed session counts from 1 again
        decision(1, "run", "print('b')"),
        result(1, "print('b')", stdout="b\n"),
    ]
    blocks = recorded_blocks(records, "s")
    assert [(b.code, b.recorded and b.recorded["stdout"]) for b in blocks] == [
        ("print('a')", "a\n"),
        ("print('b')", "b\n"),
    ]


@pytest.mark.parametrize(
    ("tail", "note"),
    [
        ([], "no result in the record"),
        ([result(1, "x", interrupted=True)], "interrupted in the record"),
        ([{**result(1, "x"), "result": {}}], "no full result"),
    ],
)
def test_blocks_without_a_usable_result_are_not_compared(tail: list[Any], note: str) -> None:
    (block,) = recorded_blocks([proposed(1, "x"), decision(1, "run", "x"), *tail], "s")
    assert block.recorded is None and note in block.note


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([decision(1, "run", "x")], "s.jsonl: block 1 ran code with sha256"),
        ([{**proposed(1, "x"), "code": "y"}], "does not hash to its recorded sha256"),
        (
            [{**proposed(1, "x"), "code": None}],
            "a code_proposed line: code: Input should be a valid string",
        ),
    ],
)
def test_inconsistent_records_are_errors_naming_the_file(records: list[Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        recorded_blocks(records, "s.jsonl")
    assert expected in str(info.value)


def test_recorded_limits_take_only_the_limits() -> None:
    settings = {
        "memory": 123,
        "timeout": 5.0,
        "network": "open",
        "env": ["SECRET"],
        "max_output": None,
    }
    records = [{"type": "session", "settings": settings}]
    # python_state: False for a record made before oi kept Python state (its blocks had none)
    assert recorded_limits(records) == {"memory": 123, "timeout": 5.0, "python_state": False}
    settings["python_state"] = True
    assert recorded_limits(records)["python_state"] is True
    assert recorded_limits([]) == {}


BLOCK = RecordedBlock(
    1,
    1,
    "python",
    "x",
    sha("x"),
    {"exit_code": 0, "stdout": "a\nb\n", "stderr": "", "timed_out": False, "oom_killed": False},
)


def replayed(**changes: Any) -> dict[str, Any]:
    assert BLOCK.recorded is not None
    return {**BLOCK.recorded, **changes}


@pytest.mark.parametrize(
    ("now", "compare_output", "status", "differences"),
    [
        (replayed(), True, "match", []),
        (replayed(duration_s=9.0, container_id="other"), True, "match", []),
        (replayed(exit_code=1), True, "mismatch", ["recorded exit 0, replayed exit 1"]),
        (replayed(stdout="a\nc\n"), True, "mismatch", ["stdout differs"]),
        (replayed(stdout="a\nc\n"), False, "match", []),
        (
            replayed(stderr="warn\n", exit_code=2),
            True,
            "mismatch",
            ["recorded exit 0, replayed exit 2", "stderr differs"],
        ),
        (
            replayed(timed_out=True, exit_code=137),
            False,
            "mismatch",
            ["recorded exit 0, replayed timed out"],
        ),
        (
            replayed(oom_killed=True, exit_code=137),
            False,
            "mismatch",
            ["recorded exit 0, replayed killed (memory limit)"],
        ),
    ],
)
def test_compare_block(
    now: dict[str, Any], compare_output: bool, status: str, differences: list[str]
) -> None:
    comparison = compare_block(BLOCK, now, compare_output=compare_output)
    assert comparison.status == status
    assert comparison.differences == differences


def test_two_timeouts_match_whatever_the_exit_codes() -> None:
    block = RecordedBlock(
        1,
        1,
        "shell",
        "x",
        sha("x"),
        {"exit_code": 143, "timed_out": True, "stdout": "", "stderr": ""},
    )
    now = {"exit_code": 137, "timed_out": True, "stdout": "", "stderr": ""}
    assert compare_block(block, now).status == "match"


def test_a_mismatch_comes_with_a_unified_diff() -> None:
    comparison = compare_block(BLOCK, replayed(stdout="a\nc\n"))
    assert comparison.diff.splitlines() == [
        "--- recorded stdout",
        "+++ replayed stdout",
        "@@ -1,2 +1,2 @@",
        " a",
        "-b",
        "+c",
    ]
    data = comparison.to_dict()
    assert data["status"] == "mismatch" and data["replayed"]["stdout"] == "a\nc\n"
    json.dumps(data)


def test_not_compared_without_a_record() -> None:
    block = RecordedBlock(1, 1, "shell", "x", sha("x"), None, "no result")
    assert compare_block(block, replayed()).status == "not_compared"


def test_output_diff_is_capped_and_handles_missing_newlines() -> None:
    before = "".join(f"line {i}\n" for i in range(200))
    after = "".join(f"LINE {i}\n" for i in range(200))
    diff = output_diff("stdout", before, after, limit=20)
    assert len(diff.splitlines()) == 21 and diff.splitlines()[-1].endswith("more diff line(s)")
    assert output_diff("stderr", "a", "b").endswith("+b\n")


def test_summarize() -> None:
    match = BlockComparison(BLOCK, "match")
    mismatch = BlockComparison(BLOCK, "mismatch")
    skipped = BlockComparison(BLOCK, "not_compared")
    totals = summarize([match, mismatch, skipped, match])
    assert (totals.matched, totals.mismatched, totals.not_compared, totals.ok) == (2, 1, 1, False)
    assert summarize([match, skipped]).ok


def test_the_shipped_demo_record_is_consistent_and_says_it_is_scripted() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "csv-demo" / "session.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    session = records[0]
    assert session["type"] == "session" and "not a recording of a language model" in session["note"]
    assert "not a model" in session["model"]
    blocks = recorded_blocks(records, str(path))
    assert [b.language for b in blocks] == ["python", "shell", "python", "python", "shell"]
    assert all(b.recorded is not None and b.recorded["exit_code"] == 0 for b in blocks)
    assert recorded_limits(records)["timeout"] == 60.0
