"""Every way a run ends leaves an end record, so ``oi sessions list`` shows the true state
(never "open" for a run that is over). ``Session.send`` is driven by a scripted model and a
fake runner, with a real ``Transcript`` on disk. And a batch task waits, bounded, for a Docker
engine that went away instead of failing at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests.exceptions

from orchestrator.batch.plan import PlannedTask
from orchestrator.batch.runner import BatchEvent, BatchNotice, BatchRunner
from orchestrator.batch.tasks import TaskSpec
from orchestrator.drive import drive
from orchestrator.events import BlockResult, Event, ModelRestarted, ModelText
from orchestrator.languages import Language
from orchestrator.llm.client import StreamEvent, StreamRestarted, TextDelta
from orchestrator.sandbox.health import EngineLostError, lost
from orchestrator.session import Session
from orchestrator.settings import Settings
from orchestrator.transcript import Transcript, read_records, summarize
from tests.fakes import FakeRunner, ScriptedModel


def fence(code: str, language: str = "sh") -> str:
    return f"Let me run this.\n\n```{language}\n{code}\n```\n"


class _CtrlCWhileStreaming(ScriptedModel):
    """The first reply streams a few words, then the person presses Ctrl-C: Python raises
    ``KeyboardInterrupt`` wherever the main thread is, here inside the model's stream."""

    def stream_chat(self, messages: Any, tools: Any = None) -> Iterator[StreamEvent]:
        self.requests.append({"messages": list(messages), "tools": tools})
        yield TextDelta("Let me think about")
        raise KeyboardInterrupt


class _CutOnce(ScriptedModel):
    """A first reply cut mid-stream and asked for again (llm.client's ``StreamRestarted``)."""

    def stream_chat(self, messages: Any, tools: Any = None) -> Iterator[StreamEvent]:
        if not self.requests:
            yield TextDelta("Here is the pl")
            yield StreamRestarted("Here is the pl", "the connection was reset")
        yield from super().stream_chat(messages, tools)


def _session(tmp_path: Path, model: ScriptedModel, runner: FakeRunner | None = None) -> Session:
    transcript = Transcript.create(tmp_path / "sessions", "run1")
    return Session(
        model=model,
        runner=runner or FakeRunner(workdir=tmp_path),
        settings=Settings(workdir=tmp_path, auto_run=True, tool_mode="markdown"),
        transcript=transcript,
    )


def _ends(session: Session) -> list[tuple[str, str]]:
    assert session.transcript is not None
    session.transcript.close()
    records = read_records(session.transcript.path)
    return [(r["status"], r["reason"]) for r in records if r.get("event") == "end"]


def test_ctrl_c_raised_while_the_model_streams_records_an_interrupted_end(
    tmp_path: Path,
) -> None:
    session = _session(tmp_path, _CtrlCWhileStreaming())
    shown: list[Event] = []
    assert drive(session.send("plan it"), render=shown.append) == "interrupted"
    assert any(isinstance(e, ModelText) for e in shown)  # it was streaming when stopped
    assert _ends(session) == [("interrupted", "interrupted by the user (Ctrl-C)")]
    assert session.transcript is not None
    assert summarize(session.transcript.path).status == "interrupted"  # not "open"


def test_ctrl_c_while_a_streamed_word_is_shown_records_an_interrupted_end(
    tmp_path: Path,
) -> None:
    """Ctrl-C while the terminal renders streamed text is thrown into the session there."""
    session = _session(tmp_path, ScriptedModel("A long answer that streams in pieces."))
    pressed: list[bool] = []

    def render(event: Event) -> None:
        if isinstance(event, ModelText) and not pressed:
            pressed.append(True)
            raise KeyboardInterrupt

    assert drive(session.send("explain"), render=render) == "interrupted"
    assert _ends(session) == [("interrupted", "interrupted by the user (Ctrl-C)")]


def test_an_engine_lost_mid_block_records_an_error_end_and_tells_the_model_nothing(
    tmp_path: Path,
) -> None:
    def engine_goes_away(language: Language, code: str) -> tuple[int, str, str]:
        raise lost("the Docker engine restarted while block 1 ran")

    model = ScriptedModel(fence("while true; do sleep 1; done"), "never asked")
    session = _session(tmp_path, model, FakeRunner(behaviour=engine_goes_away))
    shown: list[Event] = []
    with pytest.raises(EngineLostError, match="the Docker engine restarted"):
        drive(session.send("loop"), render=shown.append)
    ((status, reason),) = _ends(session)
    assert status == "error" and "the Docker engine restarted while block 1 ran" in reason
    assert not any(isinstance(e, BlockResult) for e in shown)  # no made-up exit code...
    assert len(model.requests) == 1  # ...and the model was not asked again with one
    assert session.transcript is not None
    assert summarize(session.transcript.path).status == "error"


def test_a_cut_reply_that_restarts_keeps_its_partial_text_in_the_record(tmp_path: Path) -> None:
    session = _session(tmp_path, _CutOnce("Here is the plan, all done."))
    shown: list[Event] = []
    assert drive(session.send("go"), render=shown.append) == "finished"
    assert [e for e in shown if isinstance(e, ModelRestarted)] == [
        ModelRestarted("Here is the pl", "the connection was reset")
    ]
    assert session.transcript is not None
    session.transcript.close()
    records = list(read_records(session.transcript.path))
    (restart,) = [r for r in records if r.get("event") == "model_restarted"]
    assert restart["partial_text"] == "Here is the pl"
    assert restart["reason"] == "the connection was reset"
    replies = [r["text"] for r in records if r.get("event") == "model_reply"]
    assert replies == ["Here is the plan, all done."]  # the cut text is not the reply
    ends = [r["status"] for r in records if r.get("event") == "end"]
    assert ends == ["finished"]


