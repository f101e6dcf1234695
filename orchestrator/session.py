"""The agent loop: ask the model -> extract blocks -> approve -> run in the sandbox -> feed back.

``Session.send(task)`` is a generator of typed events (``events.py``); it never prints. Its
seams are injected: a ``ModelClient`` (openai SDK), a ``Sandbox`` (Docker), an ``Approver``
(the person, auto-run, or deny) and a ``Transcript`` (JSONL record). ``oi run`` sends one task,
``oi chat`` many; batch and a server are further adapters over the same loop.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.approval import Approver
from orchestrator.errors import ConfigError, ContextOverflowError, ModelError, UnknownLanguageError
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    EndStatus,
    Event,
    ModelReply,
    ModelText,
    ModelWaiting,
    Notice,
    SandboxSummary,
    SessionEnded,
    TokenUsage,
)
from orchestrator.languages import Language, parse_language
from orchestrator.llm.client import (
    Finished,
    ModelClient,
    TextDelta,
    ToolCallComplete,
    ToolsUnsupportedError,
    Usage,
)
from orchestrator.llm.extract import ProposedBlock, extract_blocks, parse_tool_arguments
from orchestrator.llm.prompts import (
    EXECUTE_TOOL,
    PromptContext,
    build_system_prompt,
    format_language_error,
    format_result_for_model,
)
from orchestrator.sandbox.runner import ExecResult, Sandbox
from orchestrator.settings import Settings
from orchestrator.transcript import Transcript
from orchestrator.units import format_size

LANGUAGE_NOTES: tuple[tuple[str, str], ...] = (
    ("python", "python3 with numpy, pandas, matplotlib"),
    ("javascript", "Node.js, built-in modules only"),
    ("shell", "bash with coreutils, find, tar, gzip, jq, curl"),
)
RESULT_PREFIX = "[oi] "
TRIMMED_OUTPUT = "[oi] output of this block removed to fit the context window"
LOOP_GUARD_REPEATS = 3
CHARS_PER_TOKEN = 3.0  # conservative for code; vLLM counts real tokens, we only need a bound


@dataclass
class _Outcome:
    """What handling one proposed block produced."""

    for_model: str
    quit: bool = False
    failure_key: tuple[Any, ...] | None = None
    interrupted: bool = False


@dataclass
class LoopGuard:
    """Stops a model that keeps running the same failing block with the same failure."""

    repeats: int = LOOP_GUARD_REPEATS
    _last: tuple[Any, ...] | None = None
    _count: int = 0

    def observe(self, failure_key: tuple[Any, ...] | None) -> bool:
        """Record one block's outcome; True when the same failure happened ``repeats`` times."""
        if failure_key is None:
            self._last, self._count = None, 0
            return False
        if failure_key == self._last:
            self._count += 1
        else:
            self._last, self._count = failure_key, 1
        return self._count >= self.repeats


@dataclass
class _Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    blocks: int = 0


