"""What the model is told: the system prompt, the ``execute`` tool, and block results. Pure.

Everything here is written for a 4B model: short sentences, one fact per line, the rules that
matter most (fresh container per block, files under /workspace, one block at a time) first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from orchestrator.languages import LANGUAGES, Language, supported_names
from orchestrator.units import format_amount

if TYPE_CHECKING:
    from orchestrator.sandbox.config import SandboxDescription
    from orchestrator.sandbox.container import ExecResult
    from orchestrator.sandbox.workdir_quota import WorkdirOverrun

NetworkTier = Literal["none", "allowlist", "open"]


@dataclass(frozen=True)
class PromptContext:
    """The facts of this session the model must know. Chosen by the user/admin, never the model."""

    workdir_host: str
    languages: Sequence[tuple[str, str]]  # (name, notes), e.g. ("python", "numpy, pandas")
    network: NetworkTier
    allowed_hosts: Sequence[str] = field(default_factory=tuple)
    memory: str = "1 GiB"
    cpus: float = 1.0
    timeout_s: float = 60.0
    tool_mode_is_tools: bool = False
    keeps_installs: bool = False  # pip/npm installs stay for the session
    python_state: bool = False  # Python variables and imports carry from block to block


def build_system_prompt(ctx: PromptContext) -> str:
    """The system prompt for one session (about 200 words)."""
    languages = "; ".join(f"{name} ({notes})" if notes else name for name, notes in ctx.languages)
    if ctx.tool_mode_is_tools:
        how_to_run = (
            "- To run code, call the `execute` tool with `language` and `code`. "
            "One call per reply, then wait for its result."
        )
    else:
        example = ctx.languages[0][0] if ctx.languages else "python"
        how_to_run = (
            "- To run code, write ONE fenced code block with its language tag "
            f"(```{example}), then stop and wait for its result."
        )
    return "\n".join(
        [
            "You are oi. You solve the user's task by writing code that oi runs for you.",
            "",
            "Where your code runs:",
            *_memory_lines(ctx),
            f"- /workspace is the user's folder ({ctx.workdir_host} on their machine). "
            "Read inputs and save results there.",
            f"- Languages: {languages}.",
            f"- Network: {_network_words(ctx.network, ctx.allowed_hosts)}",
            f"- Limits per block: {_number(ctx.timeout_s)} s, {ctx.memory} memory, "
            f"{_number(ctx.cpus)} CPU. Read big files in chunks. There is no screen: "
            "save plots as files.",
            "",
            "How to work:",
            how_to_run,
            "- You then get the exit code and output. If it failed, fix the code and try again.",
            "- When the task is done, answer in plain words without any code block, and name "
            "the files you created.",
        ]
    )


def _memory_lines(ctx: PromptContext) -> list[str]:
    """What survives from one block to the next, exactly."""
    if not (ctx.python_state or ctx.keeps_installs):
        return [
            "- Every code block runs in a NEW container. Variables, imports and installed "
            "packages are gone after each block. Keep state in files under /workspace."
        ]
    lines = ["- Every code block runs in a new container, but this session remembers:"]
    if ctx.python_state:
        lines.append(
            "  - Python: variables, functions, classes and imports of earlier Python blocks "
            "are back in the next Python block (not open files, sockets, threads, generators)."
        )
    else:
        lines.append("  - Python variables and imports are NOT kept: each block starts empty.")
    if ctx.keeps_installs:
        lines.append(
            "  - Packages installed with `pip install` or `npm install -g` stay for the "
            "session, in every language (shell blocks have python3, pip, node and npm)."
        )
    lines.append("  - Files under /workspace stay. Other languages share data through files.")
    return lines


def _network_words(tier: NetworkTier, allowed_hosts: Sequence[str]) -> str:
    if tier == "open":
        return "internet access is available."
    if tier == "allowlist":
        hosts = ", ".join(allowed_hosts) if allowed_hosts else "(none)"
        return f"only these hosts can be reached: {hosts}. Everything else is blocked."
    return "no network at all. You cannot download or install anything."


def _execute_tool(remembers: bool = False) -> dict[str, Any]:
    names = [language.value for language in Language]
    return {
        "type": "function",
        "function": {
            "name": "execute",
            "description": (
                "Run a complete program in a new, empty sandbox container. The user's folder "
                "is /workspace. Returns the exit code, stdout and stderr."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "language": {
                        "type": "string",
                        "enum": names,
                        "description": "Language of the code.",
                    },
                    "code": {
                        "type": "string",
                        "description": "The whole program. "
                        + (
                            "Python state and installed packages of earlier runs are kept."
                            if remembers
                            else "Nothing is kept from earlier runs."
                        ),
                    },
                },
                "required": ["language", "code"],
            },
        },
    }


EXECUTE_TOOL: Final[dict[str, Any]] = _execute_tool()
"""The OpenAI tool schema of ``execute(language, code)``. Shared: do not mutate."""
EXECUTE_TOOL_REMEMBERING: Final[dict[str, Any]] = _execute_tool(remembers=True)
"""The same, for a session that keeps Python state and installed packages."""


def result_for_model(result: ExecResult, box: SandboxDescription, max_chars: int) -> str:
    """``format_result_for_model`` of one block's result in the sandbox ``box`` described."""
    return format_result_for_model(
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_cut_bytes=result.stdout_cut,
        stderr_cut_bytes=result.stderr_cut,
        timed_out=result.timed_out,
        timeout_s=box.timeout_s,
        oom_killed=result.oom_killed,
        memory_str=box.memory,
        max_chars=max_chars,
        workdir_overrun=result.workdir_overrun,
    )


