"""The first hour of a new user (issue 17), the parts that need no Docker: chat after a model
error, the spinner, hints that name the user's own flag, help text, the code shown once, the
edit key, chat commands and the end line. The real ``oi`` script and Docker are exercised in
``tests/integration/test_first_hour.py``."""

from __future__ import annotations

import io
import re
import threading
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from orchestrator.approval import Approval
from orchestrator.chat import chat_loop
from orchestrator.cli import _drive_terminal, app
from orchestrator.cli_options import SETTING_FLAGS
from orchestrator.drive import drive
from orchestrator.errors import ModelError, ModelNotFoundError, ModelUnavailableError
from orchestrator.events import (
    CodeProposed,
    Event,
    ModelReply,
    ModelText,
    ModelWaiting,
    SessionEnded,
)
from orchestrator.llm.client import ModelClient
from orchestrator.render import (
    ANSWER_HELP,
    HumanRenderer,
    InteractiveApprover,
    edit_in_editor,
    find_editor,
    render_transcript,
)
from orchestrator.sandbox.config import SandboxDescription
from orchestrator.session import Session
from orchestrator.settings import Settings, shown_value
from orchestrator.transcript import Transcript
from tests.fake_vllm import ErrorReply, FakeVllm, Reply
from tests.fakes import FakeRunner, Say, ScriptedModel, description

# --- helpers ------------------------------------------------------------------------------------


def fence(code: str, language: str = "python") -> str:
    return f"Let me run this.\n\n```{language}\n{code}\n```\n"


def make_session(
    *replies: Say | str, tmp_path: Path, transcript: Transcript | None = None
) -> tuple[Session, ScriptedModel]:
    model = ScriptedModel(*replies)
    settings = Settings(workdir=tmp_path, tool_mode="markdown")
    session = Session(
        model=model, runner=FakeRunner(workdir=tmp_path), settings=settings, transcript=transcript
    )
    return session, model


def lines_then_eof(*lines: str) -> Callable[[str], str]:
    """A ``read`` for ``chat_loop``: these lines, then Ctrl-D."""
    pending = list(lines)

    def read(_prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=80, force_terminal=True, color_system=None, highlight=False
    )
    return console, buffer


def box(workdir: str = "/home/dev/project") -> SandboxDescription:
    return description(workdir)


def spinners_running() -> list[threading.Thread]:
    """rich's Live refresh threads alive now: a spinner still drawing."""
    return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]


# --- 4: a model error in chat ----------------------------------------------------------------


def test_a_model_error_in_chat_forgets_the_message_so_a_retry_sends_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session, model = make_session(
        "Hello.",
        Say(error=ModelUnavailableError("cannot reach the model server at http://x/v1")),
        "Here now.",
        tmp_path=tmp_path,
    )

    def send(text: str) -> object:
        return drive(session.send(text), render=lambda event: None)

    lengths: list[int] = []
    lines = lines_then_eof("hi", "are you there?", "are you there?")

    def read(prompt: str) -> str:
        lengths.append(len(session.messages))
        return lines(prompt)

    chat_loop(session, send, read)
    # before each read: nothing, after "hi" (system, user, reply), after the failure (the same)
    assert lengths[1] == 3 and lengths[2] == 3, lengths
    retry = [m["content"] for m in model.requests[2]["messages"] if m["role"] == "user"]
    assert retry == ["hi", "are you there?"]  # once, not twice
    err = capsys.readouterr().err
    assert "oi: error: cannot reach the model server" in err
    assert "your message was not kept: send it again" in err


