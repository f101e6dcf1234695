"""The batch CLI's event loop: Ctrl-C while rendering reaches the runner exactly once."""

from __future__ import annotations

from collections.abc import Generator

import pytest
import typer

from orchestrator.batch import BatchEvent, BatchReport, TaskStarted
from orchestrator.cli_batch import _drive_batch


class Display:
    def __init__(self, interrupt_on: set[str]) -> None:
        self.interrupt_on = interrupt_on
        self.seen: list[str] = []

    def handle(self, event: BatchEvent) -> None:
        assert isinstance(event, TaskStarted)
        self.seen.append(event.task_id)
        if event.task_id in self.interrupt_on:
            raise KeyboardInterrupt


def runner(thrown: list[str]) -> Generator[BatchEvent, None, BatchReport]:
    try:
        yield TaskStarted("a")
        yield TaskStarted("b")
    except KeyboardInterrupt:
        thrown.append("ctrl-c")
        yield TaskStarted("stopping")
        yield TaskStarted("stopped")
        return BatchReport([], True, 0.0, 0.0)
    return BatchReport([], False, 0.0, 0.0)


def test_without_ctrl_c_every_event_is_rendered() -> None:
    display, thrown = Display(set()), []
    report = _drive_batch(runner(thrown), display)
    assert not report.interrupted and display.seen == ["a", "b"] and thrown == []


def test_ctrl_c_while_rendering_is_thrown_into_the_runner_once() -> None:
    display, thrown = Display({"a", "stopping"}), []  # a second Ctrl-C while stopping
    report = _drive_batch(runner(thrown), display)
    assert report.interrupted
    assert display.seen == ["a", "stopping", "stopped"]
    assert thrown == ["ctrl-c"]


def test_a_runner_killed_by_ctrl_c_exits_3() -> None:
    def fragile() -> Generator[BatchEvent, None, BatchReport]:
        yield TaskStarted("a")
        return BatchReport([], False, 0.0, 0.0)

    with pytest.raises(typer.Exit) as info:
        _drive_batch(fragile(), Display({"a"}))
    assert info.value.exit_code == 3