def format_result_for_model(
    *,
    exit_code: int | None,
    stdout: str = "",
    stderr: str = "",
    stdout_cut_bytes: int = 0,
    stderr_cut_bytes: int = 0,
    timed_out: bool = False,
    timeout_s: float = 0.0,
    oom_killed: bool = False,
    memory_str: str = "",
    declined: bool = False,
    max_chars: int | None = None,
    workdir_overrun: WorkdirOverrun | None = None,
) -> str:
    """The short plain text the model receives about one block.

    A status line ("exit code 1", "timed out after 60 s (wall-clock limit)", "killed: memory
    limit 1 GiB", "stopped: the workdir limit of 4 GiB was reached (...)", or "declined by the
    user: the block was not run"), then the non-empty streams. ``*_cut_bytes`` are bytes the
    sandbox dropped from the middle of a stream; when its text does not already say so, the
    section title does. ``max_chars`` further trims each stream with ``trim_middle`` to
    protect the model's context.
    """
    if declined:
        return "declined by the user: the block was not run."
    workdir = workdir_limit_words(workdir_overrun) if workdir_overrun is not None else ""
    if timed_out:
        status = f"timed out after {_number(timeout_s)} s (wall-clock limit); the block was killed"
    elif workdir_overrun is not None and workdir_overrun.stopped:
        status, workdir = workdir, ""
    elif oom_killed:
        status = f"killed: memory limit {memory_str}".rstrip() + "; use less memory"
    elif exit_code is None:
        status = "no exit code"
    else:
        status = f"exit code {exit_code}"
    if workdir:  # it ended by itself (or timed out) after passing the bound
        status = f"{status}; {workdir}"
    parts = [status]
    for name, raw, cut in (
        ("stdout", stdout, stdout_cut_bytes),
        ("stderr", stderr, stderr_cut_bytes),
    ):
        if not raw.strip():
            continue
        text = raw if max_chars is None else trim_middle(raw, max_chars)[0]
        title = name
        if cut and f"{cut} bytes cut" not in text:
            title = f"{name} ({cut} bytes cut from the middle)"
        parts.append(f"{title}:\n{text.rstrip()}")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)


def workdir_limit_words(overrun: WorkdirOverrun) -> str:
    """Plain words for a block that took the workdir past the session's limit, e.g. "stopped:
    the workdir limit of 4 GiB was reached (the block added 4.1 GiB); the block was killed.
    Delete files you do not need, or write less." """
    show = format_amount if overrun.kind == "bytes" else _files
    if overrun.where == "environment":
        limit = (
            f"the session environment limit of {show(overrun.limit)} (installed packages, "
            "Python state)"
        )
        holds = f"it holds {show(overrun.grown)}"
        if overrun.stopped:
            return (
                f"stopped: {limit} was reached ({holds}); the block was killed. Uninstall "
                "packages you do not need, or install fewer."
            )
        return f"{limit} was passed ({holds}). Uninstall packages you do not need."
    if overrun.earlier_blocks:
        # The bound is the session's: say so, since this block may have added only a part.
        earlier = overrun.earlier_blocks
        added = (
            f"the workdir grew by {show(overrun.grown)} in this session: this block and "
            f"{earlier} before it"
        )
        limit = f"the workdir limit of {show(overrun.limit)} for this session"
    else:
        added = f"the block added {show(overrun.grown)}"
        limit = f"the workdir limit of {show(overrun.limit)}"
    if overrun.stopped:
        return (
            f"stopped: {limit} was reached ({added}); the block was killed. "
            "Delete files you do not need, or write less."
        )
    return f"{limit} was passed ({added}). Delete files you do not need before writing more."


def _files(count: int) -> str:
    return f"{count:,} file" + ("" if count == 1 else "s")


def format_language_error(language: str) -> str:
    """What the model is told when it wrote a block in a language oi does not run."""
    names = ", ".join(info.language.value for info in LANGUAGES.values())
    return (
        f"not run: oi cannot run {language!r} code. Write the block in one of: {names} "
        f"(names accepted: {supported_names()})."
    )


def trim_middle(text: str, max_chars: int) -> tuple[str, int]:
    """Keep the first and last ``max_chars // 2`` characters, with a note where text was cut.

    Returns the text and how many characters were cut (0 when it already fits, and then the
    text is unchanged). The note is added on top of ``max_chars``. Heads show how a run
    started, tails hold the error, so both are kept.
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must be >= 0, got {max_chars}")
    if len(text) <= max_chars:
        return text, 0
    head_len = max_chars // 2
    tail_len = max_chars - head_len
    cut = len(text) - max_chars
    head = text[:head_len]
    tail = text[len(text) - tail_len :] if tail_len else ""
    return f"{head}\n[... {cut} characters cut ...]\n{tail}", cut


def _number(value: float) -> str:
    """60.0 -> "60", 0.5 -> "0.5": people and models read the short form."""
    return f"{value:g}"
