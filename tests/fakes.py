"""Scripted fakes for the session's seams (``orchestrator.protocols``): a model that replies
from a script and a block runner that runs nothing. Unit tests drive ``Session.send`` with
them, as simonw/llm registers a scripted model; ``examples/csv-demo/record.py`` uses them too.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.languages import Language
from orchestrator.llm.client import Finished, StreamEvent, TextDelta, ToolCallComplete, Usage
from orchestrator.sandbox.config import SandboxDescription
from orchestrator.sandbox.container import ExecResult


@dataclass(frozen=True)
class Say:
    """One scripted reply: text, tool calls ``(name, arguments JSON)``, or an error to raise."""

    text: str = ""
    calls: tuple[tuple[str, str], ...] = ()
    finish_reason: str | None = None
    error: BaseException | None = None
    usage: tuple[int, int] = (10, 5)


class ScriptedModel:
    """A ``ChatModel`` that answers each request with the next ``Say`` and records requests."""

    api_base = "http://scripted.invalid/v1"

    def __init__(self, *replies: Say | str, max_len: int | None = 32768) -> None:
        self.replies: deque[Say] = deque(r if isinstance(r, Say) else Say(r) for r in replies)
        self.requests: list[dict[str, Any]] = []
        self.max_len = max_len

    def model_max_len(self) -> int | None:
        return self.max_len

    def stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Iterator[StreamEvent]:
        self.requests.append({"messages": [dict(m) for m in messages], "tools": tools})
        if not self.replies:
            raise AssertionError("the scripted model has no reply left")
        reply = self.replies.popleft()
        if reply.error is not None:
            raise reply.error
        for piece in _pieces(reply.text):
            yield TextDelta(piece)
        calls = tuple(
            ToolCallComplete(f"call_{i}", name, arguments)
            for i, (name, arguments) in enumerate(reply.calls)
        )
        yield from calls
        yield Usage(*reply.usage)
        reason = reply.finish_reason or ("tool_calls" if calls else "stop")
        yield Finished(reason, reply.text, calls)


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


Behaviour = Callable[[Language, str], tuple[int, str, str]]
"""(language, code) -> (exit code, stdout, stderr)."""


def echo_behaviour(language: Language, code: str) -> tuple[int, str, str]:
    return 0, f"ran {language.value}: {code}\n", ""


@dataclass
class FakeRunner:
    """A ``BlockRunner`` that runs nothing: results come from ``behaviour``."""

    behaviour: Behaviour = echo_behaviour
    workdir: Path = Path("/work")
    block: threading.Event | None = None  # given: run() prints "started", waits for cancel()
    runs: list[tuple[Language, str]] = field(default_factory=list)
    warmed: list[Language] = field(default_factory=list)
    cancelled: int = 0
    timed_out: bool = False

    def warm(self, language: Language) -> None:
        self.warmed.append(language)

    def describe(self, language: Language) -> SandboxDescription:
        return description(str(self.workdir), image=f"fake-{language.value}")

    def run(
        self,
        language: Language,
        code: str | bytes,
        on_output: Callable[[str, bytes], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> ExecResult:
        text = code.decode() if isinstance(code, bytes) else code
        self.runs.append((language, text))
        if self.block is not None:  # say it started, then run until cancelled
            if on_output is not None:
                on_output("stdout", b"started\n")
            self.block.wait(30)
        exit_code, stdout, stderr = self.behaviour(language, text)
        if on_output is not None:
            if stdout:
                on_output("stdout", stdout.encode())
            if stderr:
                on_output("stderr", stderr.encode())
        return ExecResult(
            language=language.value,
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            stdout_cut=0,
            stderr_cut=0,
            stdout_bytes=len(stdout),
            stderr_bytes=len(stderr),
            duration_s=0.01,
            timed_out=self.timed_out,
            oom_killed=False,
            container_id="fake",
            image=f"fake-{language.value}",
            image_id="sha256:fake",
            code_sha256=hashlib.sha256(text.encode()).hexdigest(),
        )

    def cancel(self) -> None:
        self.cancelled += 1
        if self.block is not None:
            self.block.set()


def description(workdir: str, image: str = "oi-sandbox-python:3f9a1c2b7d4e") -> SandboxDescription:
    """The sandbox an approval screen shows, with oi's default limits."""
    return SandboxDescription(
        image=image,
        memory="1 GiB",
        cpus=1.0,
        pids=256,
        timeout_s=60.0,
        network="none",
        isolation="runc",
        workdir=workdir,
    )