def test_no_spinner_is_left_running_after_a_model_error() -> None:
    """``oi run`` and ``oi chat`` drive a turn through ``_drive_terminal``: an error while the
    spinner turns stops it before the error line (and the next prompt) is printed."""
    out, _ = terminal()
    err, _ = terminal()
    renderer = HumanRenderer(markdown=False, out=out, err=err)
    seen: list[threading.Thread] = []

    def render(event: Event) -> None:
        renderer.render(event)
        seen.extend(spinners_running())

    def turn() -> Iterator[Event]:
        yield ModelWaiting(1)
        raise ModelError("the model server at http://x/v1 answered HTTP 500: boom")

    with pytest.raises(ModelError):
        _drive_terminal(turn(), renderer, render)  # type: ignore[arg-type]
    assert len(seen) == 1  # the spinner did turn while waiting
    seen[0].join(timeout=2)  # a stopped spinner's thread ends at once; a running one never
    assert not seen[0].is_alive()


# --- 7, 8: settings a person mistypes ----------------------------------------------------------


@pytest.fixture
def no_user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user config, no project file, no policy: only the flags given."""
    monkeypatch.setenv("OI_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_memory_without_a_unit_is_bad_usage_with_the_units(no_user_files: Path) -> None:
    result = CliRunner().invoke(app, ["exec", "sh", "--memory", "10"], input="true\n")
    assert result.exit_code == 2, result.output
    assert "--memory: 10 bytes is below Docker's minimum of 6 MiB" in result.output
    assert "e.g. 512m or 1g" in result.output


def test_an_api_base_without_a_scheme_is_refused_naming_the_full_url(no_user_files: Path) -> None:
    result = CliRunner().invoke(app, ["run", "x", "--api-base", "localhost:8000"])
    assert result.exit_code == 2, result.output
    assert "--api-base: 'localhost:8000' is not an http(s) URL" in result.output
    assert "http://localhost:8000" in result.output.split("not an http(s) URL", 1)[1]
    assert "make up" not in result.output


def client_of(fake: FakeVllm, base_url: str | None = None, model: str | None = None) -> Any:
    sdk = openai.OpenAI(base_url=base_url or fake.base_url, api_key="k", max_retries=0, timeout=5.0)
    return ModelClient(sdk, model=model or fake.model, retry_attempts=1, retry_backoff=0.005)


def first_error(client: ModelClient) -> ModelError:
    with pytest.raises(ModelError) as caught:
        list(client.stream_chat([{"role": "user", "content": "hi"}]))
    return caught.value


def test_hints_name_the_flag_and_the_variable(fake_vllm: FakeVllm) -> None:
    unknown = first_error(client_of(fake_vllm, model="nope"))
    assert isinstance(unknown, ModelNotFoundError)
    assert f"it serves: {fake_vllm.model}. Choose one with --model / OI_MODEL" in str(unknown)

    root = fake_vllm.base_url.removesuffix("/v1")  # /v1 forgotten: a 404 for the path
    wrong_path = first_error(client_of(fake_vllm, base_url=root))
    assert "check --api-base / OI_API_BASE, which usually ends in /v1" in str(wrong_path)
    assert "make up" not in str(wrong_path)  # the server runs: starting it is not the fix

    fake_vllm.script(Reply(error=ErrorReply(401, "Unauthorized", "Unauthorized")))
    refused = first_error(client_of(fake_vllm))
    assert "refused the API key (HTTP 401" in str(refused)
    assert "--api-key / OI_API_KEY" in str(refused)


# --- 9: help ------------------------------------------------------------------------------------


def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of ``oi`` that does something (groups only list their commands)."""
    command = command or typer.main.get_command(app)
    children = getattr(command, "commands", None)
    if not children:
        yield path
        return
    for name, child in children.items():
        yield from commands(child, (*path, name))