# --- oi batch: a task waits (bounded) for a Docker engine that went away ---------------------


class _Engine:
    """Stands in for ``docker.DockerClient``: ``ping`` fails ``down_for`` times (the engine
    restarting: connection refused at its socket), then answers."""

    def __init__(self, down_for: float) -> None:
        self.down_for = down_for
        self.pings = 0
        self.closed = 0

    def client(self) -> _Engine:
        return self

    def ping(self) -> bool:
        self.pings += 1
        if self.pings <= self.down_for:
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        return True

    def close(self) -> None:
        self.closed += 1


class _SessionlessRunner(BatchRunner):
    """The real runner up to the session: the model and the sandbox are another test's job.
    Records which Docker client each task's session got."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[Any] = []

    def _run_session(
        self, control: Any, client: Any, session_id: str, task_dir: Path, log: Any
    ) -> tuple[str, str, int]:
        self.sessions.append(client)
        return "finished", "the model answered without code", 0


def _batch(tmp_path: Path, engine: _Engine, wait_s: float) -> tuple[_SessionlessRunner, Any]:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    spec = TaskSpec(id="t1", prompt="t1: go", line=1)
    planned = PlannedTask(spec, loaded=cast(Any, None), budget_s=60.0)  # only the session reads it
    runner = _SessionlessRunner(
        [planned], out_dir=out, concurrency=1, docker_factory=engine.client, engine_wait_s=wait_s
    )
    shown: list[BatchEvent] = []
    events = runner.run()
    while True:
        try:
            shown.append(next(events))
        except StopIteration as done:
            return runner, (done.value, shown)


def test_a_batch_task_waits_for_the_engine_to_come_back_then_runs(tmp_path: Path) -> None:
    engine = _Engine(down_for=3)
    runner, (report, shown) = _batch(tmp_path, engine, wait_s=1.0)  # it retries every 0.1 s
    notices = [e.message for e in shown if isinstance(e, BatchNotice)]
    assert len(notices) == 1, notices
    assert "the Docker engine does not answer" in notices[0]
    assert "tasks wait up to 1 s for it to come back" in notices[0]
    assert engine.pings == 4 and runner.sessions == [engine]  # the task ran once it answered
    (result,) = report.results
    assert (result.outcome, result.reason) == ("passed", "the model finished (no check)")


def test_a_batch_task_errors_when_the_engine_never_comes_back(tmp_path: Path) -> None:
    engine = _Engine(down_for=float("inf"))
    started = time.monotonic()
    runner, (report, shown) = _batch(tmp_path, engine, wait_s=0.3)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0, waited  # the bound it was given, not 0 s and not 120 s
    assert engine.pings >= 3 and runner.sessions == []  # tried again, never ran the session
    assert any("tasks wait up to 0.3 s" in e.message for e in shown if isinstance(e, BatchNotice))
    (result,) = report.results
    assert result.outcome == "error"  # the engine's failure, not the task's ("failed")
    assert "the Docker engine did not come back within 0.3 s" in result.reason
    assert "rerun with --resume" in result.reason
    kept = json.loads((tmp_path / "out" / "t1" / "result.json").read_text())
    assert kept["outcome"] == "error"


# --- exit codes when a stop signal comes at an awkward moment (a real signal, a real process) --

_CLI = """
import atexit, os, signal, sys, time
import typer
from orchestrator.cli_common import errors, install_signal_handlers, run_to_exit

app = typer.Typer()

def cleanup_at_exit() -> None:  # like the pools' exit hook: removes containers
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while oi ends
    time.sleep(0.05)
    print("exit-time cleanup finished", file=sys.stderr)

@app.command()
def main(case: str) -> None:
    if case == "signal-outside-errors":  # e.g. still starting up: no errors() around it yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    elif case == "block-exit-130":  # oi exec passes on a block's own exit code
        raise typer.Exit(130)
    elif case.startswith("exit-without-teardown"):  # output, atexit, threads are not lost
        import threading
        atexit.register(lambda: print("atexit ran", file=sys.stderr))
        sys.stdout.write("buffered, no newline")
        if case.endswith("thread"):
            threading.Thread(target=lambda: (time.sleep(0.2), print(" thread done"))).start()
        raise typer.Exit(5)
    elif case == "ctrl-c-then-ctrl-c-while-ending":
        atexit.register(cleanup_at_exit)
        with errors():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

install_signal_handlers()
run_to_exit(app)
"""


def _cli(case: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, case],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_stop_signal_outside_every_error_handler_exits_3_not_typers_130() -> None:
    proc = _cli("signal-outside-errors")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == "oi: interrupted"


def test_a_blocks_own_exit_130_is_kept_when_no_signal_came() -> None:
    proc = _cli("block-exit-130")
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" not in proc.stderr


def test_a_second_ctrl_c_while_oi_ends_changes_nothing() -> None:
    proc = _cli("ctrl-c-then-ctrl-c-while-ending")
    assert proc.returncode == 3, proc.stderr  # not 130 nor a death by SIGINT (-2)
    assert proc.stderr.splitlines() == ["oi: interrupted", "exit-time cleanup finished"]


def test_oi_exits_without_teardown_but_loses_no_output_exit_hook_or_thread() -> None:
    """``run_to_exit`` skips Python's teardown (about 0.2 s): buffered output, atexit handlers
    and a thread that is not a daemon still finish, and the exit code is kept."""
    for case, thread in (
        ("exit-without-teardown", ""),
        ("exit-without-teardown+thread", " thread done\n"),
    ):
        proc = _cli(case)
        assert proc.returncode == 5, proc.stderr
        assert proc.stdout == "buffered, no newline" + thread
        assert proc.stderr == "atexit ran\n"