def code_sha256(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    size = sum(len(json.dumps(m, ensure_ascii=False)) for m in messages)
    if tools:
        size += len(json.dumps(tools))
    return int(size / CHARS_PER_TOKEN) + 8 * len(messages)


class Session:
    """One conversation with the model, whose code runs in ``sandbox``."""

    def __init__(
        self,
        *,
        model: ModelClient,
        sandbox: Sandbox,
        approver: Approver,
        settings: Settings,
        transcript: Transcript | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.sandbox = sandbox
        self.approver = approver
        self.settings = settings
        self.transcript = transcript
        self.auto_run = settings.auto_run
        self.use_tools = settings.tool_mode in ("auto", "tools")
        self.messages: list[dict[str, Any]] = []
        self.totals = _Totals()
        self._max_model_len: int | None = None
        self._block_index = 0
        self._likely_language = Language.PYTHON
        if history:
            # A resumed session starts like a new one: tools if allowed (auto falls back again
            # if the server refuses them), with a system prompt for today's settings.
            self.messages = list(history)
            self._set_system_prompt()
        else:
            self._set_system_prompt()
            self._record_message(self.messages[0])

    # --- history --------------------------------------------------------------------------

    def _system_prompt(self) -> str:
        settings = self.settings
        context = PromptContext(
            workdir_host=str(settings.workdir),
            languages=LANGUAGE_NOTES,
            network=settings.network,
            memory=format_size(settings.memory),
            cpus=settings.cpus,
            timeout_s=settings.timeout,
            tool_mode_is_tools=self.use_tools,
        )
        return build_system_prompt(context)

    def _set_system_prompt(self) -> None:
        system = {"role": "system", "content": self._system_prompt()}
        if self.messages and self.messages[0].get("role") == "system":
            self.messages[0] = system
        else:
            self.messages.insert(0, system)

    def _add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._record_message(message)

    def _record_message(self, message: dict[str, Any]) -> None:
        if self.transcript:
            self.transcript.append("message", message=message)

    def _record(self, event: Event) -> Event:
        if self.transcript and not isinstance(event, ModelText | BlockOutput):
            self.transcript.event(event)
        return event

    def truncate(self, length: int) -> None:
        """Cut the history to ``length`` messages (``%undo``, ``%reset``); recorded."""
        length = max(1, length)
        del self.messages[length:]
        if self.transcript:
            self.transcript.append("history_truncate", length=length)

    def reset(self) -> None:
        self.truncate(1)

    def undo(self) -> bool:
        """Forget the last user turn and everything after it. False if there is none."""
        for index in range(len(self.messages) - 1, 0, -1):
            if self.messages[index].get("role") == "user" and not str(
                self.messages[index].get("content", "")
            ).startswith(RESULT_PREFIX):
                self.truncate(index)
                return True
        return False

    def _repair_history(self) -> None:
        """Answer tool calls left unanswered (e.g. by Ctrl-C) so the history stays valid."""
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        for message in list(self.messages):
            for call in message.get("tool_calls") or []:
                if call["id"] not in answered:
                    self._add(
                        {
                            "role": "tool",
                            "tool_call_id": call["id"],
                            "content": "not run: interrupted by the user",
                        }
                    )

    # --- the loop ---------------------------------------------------------------------------

    def send(self, text: str) -> Generator[Event, None, EndStatus]:
        """Give the model a task (or the next chat message) and work until it answers."""
        self._repair_history()
        # Pre-start a container of the language the model will likely use while it thinks.
        self.sandbox.warm(self._likely_language)
        self._add({"role": "user", "content": text})
        guard = LoopGuard()
        turns = 0
        while True:
            if turns >= self.settings.max_turns:
                return (
                    yield from self._end(
                        "max_turns",
                        f"stopped after {turns} model turns (--max-turns "
                        f"{self.settings.max_turns}) before the model finished",
                        turns,
                    )
                )
            turns += 1
            reply = yield from self._ask_model(turns)
            self._add(reply.assistant_message())
            proposals = self._proposals(reply)
            if not proposals:
                if reply.finish_reason == "length":
                    yield self._record(
                        Notice("the model's reply was cut off by its token limit (max_tokens)")
                    )
                return (yield from self._end("finished", "the model answered without code", turns))
            tool_answers: list[dict[str, Any]] = []
            text_answers: list[str] = []
            quit_now = False
            stop_guard = False
            interrupted = False
            for block, error in proposals:
                if quit_now or interrupted:
                    outcome = _Outcome("not run: the user stopped the session")
                elif error is not None:
                    outcome = _Outcome(error)
                else:
                    outcome = yield from self._handle_block(block, reply.finish_reason)
                    quit_now = outcome.quit
                    interrupted = outcome.interrupted
                    stop_guard = guard.observe(outcome.failure_key) or stop_guard
                if block.tool_call_id:
                    tool_answers.append(
                        {
                            "role": "tool",
                            "tool_call_id": block.tool_call_id,
                            "content": outcome.for_model,
                        }
                    )
                else:
                    number = len(text_answers) + 1
                    text_answers.append(f"Block {number} ({block.language}): {outcome.for_model}")
            for answer in tool_answers:
                self._add(answer)
            if text_answers:
                self._add({"role": "user", "content": RESULT_PREFIX + "\n\n".join(text_answers)})
            if interrupted:
                return (
                    yield from self._end("interrupted", "interrupted by the user (Ctrl-C)", turns)
                )
            if quit_now:
                return (yield from self._end("quit", "the user quit", turns))
            if stop_guard:
                return (
                    yield from self._end(
                        "loop_guard",
                        f"the same block failed the same way {LOOP_GUARD_REPEATS} times in a row; "
                        "stopped so it does not loop forever (rephrase the task or fix the input)",
                        turns,
                    )
                )

    def _end(self, status: EndStatus, reason: str, turns: int) -> Generator[Event, None, EndStatus]:
        yield self._record(
            SessionEnded(
                status, reason, turns, self.totals.prompt_tokens, self.totals.completion_tokens
            )
        )
        return status

    # --- model ------------------------------------------------------------------------------

    def _tools(self) -> list[dict[str, Any]] | None:
        return [EXECUTE_TOOL] if self.use_tools else None

    def _budget(self) -> int:
        if self._max_model_len is None:
            try:
                self._max_model_len = self.model.model_max_len() or self.settings.max_model_len
            except ModelError:
                self._max_model_len = self.settings.max_model_len
        reserve = self.settings.max_tokens or min(4096, self._max_model_len // 4)
        return max(256, self._max_model_len - reserve)

    def _fit_context(self, budget: int) -> list[str]:
        """Trim the history to ``budget`` tokens: old outputs first, then old exchanges."""
        notes: list[str] = []
        tools = self._tools()
        if estimate_tokens(self.messages, tools) <= budget:
            return notes
        # 1. Old block outputs, oldest first (the newest result stays whole).
        results = [
            i
            for i, m in enumerate(self.messages)
            if (m.get("role") == "tool" or str(m.get("content", "")).startswith(RESULT_PREFIX))
            and m.get("content") != TRIMMED_OUTPUT
        ]
        trimmed = 0
        for index in results[:-1]:
            if estimate_tokens(self.messages, tools) <= budget:
                break
            self.messages[index] = {**self.messages[index], "content": TRIMMED_OUTPUT}
            trimmed += 1
        if trimmed:
            notes.append(f"removed the output of {trimmed} old block(s) to fit the context")
        # 2. Whole old exchanges after the task, keeping tool calls paired with their answers.
        dropped = 0
        first_user = next(
            (i for i, m in enumerate(self.messages) if m.get("role") == "user"), len(self.messages)
        )
        while estimate_tokens(self.messages, tools) > budget:
            start = first_user + 1
            if start >= len(self.messages) - 1:
                break
            end = start + 1
            while end < len(self.messages) and self.messages[end].get("role") == "tool":
                end += 1
            del self.messages[start:end]
            dropped += end - start
        if dropped:
            notes.append(f"dropped {dropped} old message(s) to fit the context")
        if estimate_tokens(self.messages, tools) > budget:
            raise ContextOverflowError(
                f"the conversation does not fit the model's context (about {budget} tokens "
                "left for it) even after trimming; start over (%reset in chat) or raise "
                "--max-model-len on the server"
            )
        return notes

    def _ask_model(self, turn: int) -> Generator[Event, None, Finished]:
        shrink_retry = True
        budget = self._budget()
        while True:
            for note in self._fit_context(budget):
                yield self._record(Notice(note))
            yield ModelWaiting(turn)
            started = time.monotonic()
            try:
                finished = yield from self._stream_reply()
            except ToolsUnsupportedError:
                if self.settings.tool_mode == "tools":
                    raise ConfigError(
                        f"the model server at {self.model.api_base} does not accept tool calls; "
                        "start vLLM with --enable-auto-tool-choice --tool-call-parser hermes, "
                        "or use --tool-mode markdown"
                    ) from None
                self.use_tools = False
                self._set_system_prompt()
                yield self._record(
                    Notice(
                        "the server does not accept tool calls (vLLM without "
                        "--enable-auto-tool-choice): using markdown code blocks instead"
                    )
                )
                continue
            except ContextOverflowError:
                if not shrink_retry:
                    raise
                shrink_retry = False
                budget = int(min(budget, estimate_tokens(self.messages, self._tools())) * 0.6)
                yield self._record(
                    Notice("the server said the conversation is too long: trimming and retrying")
                )
                continue
            yield self._record(
                ModelReply(
                    finished.text,
                    finished.finish_reason,
                    len(finished.tool_calls),
                    round(time.monotonic() - started, 3),
                )
            )
            return finished

    def _stream_reply(self) -> Generator[Event, None, Finished]:
        stream = self.model.stream_chat(self.messages, self._tools())
        try:
            for item in stream:
                if isinstance(item, TextDelta):
                    yield ModelText(item.text)
                elif isinstance(item, Usage):
                    self.totals.prompt_tokens += item.prompt_tokens
                    self.totals.completion_tokens += item.completion_tokens
                    yield self._record(
                        TokenUsage(
                            item.prompt_tokens,
                            item.completion_tokens,
                            self.totals.prompt_tokens,
                            self.totals.completion_tokens,
                        )
                    )
                elif isinstance(item, Finished):
                    return item
                elif isinstance(item, ToolCallComplete):
                    continue
        finally:
            stream.close()
        raise ModelError(
            f"the model server at {self.model.api_base} ended a reply without finishing it"
        )

    # --- blocks -----------------------------------------------------------------------------

    def _proposals(self, reply: Finished) -> list[tuple[ProposedBlock, str | None]]:
        """Blocks of a reply, each with an error for the model when it cannot be run."""
        if reply.tool_calls:
            proposals: list[tuple[ProposedBlock, str | None]] = []
            for call in reply.tool_calls:
                try:
                    block = parse_tool_arguments(call.name, call.arguments, tool_call_id=call.id)
                except ValueError as exc:
                    stub = ProposedBlock("?", "", "tool_call", call.id)
                    proposals.append((stub, f"not run: {exc}"))
                    continue
                if block is None:
                    stub = ProposedBlock("?", "", "tool_call", call.id)
                    proposals.append(
                        (stub, f"not run: there is no tool {call.name!r}; use execute")
                    )
                else:
                    proposals.append((block, None))
            return proposals
        return [(block, None) for block in extract_blocks(reply.text)]

    def _summary(self, language: Language) -> SandboxSummary:
        spec = self.sandbox.spec_for(language)
        s = self.settings
        return SandboxSummary(
            image=spec.image,
            memory=format_size(s.memory),
            cpus=s.cpus,
            pids=s.pids,
            timeout_s=s.timeout,
            network=s.network,
            isolation=s.isolation,
            workdir=str(s.workdir),
        )

    def _handle_block(
        self, block: ProposedBlock, finish_reason: str
    ) -> Generator[Event, None, _Outcome]:
        if block.unterminated and finish_reason == "length":
            return _Outcome(
                "not run: your reply was cut off by the token limit, so the block is incomplete. "
                "Write a shorter block."
            )
        try:
            language = parse_language(block.language)
        except UnknownLanguageError:
            return _Outcome(format_language_error(block.language))
        self.sandbox.warm(language)
        self._likely_language = language
        self._block_index += 1
        index = self._block_index
        summary = self._summary(language)
        code = block.code
        by: Any = "auto"
        while True:
            sha = code_sha256(code)
            proposal = CodeProposed(index, language.value, code, sha, summary, block.source)
            yield self._record(proposal)
            if self.auto_run:
                by = "auto"
                break
            by = "user"
            approval = self.approver.decide(proposal)
            if approval.kind == "edit" and approval.code is not None:
                code = approval.code
                yield self._record(Decision(index, "edited", code_sha256(code), "user"))
                continue
            if approval.kind == "decline":
                yield self._record(Decision(index, "declined", sha, "user"))
                return _Outcome(format_result_for_model(exit_code=None, declined=True))
            if approval.kind == "quit":
                yield self._record(Decision(index, "quit", sha, "user"))
                return _Outcome("not run: the user stopped the session", quit=True)
            if approval.kind == "always":
                self.auto_run = True
            break
        yield self._record(Decision(index, "run", sha, by))
        result = yield from self._run(index, language, code)
        self.totals.blocks += 1
        if result is None:
            for_model = "interrupted by the user (Ctrl-C): the block was killed"
            yield self._record(
                BlockResult(index, language.value, sha, None, False, False, 0.0, True, for_model)
            )
            return _Outcome(for_model, interrupted=True)
        if result.code_sha256 != sha:  # the product rule: what runs is what was approved
            raise ConfigError(
                f"internal error: block {index} ran code that differs from the approved hash"
            )
        for_model = format_result_for_model(
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            stdout_cut_bytes=result.stdout_cut,
            stderr_cut_bytes=result.stderr_cut,
            timed_out=result.timed_out,
            timeout_s=self.settings.timeout,
            oom_killed=result.oom_killed,
            memory_str=format_size(self.settings.memory),
            max_chars=self.settings.max_output,
        )
        yield self._record(
            BlockResult(
                index,
                language.value,
                sha,
                result.exit_code,
                result.timed_out,
                result.oom_killed,
                result.duration_s,
                False,
                for_model,
                result.to_dict(),
            )
        )
        failed = result.exit_code != 0 or result.timed_out or result.oom_killed
        key = (
            sha,
            result.exit_code,
            result.timed_out,
            result.oom_killed,
            result.stdout,
            result.stderr,
        )
        return _Outcome(for_model, failure_key=key if failed else None)

    def _run(
        self, index: int, language: Language, code: str
    ) -> Generator[Event, None, ExecResult | None]:
        """Run a block in a worker thread, yielding its output live. None if interrupted."""
        items: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self.sandbox.run(
                    language,
                    code,
                    on_output=lambda stream, data: items.put(("out", stream, data)),
                    on_status=lambda message: items.put(("status", message, b"")),
                )
            except BaseException as exc:  # handed to the main thread below
                box["error"] = exc
            finally:
                items.put(("done", "", b""))

        worker = threading.Thread(target=work, name=f"oi-block-{index}", daemon=True)
        worker.start()
        decoders = {"stdout": _Utf8Stream(), "stderr": _Utf8Stream()}
        try:
            while True:
                kind, stream, data = items.get()
                if kind == "done":
                    break
                if kind == "status":
                    yield self._record(Notice(stream))
                    continue
                text = decoders[stream].decode(data)
                if text:
                    yield BlockOutput(index, stream, text)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            self.sandbox.cancel()
            worker.join(timeout=30)
            return None
        except GeneratorExit:
            self.sandbox.cancel()
            worker.join(timeout=30)
            raise
        worker.join()
        if "error" in box:
            raise box["error"]
        result: ExecResult = box["result"]
        return result


@dataclass
class _Utf8Stream:
    """Decodes a byte stream split at arbitrary points (a UTF-8 character may straddle chunks)."""

    _pending: bytes = field(default=b"")

    def decode(self, data: bytes) -> str:
        data = self._pending + data
        cut = len(data)
        # Keep an incomplete trailing UTF-8 sequence (at most 3 bytes) for the next chunk.
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte & 0x80:
                need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
                if back < need:
                    cut = len(data) - back
            break
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")


def open_session(
    settings: Settings,
    approver: Approver,
    *,
    resume: str | None = None,
    docker_client: Any = None,
    model: ModelClient | None = None,
) -> Session:
    """The production wiring: model client, sandbox and transcript from settings.

    With ``resume`` (a session id or unique prefix), the history is loaded from its record and
    new events are appended to the same file.
    """
    from orchestrator import __version__  # noqa: PLC0415
    from orchestrator.transcript import (  # noqa: PLC0415
        find_session,
        read_records,
        rebuild_history,
    )

    history = None
    if resume:
        path = find_session(settings.sessions_dir, resume)
        history = rebuild_history(list(read_records(path)))
        session_id = path.stem
    else:
        from orchestrator.sandbox.runner import new_session_id  # noqa: PLC0415

        session_id = new_session_id()
    sandbox = Sandbox.from_settings(settings, session_id=session_id, client=docker_client)
    model = model or ModelClient.from_settings(settings)
    transcript = Transcript.create(settings.sessions_dir, session_id)
    transcript.append(
        "session",
        session_id=session_id,
        resumed=bool(resume),
        oi_version=__version__,
        model=settings.model,
        api_base=settings.api_base,
        settings=settings.model_dump(mode="json", exclude={"api_key"}),
    )
    return Session(
        model=model,
        sandbox=sandbox,
        approver=approver,
        settings=settings,
        transcript=transcript,
        history=history,
    )
