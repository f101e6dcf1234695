"""Pure parts of the agent loop: loop guard, context trimming, answers, transcript history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.approval import parse_answer
from orchestrator.context import TRIMMED_OUTPUT, estimate_tokens
from orchestrator.errors import ConfigError, ContextOverflowError
from orchestrator.session import Session
from orchestrator.session_parts import LoopGuard
from orchestrator.settings import Settings
from orchestrator.transcript import (
    Transcript,
    find_session,
    list_sessions,
    read_records,
    rebuild_history,
    save_markdown,
)
from tests.fakes import FakeRunner, ScriptedModel


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("y\n", "run"),
        ("yes", "run"),
        ("Y", "run"),
        ("n", "decline"),
        ("no\n", "decline"),
        ("e", "edit"),
        ("a", "always"),
        ("q", "quit"),
        (None, "decline"),
        ("maybe", None),
        ("", None),
    ],
)
def test_parse_answer(answer: str | None, kind: str | None) -> None:
    assert parse_answer(answer) == kind


def test_loop_guard_trips_on_the_third_identical_failure() -> None:
    guard = LoopGuard()
    fail = ("sha", 1, False, False, "", "boom")
    assert not guard.observe(fail)
    assert not guard.observe(fail)
    assert guard.observe(fail)


def test_loop_guard_resets_on_success_or_a_different_failure() -> None:
    guard = LoopGuard()
    fail = ("sha", 1, False, False, "", "boom")
    other = ("sha2", 1, False, False, "", "boom")
    guard.observe(fail)
    guard.observe(fail)
    assert not guard.observe(None)
    assert not guard.observe(fail)
    assert not guard.observe(other)
    assert not guard.observe(fail)


def make_session(tmp_path: Path, history: list[dict[str, Any]] | None = None) -> Session:
    settings = Settings(workdir=tmp_path, max_model_len=1000, max_tokens=100)
    return Session(
        model=ScriptedModel(max_len=1000),
        runner=FakeRunner(workdir=tmp_path),
        settings=settings,
        history=history,
    )


def test_fit_context_trims_old_outputs_first_then_old_exchanges(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    session.messages.append({"role": "user", "content": "the task"})
    for i in range(4):
        session.messages.append({"role": "assistant", "content": f"```sh\necho {i}\n```"})
        session.messages.append({"role": "user", "content": "[oi] Block 1 (sh): " + "x" * 900})
    count = len(session.messages)
    before = estimate_tokens(session.messages, session._tools())
    notes = session._fit_context(budget=before - 500)
    assert any("removed the output" in n for n in notes)
    assert len(session.messages) == count  # outputs were enough: no exchange was dropped
    contents = [m["content"] for m in session.messages]
    assert contents[1].startswith("the task")  # the task is never trimmed
    assert contents[-1].startswith("[oi] Block 1")  # the newest result stays whole
    assert TRIMMED_OUTPUT in contents
    assert estimate_tokens(session.messages, session._tools()) <= before - 500
    session._fit_context(
        budget=estimate_tokens(session.messages[:2] + session.messages[-2:], session._tools()) + 20
    )
    assert len(session.messages) < count  # then whole old exchanges go
    assert session.messages[1]["content"] == "the task"


def test_fit_context_keeps_tool_calls_paired(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    session.use_tools = False
    session.messages.append({"role": "user", "content": "task"})
    for i in range(6):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "execute", "arguments": "{}" + "y" * 300},
        }
        session.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        session.messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "z" * 300})
    session._fit_context(budget=500)
    ids_called = {c["id"] for m in session.messages for c in m.get("tool_calls") or []}
    ids_answered = {m["tool_call_id"] for m in session.messages if m["role"] == "tool"}
    assert ids_called == ids_answered
    assert session.messages[1]["content"] == "task"


def test_fit_context_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    session.messages.append({"role": "user", "content": "t" * 5000})
    with pytest.raises(ContextOverflowError, match="does not fit"):
        session._fit_context(budget=500)


def test_undo_and_reset(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    session.messages += [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "[oi] Block 1 (sh): exit code 0"},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "a2"},
    ]
    assert session.undo()
    assert [m["content"] for m in session.messages[1:]] == [
        "first",
        "a1",
        "[oi] Block 1 (sh): exit code 0",
        "done",
    ]
    assert session.undo()
    assert len(session.messages) == 1
    assert not session.undo()
    session.messages.append({"role": "user", "content": "x"})
    session.reset()
    assert [m["role"] for m in session.messages] == ["system"]


def test_repair_history_answers_dangling_tool_calls(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    call = {"id": "c1", "type": "function", "function": {"name": "execute", "arguments": "{}"}}
    session.messages += [
        {"role": "user", "content": "t"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    session._repair_history()
    assert session.messages[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "not run: interrupted by the user",
    }


def test_transcript_roundtrip_with_undo(tmp_path: Path) -> None:
    transcript = Transcript.create(tmp_path / "sessions", "s1")
    transcript.append("session", model="m")
    for content in ("sys", "u1", "a1", "u2"):
        transcript.append("message", message={"role": "user", "content": content})
    transcript.append("history_truncate", length=3)
    transcript.close()
    path = find_session(tmp_path / "sessions", "s")
    records = list(read_records(path))
    assert [m["content"] for m in rebuild_history(records)] == ["sys", "u1", "a1"]
    assert path.stat().st_mode & 0o777 == 0o600
    (info,) = list_sessions(tmp_path / "sessions")
    assert info.session_id == "s1" and info.task == "sys"


def test_transcript_refuses_a_planted_symlink(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (sessions / "s2.jsonl").symlink_to(victim)
    with pytest.raises(ConfigError):
        Transcript.create(sessions, "s2")
    assert victim.read_text() == "keep me"


def test_save_markdown_refuses_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "chat.md"
    link.symlink_to(victim)
    with pytest.raises(ConfigError):
        save_markdown([{"role": "user", "content": "hi"}], link)
    assert victim.read_text() == "keep me"
    out = save_markdown([{"role": "user", "content": "hi"}], tmp_path / "real.md")
    assert "## user" in out.read_text()


@pytest.mark.parametrize("bad", ["../x", "a/b", ""])
def test_session_ids_are_checked(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        Transcript.create(tmp_path, bad)
