"""``Session.send`` driven by a scripted model and a fake runner (no Docker, no HTTP): every
behaviour of the loop, including the ones a person triggers at the approval question."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.approval import Approval
from orchestrator.drive import drive
from orchestrator.errors import ConfigError, ContextOverflowError, ModelError, OiError
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    Event,
    ModelText,
    Notice,
    SessionEnded,
)
from orchestrator.languages import Language
from orchestrator.llm.client import ToolsUnsupportedError
from orchestrator.session import Session, SessionEvents
from orchestrator.session_parts import code_sha256
from orchestrator.settings import Settings
from orchestrator.transcript import Transcript, read_records, rebuild_history
from tests.fakes import FakeRunner, Say, ScriptedModel


def fence(code: str, language: str = "python") -> str:
    return f"Let me run this.\n\n```{language}\n{code}\n```\n"


def call(code: str, language: str = "python") -> Say:
    return Say(calls=(("execute", json.dumps({"language": language, "code": code})),))


def make(
    *replies: Say | str, tmp_path: Path, runner: FakeRunner | None = None, **settings: Any
) -> tuple[Session, ScriptedModel, FakeRunner]:
    model = ScriptedModel(*replies)
    runner = runner or FakeRunner(workdir=tmp_path)
    settings.setdefault("tool_mode", "markdown")
    session = Session(model=model, runner=runner, settings=Settings(workdir=tmp_path, **settings))
    return session, model, runner


class Script:
    """Answers approval questions from a list, and records every event."""

    def __init__(self, *answers: Approval | None) -> None:
        self.answers = list(answers)
        self.events: list[Event] = []
        self.asked: list[CodeProposed] = []

    def run(self, events: SessionEvents) -> str:
        def approve(proposal: CodeProposed) -> Any:
            self.asked.append(proposal)
            return self.answers.pop(0)

        return drive(events, render=self.events.append, approve=approve)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def test_a_reply_without_code_finishes(tmp_path: Path) -> None:
    session, model, runner = make("All done, nothing to run.", tmp_path=tmp_path)
    script = Script()
    assert script.run(session.send("hi")) == "finished"
    assert "".join(e.text for e in script.of(ModelText)) == "All done, nothing to run."
    (end,) = script.of(SessionEnded)
    assert end.status == "finished" and end.turns == 1
    assert runner.runs == [] and runner.warmed == [Language.PYTHON]
    assert model.requests[0]["messages"][-1] == {"role": "user", "content": "hi"}


def test_an_approved_block_runs_and_its_result_goes_back_to_the_model(tmp_path: Path) -> None:
    session, model, runner = make(fence("print(1)"), "It printed 1.", tmp_path=tmp_path)
    script = Script(Approval("run"))
    assert script.run(session.send("print one")) == "finished"
    (asked,) = script.asked
    assert asked.awaits_approval and asked.code == "print(1)"
    assert asked.sha256 == code_sha256("print(1)")
    assert runner.runs == [(Language.PYTHON, "print(1)")]
    assert [d.decision for d in script.of(Decision)] == ["run"]
    assert "".join(e.text for e in script.of(BlockOutput)) == "ran python: print(1)\n"
    (result,) = script.of(BlockResult)
    assert result.exit_code == 0 and "exit code 0" in result.for_model
    told = model.requests[1]["messages"][-1]["content"]
    assert told.startswith("[oi] Block 1 (python): exit code 0") and "ran python" in told


def test_a_declined_block_does_not_run_and_the_model_is_told(tmp_path: Path) -> None:
    session, model, runner = make(fence("rm -rf /", "sh"), "OK, I won't.", tmp_path=tmp_path)
    script = Script(Approval("decline"))
    assert script.run(session.send("clean up")) == "finished"
    assert runner.runs == []
    assert "declined by the user" in model.requests[1]["messages"][-1]["content"]


def test_no_answer_is_a_decline(tmp_path: Path) -> None:
    session, _model, runner = make(fence("print(1)"), "ok", tmp_path=tmp_path)
    script = Script(None)
    script.run(session.send("go"))
    assert runner.runs == []
    (decision,) = script.of(Decision)
    assert decision.decision == "declined" and decision.reason == "no answer"


def test_always_runs_the_next_blocks_without_asking(tmp_path: Path) -> None:
    session, _, runner = make(fence("a = 1"), fence("b = 2"), "done", tmp_path=tmp_path)
    script = Script(Approval("always"))
    assert script.run(session.send("go")) == "finished"
    assert [code for _, code in runner.runs] == ["a = 1", "b = 2"]
    assert len(script.asked) == 1 and session.auto_run
    assert [(d.decision, d.by) for d in script.of(Decision)] == [("run", "user"), ("run", "auto")]


def test_quit_stops_and_the_other_blocks_of_the_reply_are_not_run(tmp_path: Path) -> None:
    two = fence("a = 1") + "\nand\n" + fence("echo b", "sh")
    session, _model, runner = make(two, tmp_path=tmp_path)
    script = Script(Approval("quit"))
    assert script.run(session.send("go")) == "quit"
    assert runner.runs == []
    assert session.messages[-1]["content"].count("not run: the user stopped the session") == 2


def test_an_edit_is_shown_again_and_what_runs_is_the_edited_code(tmp_path: Path) -> None:
    session, _, runner = make(fence("print('a')"), "ok", tmp_path=tmp_path)
    script = Script(Approval("edit", "print('b')"), Approval("run"))
    script.run(session.send("go"))
    assert [p.code for p in script.asked] == ["print('a')", "print('b')"]
    decisions = script.of(Decision)
    assert [d.decision for d in decisions] == ["edited", "run"]
    assert decisions[1].sha256 == code_sha256("print('b')")
    assert runner.runs == [(Language.PYTHON, "print('b')")]


def test_an_approval_for_other_code_than_shown_is_refused(tmp_path: Path) -> None:
    """A client answering from afar names the sha256 of what it showed."""
    session, _, runner = make(fence("print('a')"), "ok", tmp_path=tmp_path)
    script = Script(Approval("run", sha256=code_sha256("print('evil')")))
    script.run(session.send("go"))
    assert runner.runs == []
    (decision,) = script.of(Decision)
    assert decision.decision == "declined" and "different sha256" in decision.reason


def test_auto_run_asks_nothing(tmp_path: Path) -> None:
    session, _, runner = make(fence("x = 1"), "ok", tmp_path=tmp_path, auto_run=True)
    script = Script()
    assert script.run(session.send("go")) == "finished"
    assert script.asked == [] and len(runner.runs) == 1
    (proposed,) = script.of(CodeProposed)
    assert not proposed.awaits_approval
    assert [(d.decision, d.by) for d in script.of(Decision)] == [("run", "auto")]


def test_max_turns_stops_a_model_that_never_finishes(tmp_path: Path) -> None:
    replies = [fence(f"print({i})") for i in range(5)]
    session, _, runner = make(*replies, tmp_path=tmp_path, auto_run=True, max_turns=2)
    script = Script()
    assert script.run(session.send("go")) == "max_turns"
    assert len(runner.runs) == 2
    assert "--max-turns 2" in script.of(SessionEnded)[0].reason


def test_the_loop_guard_stops_the_same_failure_three_times(tmp_path: Path) -> None:
    runner = FakeRunner(behaviour=lambda lang, code: (1, "", "Traceback: boom\n"))
    replies = [fence("import nope")] * 5
    session, _, _ = make(*replies, tmp_path=tmp_path, runner=runner, auto_run=True)
    script = Script()
    assert script.run(session.send("go")) == "loop_guard"
    assert len(runner.runs) == 3


def test_a_context_overflow_is_retried_once_after_trimming(tmp_path: Path) -> None:
    overflow = Say(error=ContextOverflowError("too long"))
    session, model, _ = make(overflow, "fine now", tmp_path=tmp_path)
    for i in range(6):  # an earlier, long conversation that can be trimmed
        session.messages.append({"role": "user", "content": f"task {i} " + "x" * 3000})
        session.messages.append({"role": "assistant", "content": "y" * 3000})
    script = Script()
    assert script.run(session.send("go")) == "finished"
    assert len(model.requests) == 2
    assert any("too long: trimming and retrying" in n.message for n in script.of(Notice))
    twice, _, _ = make(overflow, overflow, tmp_path=tmp_path)
    with pytest.raises(ContextOverflowError):
        Script().run(twice.send("go"))


def test_tools_refused_falls_back_to_markdown_in_auto_mode(tmp_path: Path) -> None:
    refused = Say(error=ToolsUnsupportedError("no tools"))
    session, model, _ = make(refused, "plain answer", tmp_path=tmp_path, tool_mode="auto")
    script = Script()
    assert script.run(session.send("go")) == "finished"
    assert model.requests[0]["tools"] and model.requests[1]["tools"] is None
    assert "markdown code blocks" in script.of(Notice)[0].message
    assert "fenced code block" in model.requests[1]["messages"][0]["content"]
    strict, _, _ = make(refused, tmp_path=tmp_path, tool_mode="tools")
    with pytest.raises(ConfigError, match="does not accept tool calls"):
        Script().run(strict.send("go"))


def test_tool_calls_run_and_bad_ones_are_explained_to_the_model(tmp_path: Path) -> None:
    bad = Say(calls=(("execute", '{"language": "python", "code": 1'), ("frobnicate", "{}")))
    session, model, runner = make(
        call("print(2)"), bad, "done", tmp_path=tmp_path, tool_mode="tools", auto_run=True
    )
    assert Script().run(session.send("go")) == "finished"
    assert runner.runs == [(Language.PYTHON, "print(2)")]
    answers = [m for m in model.requests[2]["messages"] if m["role"] == "tool"]
    assert answers[0]["content"].startswith("exit code 0")
    assert "not valid JSON" in answers[1]["content"] or "not run" in answers[1]["content"]
    assert "there is no tool 'frobnicate'" in answers[2]["content"]


def test_a_malformed_tool_call_does_not_poison_the_history(tmp_path: Path) -> None:
    """vLLM parses every earlier call's arguments as JSON and refuses the whole request when
    one does not parse: a single bad reply must not end every later request of the session,
    nor those of a resumed one."""
    bad = Say(calls=(("execute", "{not json"), ("execute", '["a list"]')))
    record = tmp_path / "s.jsonl"
    session, model, _ = make(
        bad, "sorry", "fine", tmp_path=tmp_path, tool_mode="tools", auto_run=True
    )
    session.transcript = Transcript.open(record)
    assert Script().run(session.send("go")) == "finished"
    assert Script().run(session.send("again")) == "finished"
    for request in model.requests[1:]:
        for message in request["messages"]:
            for tool_call in message.get("tool_calls") or []:
                assert isinstance(json.loads(tool_call["function"]["arguments"]), dict)
    sent = [c for m in model.requests[1]["messages"] for c in m.get("tool_calls") or []]
    assert [json.loads(c["function"]["arguments"]) for c in sent] == [
        {"unparsed": "{not json"},
        {"unparsed": '["a list"]'},
    ]
    # a record written before the fix, with the raw arguments, is mended when resumed
    raw = record.read_text().replace('{\\"unparsed\\": \\"{not json\\"}', "{not json")
    assert "{not json" in raw and raw != record.read_text()
    record.write_text(raw)
    history = rebuild_history(read_records(record))
    kept = [c for m in history for c in m.get("tool_calls") or []]
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in kept)


def test_ctrl_c_while_a_block_runs_kills_it(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(language: Language, code: str) -> tuple[int, str, str]:
        return 0, "", ""

    runner = FakeRunner(behaviour=slow, block=release)
    session, _, _ = make(fence("while True: pass"), tmp_path=tmp_path, runner=runner, auto_run=True)
    events = session.send("go")
    seen: list[Event] = []
    while not isinstance(event := next(events), BlockOutput):
        seen.append(event)
    # The block runs on its worker thread and printed; Ctrl-C arrives while it runs.
    with pytest.raises(StopIteration) as stopped:
        event = events.throw(KeyboardInterrupt())
        while True:
            seen.append(event)
            event = next(events)
    assert stopped.value.value == "interrupted"
    assert runner.cancelled >= 1
    results = [e for e in seen if isinstance(e, BlockResult)]
    assert results and results[0].interrupted


def test_ctrl_c_at_the_question_runs_nothing(tmp_path: Path) -> None:
    session, _, runner = make(fence("print(1)"), tmp_path=tmp_path)
    events = session.send("go")
    while not (isinstance(event := next(events), CodeProposed) and event.awaits_approval):
        pass
    rest: list[Event] = []
    with pytest.raises(StopIteration) as stopped:
        rest.append(events.throw(KeyboardInterrupt()))
        while True:
            rest.append(next(events))
    assert stopped.value.value == "interrupted" and runner.runs == []
    assert [(d.decision, d.reason) for d in rest if isinstance(d, Decision)] == [
        ("quit", "interrupted")
    ]


def test_every_way_a_run_ends_is_recorded(tmp_path: Path) -> None:
    transcript = Transcript.create(tmp_path / "s", "t1")
    model = ScriptedModel(Say(error=ModelError("the server at X broke")))
    session = Session(
        model=model,
        runner=FakeRunner(workdir=tmp_path),
        settings=Settings(workdir=tmp_path),
        transcript=transcript,
    )
    with pytest.raises(ModelError):
        Script().run(session.send("go"))
    transcript.close()
    ends = [r for r in read_records(transcript.path) if r.get("event") == "end"]
    assert [(e["status"], e["reason"]) for e in ends] == [("error", "the server at X broke")]


class _FailingTranscript(Transcript):
    """A record that cannot take the block's result (a full disk)."""

    def event(self, event: Event) -> None:
        if isinstance(event, BlockResult):
            raise OiError("no space left for the session record t2.jsonl")
        super().event(event)