def help_of(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_help_walk_finds_every_command() -> None:
    paths = set(commands())
    assert {("run",), ("chat",), ("exec",), ("batch",), ("sessions", "list")} <= paths
    assert len(paths) >= 19  # every command of cli.py, cli_batch, cli_doctor, cli_serve


@pytest.mark.parametrize("path", list(commands()), ids=" ".join)
def test_every_command_has_a_help_with_an_example_at_80_columns(path: tuple[str, ...]) -> None:
    text = help_of(path)
    name = " ".join(path)
    assert max(len(line) for line in text.splitlines()) <= 80, name
    assert re.search(rf"^\s+(Examples?:)?\s*oi {re.escape(name)}\b", text, re.M), (
        f"`oi {name} --help` shows no example:\n{text}"
    )
    # A flag shows no type (``--auto-run <bool>`` reads as if it took a value), and no
    # option shows a Python type name.
    assert "<bool>" not in text, f"`oi {name} --help` shows a <bool> type:\n{text}"
    assert "<list[" not in text, f"`oi {name} --help` shows a Python type:\n{text}"
    if path in (("run",), ("chat",), ("exec",)):  # the everyday ones: every value named
        assert not re.search(r"<\w+>", text), f"`oi {name} --help`:\n{text}"
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


def test_run_help_shows_the_defaults() -> None:
    flat = re.sub(r"[\s│]+", " ", help_of(("run",)))
    for flag, default in (
        ("--network", "none"),
        ("--tool-mode", "auto"),
        ("--temperature", "0.7"),
        ("--max-model-len", "32768"),
    ):
        assert re.search(rf"{flag} .*?\(default: {re.escape(default)}\)", flat), flag


def test_the_defaults_in_help_are_the_settings_defaults() -> None:
    """Help texts are typed by hand (the settings module is too heavy for `oi --help`): each
    "(default: X)" must be what Settings really defaults to."""
    checked = []
    for name, spec in SETTING_FLAGS.items():
        option = typing.get_args(spec.annotation)[1]
        shown = re.search(r"\(default: ([^)]*)\)", option.help or "")
        field = Settings.model_fields[spec.setting]
        if shown is None or field.default_factory is not None or field.default is None:
            continue  # the workdir (".") and the CA bundle ("the host's") are described
        value = shown_value(spec.setting, field.default)
        text = f"{value:g}" if isinstance(value, float) else str(value)
        assert shown.group(1) == text, f"--{name}: help says {shown.group(1)!r}, is {text!r}"
        checked.append(name)
    assert {"network", "tool_mode", "temperature", "max_model_len", "memory"} <= set(checked)


# --- 11: the code once ----------------------------------------------------------------------


@pytest.mark.parametrize("markdown", [False, True])
def test_a_proposed_block_is_shown_once_on_a_terminal(markdown: bool) -> None:
    code = "print(sum(range(41)) + 1)"
    reply = fence(code)
    out, out_buffer = terminal()
    err, err_buffer = terminal()
    renderer = HumanRenderer(markdown=markdown, out=out, err=err)
    for event in (
        ModelText(reply[:20]),
        ModelText(reply[20:]),
        ModelReply(reply, "stop", 0, 0.1),
        CodeProposed(1, "python", code + "\n", "ab" * 32, box(), "markdown"),
    ):
        renderer.render(event)
    renderer.interrupt()
    prose, panel = out_buffer.getvalue(), err_buffer.getvalue()
    assert "Let me run this." in prose
    assert "(python code: shown below)" in prose
    assert code not in prose and "```" not in prose
    assert panel.count(code) == 1


# --- 12: the edit key ------------------------------------------------------------------------


def test_an_editor_that_appends_a_line_gives_two_lines(tmp_path: Path) -> None:
    editor = tmp_path / "append-editor"
    editor.write_text("#!/bin/sh\nprintf 'print(2)\\n' >> \"$1\"\n")
    editor.chmod(0o755)
    assert edit_in_editor("print(1)", "python", str(editor)) == "print(1)\nprint(2)\n"


def test_an_editor_that_fails_or_empties_the_block_is_named_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptier = tmp_path / "emptier"
    emptier.write_text('#!/bin/sh\n: > "$1"\n')
    emptier.chmod(0o755)
    proposal = CodeProposed(1, "python", "print(1)\n", "ab" * 32, box(), "markdown", True)
    for editor, words in (
        ("/bin/false", "the editor '/bin/false' exited with code 1"),
        ("code-not-installed --wait", "the editor 'code-not-installed --wait' could not start"),
        (str(emptier), "the edited block is empty; block unchanged"),
    ):
        monkeypatch.setenv("EDITOR", editor)
        monkeypatch.delenv("VISUAL", raising=False)
        console, buffer = terminal()
        approver = InteractiveApprover(console, io.StringIO("e\nn\n"))
        assert approver.decide(proposal).kind == "decline"  # nothing edited ran
        assert words in buffer.getvalue(), buffer.getvalue()


def test_with_no_editor_anywhere_e_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.setenv("PATH", "")
    assert find_editor() is None  # not a silent fall into vi
    console, buffer = terminal()
    approver = InteractiveApprover(console, io.StringIO("e\nn\n"))
    proposal = CodeProposed(1, "python", "print(1)\n", "ab" * 32, box(), "markdown", True)
    assert approver.decide(proposal).kind == "decline"
    assert "no editor: set $VISUAL or $EDITOR (e.g. export EDITOR=nano)" in buffer.getvalue()


def test_question_mark_explains_every_key_and_always_says_how_long() -> None:
    console, buffer = terminal()
    approver = InteractiveApprover(console, io.StringIO("?\na\n"))
    proposal = CodeProposed(1, "python", "print(1)\n", "ab" * 32, box(), "markdown", True)
    assert approver.decide(proposal).kind == "always"
    shown = " ".join(buffer.getvalue().split())  # as one line: the console wraps at 80
    for line in ANSWER_HELP.splitlines():
        assert " ".join(line.split()) in shown
    assert {line[0] for line in ANSWER_HELP.splitlines()} == set("ynea" + "q")
    assert "until this session ends" in shown


def test_the_panel_after_an_edit_says_edited(tmp_path: Path) -> None:
    session, _model = make_session(fence("print(1)"), "Done.", tmp_path=tmp_path)
    out, _ = terminal()
    err, err_buffer = terminal()
    renderer = HumanRenderer(markdown=False, out=out, err=err)
    answers = [Approval("edit", "print(2)\n"), Approval("run")]
    proposals: list[CodeProposed] = []

    def approve(proposal: CodeProposed) -> Approval:
        proposals.append(proposal)
        return answers.pop(0)

    assert drive(session.send("go"), render=renderer.render, approve=approve) == "finished"
    first, second = err_buffer.getvalue().split("block 1 · python", 2)[1:]
    assert "edited" not in first and "print(1)" in first
    assert "edited by you: run this version?" in second and "print(2)" in second
    assert [p.edited for p in proposals] == [False, True]


# --- 13: chat commands --------------------------------------------------------------------------


def test_two_turns_number_blocks_as_the_screen_does_and_save_and_undo_say_what_they_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    transcript = Transcript.create(tmp_path / "sessions", "20261207T101500-ab12cd")
    session, model = make_session(
        fence("print('one')"),
        "First done.",
        fence("print('two')"),
        "Second done.",
        tmp_path=tmp_path,
        transcript=transcript,
    )
    out, _ = terminal()
    err, screen = terminal()
    renderer = HumanRenderer(markdown=False, out=out, err=err)

    def send(text: str) -> object:
        return drive(session.send(text), render=renderer.render, approve=lambda p: Approval("run"))

    read = lines_then_eof("count one", "count two please", "%save", "%undo")
    chat_loop(session, send, read)
    transcript.close()

    assert "block 2: exit 0" in screen.getvalue()
    told = str(model.requests[3]["messages"][-1]["content"])
    assert told.startswith("[oi] Block 2 (python): exit code 0"), told
    saved = tmp_path / "oi-chat-20261207T101500-ab12cd.md"
    assert "[oi] Block 2 (python)" in saved.read_text()
    err_text = capsys.readouterr().err
    assert f"saved the conversation to {saved}" in err_text
    assert 'forgot your message "count two please" and the 3 message(s) after it' in err_text
    assert [m["content"] for m in session.messages if m["role"] == "user"][-1].startswith(
        "[oi] Block 1"
    )  # the history is back to the end of the first turn


# --- 16: the end line -------------------------------------------------------------------------


def test_the_end_line_speaks_plainly() -> None:
    out, _ = terminal()
    err, buffer = terminal()
    renderer = HumanRenderer(markdown=False, out=out, err=err)
    renderer.render(
        SessionEnded(
            "max_turns",
            "stopped after 1 model turns (--max-turns 1) before the model finished",
            1,
            20,
            111,
            "20261207T101500-ab12cd",
        )
    )
    line = buffer.getvalue()
    assert "oi: stopped: too many model turns" in line
    assert "max_turns" not in line
    assert "20 prompt + 111 reply tokens" in line
    assert "20+111" not in line


def test_sessions_show_gives_the_code_as_edited_not_only_as_proposed() -> None:
    """After an edit, what ran is in no message: the view shows it, escapes made visible."""
    proposed, edited = "print('as proposed')", "print('as edited')  # \x1b[2J"
    records: list[dict[str, Any]] = [
        {
            "type": "message",
            "message": {"role": "assistant", "content": f"```python\n{proposed}\n```"},
        },
        {
            "type": "event",
            "event": "code_proposed",
            "index": 1,
            "code": proposed,
            "sha256": "a" * 64,
        },
        {
            "type": "event",
            "event": "decision",
            "index": 1,
            "decision": "edited",
            "by": "user",
            "sha256": "b" * 64,
        },
        {"type": "event", "event": "code_proposed", "index": 1, "code": edited, "sha256": "b" * 64},
        {
            "type": "event",
            "event": "decision",
            "index": 1,
            "decision": "run",
            "by": "user",
            "sha256": "b" * 64,
        },
    ]
    console = Console(record=True, width=100, force_terminal=False)
    render_transcript(records, console)
    seen = console.export_text()
    assert "block 1 as edited by you (sha256 bbbbbbbbbbbb)" in seen
    assert "print('as edited')" in seen and "\\x1b[2J" in seen and "\x1b" not in seen
    assert seen.count("as edited by you") == 1  # the first proposal is the message's own


def test_an_empty_task_or_a_bad_image_is_bad_usage_before_any_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is asked, and no record is left behind (it would list as "open" for ever)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("OI_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("OI_API_BASE", "http://127.0.0.1:9/v1")
    (tmp_path / "notes.png").write_text("not an image")
    for args, words in (
        (["run", "  "], "oi run needs a task"),
        (["run", "x", "--image", str(tmp_path / "missing.png")], "No such file"),
        (["run", "x", "--image", str(tmp_path / "notes.png")], "not a PNG, JPEG or WebP"),
    ):
        result = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert words in result.output
    assert not (tmp_path / "data" / "oi" / "sessions").exists() or not any(
        (tmp_path / "data" / "oi" / "sessions").iterdir()
    )


def test_chat_commands_with_a_wrong_or_missing_argument_say_what_they_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.chat import chat_command

    monkeypatch.chdir(tmp_path)
    session = Session(
        model=ScriptedModel(),
        runner=FakeRunner(workdir=tmp_path),
        settings=Settings(workdir=tmp_path),
    )
    chat_command(session, "%auto maybe")
    chat_command(session, "%image")
    chat_command(session, "%save")
    chat_command(session, "%image chart.png")
    err = capsys.readouterr().err
    assert "%auto takes on or off" in err and "unknown command" not in err
    assert "%image takes a file" in err
    assert "nothing to save yet" in err and not list(tmp_path.glob("oi-chat-*.md"))
    assert "oi chat --vision" in err and "--image" not in err
