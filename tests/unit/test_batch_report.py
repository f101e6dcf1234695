"""Pure parts of batch mode: judging a task, the JUnit and JSON reports, the progress line."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from orchestrator.batch import (
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

OK_CHECK = CheckOutcome(0, False, False, 60)


@pytest.mark.parametrize(
    ("status", "command", "check", "stopped", "outcome", "reason"),
    [
        ("finished", None, None, None, "passed", "the model finished (no check)"),
        ("finished", "true", OK_CHECK, None, "passed", "check passed"),
        ("finished", "false", CheckOutcome(1, False, False, 60), None, "failed", "check exited 1"),
        (
            "finished",
            "x",
            CheckOutcome(137, False, True, 60),
            None,
            "failed",
            "check killed: memory limit",
        ),
        (
            "finished",
            "x",
            CheckOutcome(143, True, False, 60),
            None,
            "failed",
            "check timed out after 60 s",
        ),
        ("finished", "x", None, None, "error", "the check did not run"),
        ("max_turns", "true", None, None, "failed", "the model did not finish: max_turns (why)"),
        ("loop_guard", None, None, None, "failed", "the model did not finish: loop_guard (why)"),
        ("finished", "true", OK_CHECK, "budget", "failed", "over its budget of 30 s: stopped"),
        ("interrupted", None, None, "budget", "failed", "over its budget of 30 s: stopped"),
        (None, None, None, "interrupt", "skipped", "interrupted (Ctrl-C) before it finished"),
    ],
)
def test_judge(
    status: str | None,
    command: str | None,
    check: CheckOutcome | None,
    stopped: Any,
    outcome: str,
    reason: str,
) -> None:
    got = judge(
        session_status=status,
        session_reason="why",
        check_command=command,
        check=check,
        stopped=stopped,
        budget_s=30,
    )
    assert got == (outcome, reason)


RESULTS = [
    TaskResult("ok", "passed", "check passed", 1.5, "finished", 0, 2, "all good\n"),
    TaskResult("bad", "failed", "check exited 1", 2.25, "finished", 1, 1, "Traceback...\nboom\n"),
    TaskResult("crash", "error", "the model server at http://x answered HTTP 500", 0.5),
    TaskResult("later", "skipped", "not started: the batch was interrupted (Ctrl-C)"),
]


def test_junit_structure_counts_and_reasons() -> None:
    xml = junit_xml(
        RESULTS,
        suite="tasks shard 1/2",
        timestamp="2026-01-01T00:00:00+00:00",
        duration_s=4.25,
        properties={"shard": "1/2"},
    )
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4",
        "failures": "1",
        "errors": "1",
        "skipped": "1",
    }
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "tasks shard 1/2" and suite.get("time") == "4.250"
    assert suite.get("timestamp") == "2026-01-01T00:00:00+00:00"
    assert [p.attrib for p in suite.findall("properties/property")] == [
        {"name": "shard", "value": "1/2"}
    ]
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert list(cases) == ["ok", "bad", "crash", "later"]
    assert all(c.get("classname") == "oi.batch.tasks_shard_1_2" for c in cases.values())
    assert cases["ok"].get("time") == "1.500"
    assert [child.tag for child in cases["ok"]] == ["system-out"]
    assert cases["ok"].findtext("system-out") == "all good\n"
    failure = cases["bad"].find("failure")
    assert failure is not None and failure.get("message") == "check exited 1"
    assert failure.text == "Traceback...\nboom\n"
    error = cases["crash"].find("error")
    assert error is not None and "HTTP 500" in (error.get("message") or "")
    skipped = cases["later"].find("skipped")
    assert skipped is not None and "interrupted" in (skipped.get("message") or "")


def test_junit_stays_valid_xml_whatever_the_output_holds() -> None:
    hostile = "\x00nul \x1b[31mred\x1b[0m \x1b]0;title\x07 \x07bell ]]> <tag> & \ud800 \ufffe end"
    result = TaskResult("x", "failed", "reason \x1b[2J with escape", output_tail=hostile)
    root = ET.fromstring(junit_xml([result], suite="s", timestamp="t", duration_s=0))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    text = failure.text or ""
    assert (
        "nul" in text
        and "\x00" not in text
        and "\\xd800" in text
        and "red" in text
        and "]]> <tag> &" in text
        and "end" in text
    )
    assert "\x1b" not in text and "title" not in text
    assert "\x1b" not in (failure.get("message") or "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text\nline 2\ttab\r", "plain text\nline 2\ttab\r"),
        ("caf\u00e9 \u4e2d \U0001f600", "caf\u00e9 \u4e2d \U0001f600"),
        ("a\x00b\x07", "ab"),  # control characters go, like on a terminal
        ("a\x1b[1mbold\x1b[0m", "abold"),
        ("\ufffe\uffff", "\\xfffe\\xffff"),
    ],
)
def test_xml_text(text: str, expected: str) -> None:
    assert xml_text(text) == expected


def test_an_empty_junit_report_is_valid() -> None:
    root = ET.fromstring(junit_xml([], suite="s", timestamp="t", duration_s=0))
    assert root.get("tests") == "0" and root.find("testsuite") is not None


def test_summary_and_counts() -> None:
    data = summary(
        RESULTS,
        tasks_file="tasks.yaml",
        shard="1/2",
        concurrency=2,
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=4.2512,
        interrupted=True,
        out_dir="/out",
    )
    assert data["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "total": 4}
    assert data["passed"] is False and data["interrupted"] is True
    assert data["duration_s"] == 4.251
    assert [t["task_id"] for t in data["tasks"]] == ["ok", "bad", "crash", "later"]
    assert TaskResult.from_dict(data["tasks"][1]) == RESULTS[1]
    assert count_outcomes([]) == {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "total": 0}


@pytest.mark.parametrize(
    "data",
    [{}, {"task_id": "a", "outcome": "maybe"}, {"task_id": 3, "outcome": "passed"}],
)
def test_task_result_from_dict_refuses_junk(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TaskResult.from_dict(data)


def test_task_result_from_dict_ignores_unknown_keys() -> None:
    data = {**RESULTS[0].to_dict(), "from_the_future": 1}
    assert TaskResult.from_dict(data) == RESULTS[0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (7.4, "0:07"), (59.6, "1:00"), (750, "12:30"), (3723, "1:02:03"), (-5, "0:00")],
)
def test_format_clock(seconds: float, text: str) -> None:
    assert format_clock(seconds) == text


@pytest.mark.parametrize(
    ("queued", "running", "durations", "concurrency", "eta"),
    [
        (5, [], [], 1, None),  # nothing finished yet: unknown
        (4, [], [10.0], 1, 40.0),
        (4, [], [10.0, 20.0], 2, 30.0),
        (0, [4.0], [10.0], 1, 6.0),  # a running task has ~6 s left
        (0, [30.0], [10.0], 1, 0.0),  # running longer than the mean: not negative
        (2, [5.0, 5.0], [10.0], 2, 15.0),
    ],
)
def test_eta(
    queued: int, running: list[float], durations: list[float], concurrency: int, eta: float | None
) -> None:
    got = eta_seconds(
        queued=queued, running_elapsed=running, durations=durations, concurrency=concurrency
    )
    assert got == eta


def test_progress_line() -> None:
    state = ProgressState(total=4, concurrency=2, started=100.0)
    assert state.line(100.0) == "0/4 done · 0 failed · 0 running · 0:00 elapsed · ETA --"
    state.start("a", 100.0)
    state.start("b", 100.0)
    state.finish(TaskResult("a", "failed", "x", duration_s=10.0))
    state.start("c", 110.0)
    assert state.line(112.0) == "1/4 done · 1 failed · 2 running · 0:12 elapsed · ETA 0:09"
    state.finish(TaskResult("z", "passed", "kept", duration_s=99.0, resumed=True))
    assert state.durations == [10.0]  # kept results do not skew the estimate
