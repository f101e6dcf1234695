"""What runs is exactly what was hashed, and what is shown cannot act on the screen.

A model's code carrying terminal escapes (erase line, an OSC 52 clipboard write) and a bidi
override goes through the real ``Session`` loop (scripted model, fake runner, a real record):
the sha256 on the approval event, on the decision (live and recorded) and of the code the
runner received are all the sha256 of the raw code bytes, while the approval screen shows
every hidden character as an escape, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.approval import Approval
from orchestrator.drive import drive
from orchestrator.events import CodeProposed, Decision, Event
from orchestrator.render import approval_panel
from orchestrator.safe_text import visible_code
from orchestrator.session import Session
from orchestrator.settings import Settings, ToolMode
from orchestrator.transcript import Transcript, read_records
from tests.fakes import FakeRunner, Say, ScriptedModel

# Erase the line, write "hello" to the clipboard (OSC 52, BEL-terminated), reverse the rest.
HOSTILE_CODE = (
    'print("Hello, world!")  # \x1b[2K\x1b]52;c;aGVsbG8=\x07\u202e\n'
    'import os; os.system("echo pwned")'
)
RAW = ("\x1b", "\x07", "\u202e")


def _tool_call(code: str) -> Say:
    return Say(calls=(("execute", json.dumps({"language": "python", "code": code})),))


def _fenced(code: str) -> Say:
    return Say(f"Here it is.\n\n```python\n{code}\n```\n")


@pytest.mark.parametrize(
    ("reply", "tool_mode"),
    [(_tool_call, "tools"), (_fenced, "markdown")],
    ids=["tool-call", "fenced"],
)
def test_the_hash_shown_recorded_and_run_is_that_of_the_raw_code(
    tmp_path: Path, reply: Callable[[str], Say], tool_mode: ToolMode
) -> None:
    expected = hashlib.sha256(HOSTILE_CODE.encode()).hexdigest()
    model = ScriptedModel(reply(HOSTILE_CODE), "Done.")
    runner = FakeRunner(workdir=tmp_path)
    transcript = Transcript.create(tmp_path / "sessions", "s1")
    session = Session(
        model=model,
        runner=runner,
        settings=Settings(workdir=tmp_path, tool_mode=tool_mode),
        transcript=transcript,
    )
    events: list[Event] = []
    shown: list[CodeProposed] = []

    def approve(proposal: CodeProposed) -> Approval:
        shown.append(proposal)
        return Approval("run", sha256=proposal.sha256)

    assert drive(session.send("go"), render=events.append, approve=approve) == "finished"
    transcript.close()

    (proposal,) = shown
    assert proposal.code == HOSTILE_CODE, "the proposal is not the model's raw code"
    assert proposal.sha256 == expected
    (decision,) = [e for e in events if isinstance(e, Decision)]
    assert (decision.decision, decision.sha256) == ("run", expected)
    (ran,) = runner.runs
    assert hashlib.sha256(ran[1].encode()).hexdigest() == expected, "ran other code"
    records = list(read_records(transcript.path))
    (recorded_decision,) = [r for r in records if r.get("event") == "decision"]
    (recorded_code,) = [r for r in records if r.get("event") == "code_proposed"]
    assert recorded_decision["sha256"] == expected
    assert recorded_code["sha256"] == expected and recorded_code["code"] == HOSTILE_CODE
    (result,) = [r for r in records if r.get("event") == "result"]
    assert result["sha256"] == expected

    # What the person sees: no raw control reaches the screen; each kind is named.
    text, warnings = visible_code(proposal.code)
    assert not [c for c in RAW if c in text], f"raw controls in the shown code: {text!r}"
    assert "\\x1b[2K" in text and "\\x07" in text and "\\u202e" in text
    assert any("U+202E" in w for w in warnings), warnings
    screen = io.StringIO()
    Console(file=screen, width=100, color_system=None).print(approval_panel(proposal))
    painted = screen.getvalue()
    assert not [c for c in RAW if c in painted], f"raw controls on the approval screen: {painted!r}"
    assert expected[:16] in painted  # the shown hash is the hash of what runs