def test_a_result_that_cannot_be_recorded_is_still_shown(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    created = Transcript.create(tmp_path / "s", "t2")
    transcript = _FailingTranscript(created.path, created._fd)
    session = Session(
        model=ScriptedModel(fence("print(1)"), "never asked"),
        runner=FakeRunner(workdir=tmp_path),
        settings=Settings(workdir=tmp_path, auto_run=True, tool_mode="markdown"),
        transcript=transcript,
    )
    script = Script()
    with pytest.raises(OiError, match="no space left"):
        script.run(session.send("go"))
    assert len(script.of(BlockResult)) == 1  # shown before the run stopped
    ends = [r for r in read_records(created.path) if r.get("event") == "end"]
    assert ends and ends[-1]["status"] == "error"


def test_drive_throws_a_stop_in_once(tmp_path: Path) -> None:
    release = threading.Event()
    runner = FakeRunner(behaviour=lambda lang, code: (0, "partial\n", ""), block=release)
    session, _, _ = make(fence("sleep"), "never", tmp_path=tmp_path, runner=runner, auto_run=True)
    seen: list[Event] = []

    def stop() -> bool:  # a batch budget ran out while the block runs
        return any(isinstance(e, BlockOutput) for e in seen)

    assert drive(session.send("go"), render=seen.append, stop=stop) == "interrupted"
    ends = [e for e in seen if isinstance(e, SessionEnded)]
    assert len(ends) == 1 and ends[0].status == "interrupted"  # thrown once, ended once
    assert [r.interrupted for r in seen if isinstance(r, BlockResult)] == [True]
    assert runner.cancelled >= 1


def test_the_system_prompt_states_the_sandbox(tmp_path: Path) -> None:
    session, model, _ = make("ok", tmp_path=tmp_path)
    Script().run(session.send("go"))
    system = model.requests[0]["messages"][0]["content"]
    assert "60 s, 1 GiB memory" in system and str(tmp_path) in system  # the runner's words


class _CutOnce(ScriptedModel):
    """A model whose first reply is cut mid-stream and asked for again (llm.client's
    ``StreamRestarted`` contract)."""

    def stream_chat(self, messages: Any, tools: Any = None) -> Any:
        from orchestrator.llm.client import StreamRestarted, TextDelta

        if len(self.requests) == 0:
            yield TextDelta("Here is the pl")
            yield StreamRestarted("Here is the pl", "the connection was reset")
        yield from super().stream_chat(messages, tools)


def test_a_cut_reply_restarts_and_only_the_second_reply_counts(tmp_path: Path) -> None:
    from orchestrator.events import ModelReply, ModelRestarted

    model = _CutOnce("Here is the plan, all done.")
    session = Session(
        model=model, runner=FakeRunner(workdir=tmp_path), settings=Settings(workdir=tmp_path)
    )
    script = Script()
    assert script.run(session.send("go")) == "finished"
    (restart,) = script.of(ModelRestarted)
    assert restart.partial_text == "Here is the pl" and "reset" in restart.reason
    (reply,) = script.of(ModelReply)
    assert reply.text == "Here is the plan, all done."
    assert session.messages[-1] == {"role": "assistant", "content": "Here is the plan, all done."}


def test_a_tool_call_cut_by_the_token_limit_is_not_repaired(tmp_path: Path) -> None:
    cut = Say(
        calls=(("execute", '{"language": "python", "code": "print(1)"'),),
        finish_reason="length",
    )
    session, _, runner = make(cut, "ok", tmp_path=tmp_path, tool_mode="tools", auto_run=True)
    Script().run(session.send("go"))
    assert runner.runs == []  # a truncated program never runs
    brace, _, brace_runner = make(
        Say(calls=(("execute", '{"language": "python", "code": "print(1)"'),)),
        "ok",
        tmp_path=tmp_path,
        tool_mode="tools",
        auto_run=True,
    )
    Script().run(brace.send("go"))
    assert brace_runner.runs == [(Language.PYTHON, "print(1)")]


class _Outputs:
    def __init__(self) -> None:
        self.saved: dict[str, bytes] = {}

    def save(self, name: str, data: bytes) -> str:
        self.saved[name] = data
        return f"/workspace/.oi/output/{name}"


@pytest.mark.parametrize("max_len", [4096, 2048])
def test_large_outputs_fit_a_small_context_and_are_kept_whole(tmp_path: Path, max_len: int) -> None:
    """Three blocks each printing 200 KB at a 4k (and 2k) context: every request fits, the
    run finishes, and the model is told where the whole output is."""
    from orchestrator.context import estimate_tokens

    big = "".join(f"row {i:06d} " + "x" * 40 + "\n" for i in range(4000))  # ~200 KB

    def noisy(language: Language, code: str) -> tuple[int, str, str]:
        return 0, big, ""

    replies = [fence(f"print_rows({i})") for i in range(3)] + ["All three printed."]
    model = ScriptedModel(*replies, max_len=max_len)
    outputs = _Outputs()
    session = Session(
        model=model,
        runner=FakeRunner(behaviour=noisy, workdir=tmp_path),
        settings=Settings(workdir=tmp_path, auto_run=True, tool_mode="markdown"),
        outputs=outputs,
    )
    assert Script().run(session.send("print the rows three times")) == "finished"
    budget = session._budget()
    for request in model.requests:
        assert estimate_tokens(request["messages"], request["tools"]) <= budget
    last = model.requests[-1]["messages"][-1]["content"]
    assert "characters cut" in last and "/workspace/.oi/output/" in last
    assert "row 000000" in last and "row 003999" in last  # head and tail of the newest
    assert len(outputs.saved) == 3 and all(len(v) == len(big) for v in outputs.saved.values())
