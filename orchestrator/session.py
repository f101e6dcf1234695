"""The agent loop: ask the model -> extract blocks -> approve -> run in the sandbox -> feed back.

``Session.send(task)`` is a generator of typed events (``events.py``); it never prints and never
waits for a person. When a block needs approval it yields ``CodeProposed`` with
``awaits_approval`` set and expects the answer (an ``approval.Approval``) to be *sent* back into
the generator; a terminal, a batch runner or an HTTP server answers it in its own way (see
``drive.py``). A ``KeyboardInterrupt`` thrown in stops the block running (its container is
killed) or the wait for an answer. Its seams are Protocols (``protocols.py``): the model and
the block runner; the record is a ``Transcript``.
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import threading
import time
from collections.abc import Generator
from typing import Any

from orchestrator.approval import Approval
from orchestrator.context import (
    MIN_RESULT_CHARS,
    RESULT_PREFIX,
    estimate_tokens,
    fit_context,
    is_result,
    prompt_budget,
    result_room,
)
from orchestrator.errors import (
    ConfigError,
    ContextOverflowError,
    ModelError,
    OiError,
    UnknownLanguageError,
)
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Decision,
    EndStatus,
    Event,
    ModelReply,
    ModelRestarted,
    ModelText,
    ModelWaiting,
    Notice,
    SessionEnded,
    TokenUsage,
)
from orchestrator.languages import Language, parse_language
from orchestrator.llm.client import (
    Finished,
    ImagesUnsupportedError,
    StreamRestarted,
    TextDelta,
    ToolsUnsupportedError,
    Usage,
)
from orchestrator.llm.extract import ProposedBlock, extract_blocks, parse_tool_arguments
from orchestrator.llm.instructions import Instructions, add_instructions
from orchestrator.llm.prompts import (
    EXECUTE_TOOL,
    EXECUTE_TOOL_REMEMBERING,
    PromptContext,
    build_system_prompt,
    format_language_error,
    format_result_for_model,
    result_for_model,
)
from orchestrator.protocols import BlockRunner, ChatModel, OutputStore
from orchestrator.sandbox.container import ExecResult, signals_deferred
from orchestrator.sandbox.toolbox import language_notes
from orchestrator.session_parts import (
    LOOP_GUARD_REPEATS,
    Kept,
    LoopGuard,
    Outcome,
    Totals,
    code_sha256,
)
from orchestrator.settings import Settings
from orchestrator.transcript import Transcript
from orchestrator.vision import SessionImages, recordable

NOT_RUN_STOPPED = "not run: the user stopped the session"

SessionEvents = Generator[Event, "Approval | None", EndStatus]


class Session:
    """One conversation with the model, whose code runs through ``runner``."""

    def __init__(
        self,
        *,
        model: ChatModel,
        runner: BlockRunner,
        settings: Settings,
        transcript: Transcript | None = None,
        history: list[dict[str, Any]] | None = None,
        outputs: OutputStore | None = None,
        instructions: Instructions | None = None,  # standing instructions, after oi's facts
    ) -> None:
        self.model = model
        self.instructions = instructions or Instructions()
        self.outputs = outputs
        self.runner = runner
        self.settings = settings
        self.transcript = transcript
        self.auto_run = settings.auto_run
        self.use_tools = settings.tool_mode in ("auto", "tools")
        self.messages: list[dict[str, Any]] = []
        self.totals = Totals()
        self.interrupt_reason = "interrupted by the user (Ctrl-C)"  # an adapter may say why
        self._quit_reason = "the user quit"
        self._interrupted_again = False
        self._whole = {"stdout": Kept(), "stderr": Kept()}
        self._max_model_len: int | None = None
        self._block_index = 0
        self._likely_language = Language.PYTHON
        self.images = SessionImages.for_workdir(settings.workdir, enabled=settings.vision)
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
        box = self.runner.describe(self._likely_language)
        context = PromptContext(
            workdir_host=box.workdir,
            languages=language_notes(self.settings.toolbox),
            network=self.settings.network,
            allowed_hosts=box.allow_hosts,
            memory=box.memory,
            cpus=box.cpus,
            timeout_s=box.timeout_s,
            tool_mode_is_tools=self.use_tools,
            keeps_installs=box.keeps_installs,
            python_state=box.python_state,
        )
        return add_instructions(build_system_prompt(context), context, self.instructions)

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
            self.transcript.append("message", message=recordable(message))

    def _emit(self, event: Event) -> Generator[Event, Approval | None, Approval | None]:
        """Record ``event`` (live text and output are not recorded), then yield it. If the
        record cannot be written, the event is still shown before the error ends the run."""
        failure: OiError | None = None
        if self.transcript and not isinstance(event, ModelText | BlockOutput):
            try:
                self.transcript.event(event)
            except OiError as exc:
                failure = exc
        answer = yield event
        if failure is not None:
            raise failure
        return answer

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
            if self.messages[index].get("role") == "user" and not is_result(self.messages[index]):
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

    def send(self, text: str) -> SessionEvents:
        """Give the model a task (or the next chat message) and work until it answers.

        Every way this ends is recorded as an end event: finished, stopped, or an error (the
        error is then raised) or an interrupt while waiting for the model.
        """
        self._repair_history()
        # Pre-start a container of the language the model will likely use while it thinks.
        self.runner.warm(self._likely_language)
        self._add(self.images.user_message(text))
        turns = 0
        try:
            status, reason, turns = yield from self._turns()
        except (OiError, KeyboardInterrupt) as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
            if isinstance(exc, KeyboardInterrupt):
                self._why_interrupted(exc)
            reason = self.interrupt_reason if status == "interrupted" else str(exc)
            self._record_end(status, reason, turns)
            raise
        return (yield from self._end(status, reason, turns))

    def _why_interrupted(self, exc: KeyboardInterrupt) -> None:
        """A stop that says why (SIGTERM, SIGHUP: the CLI's handler) is recorded as such."""
        if exc.args and exc.args[0]:
            self.interrupt_reason = str(exc.args[0])

    def _turns(self) -> Generator[Event, Approval | None, tuple[EndStatus, str, int]]:
        guard = LoopGuard()
        turns = 0
        while True:
            if turns >= self.settings.max_turns:
                why = (
                    f"stopped after {turns} model turns (--max-turns {self.settings.max_turns}) "
                    "before the model finished"
                )
                return "max_turns", why, turns
            turns += 1
            reply = yield from self._ask_model(turns)
            self._add(reply.assistant_message())
            proposals = self._proposals(reply)
            if not proposals:
                if reply.finish_reason == "length":
                    yield from self._emit(
                        Notice("the model's reply was cut off by its token limit (max_tokens)")
                    )
                return "finished", "the model answered without code", turns
            stop = yield from self._handle_proposals(proposals, reply.finish_reason, guard)
            if stop is not None:
                return stop[0], stop[1], turns

    def _handle_proposals(
        self,
        proposals: list[tuple[ProposedBlock, str | None]],
        finish_reason: str,
        guard: LoopGuard,
    ) -> Generator[Event, Approval | None, tuple[EndStatus, str] | None]:
        """Handle each block of one reply; answer the model; say why to stop, if so."""
        tool_answers: list[dict[str, Any]] = []
        text_answers: list[str] = []
        quit_now = interrupted = stop_guard = False
        for block, error in proposals:
            numbered = self._block_index
            if quit_now or interrupted:
                outcome = Outcome(NOT_RUN_STOPPED)
            elif error is not None:
                outcome = Outcome(error)
            else:
                outcome = yield from self._handle_block(block, finish_reason)
                quit_now, interrupted = outcome.quit, outcome.interrupted
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
                # The session's block number, as the person's screen shows it.
                name = f"Block {self._block_index}" if self._block_index > numbered else "Block"
                text_answers.append(f"{name} ({block.language}): {outcome.for_model}")
        for answer in tool_answers:
            self._add(answer)
        if text_answers:
            self._add({"role": "user", "content": RESULT_PREFIX + "\n\n".join(text_answers)})
        for message, note in self.images.take_block_messages():
            self._add(message)
            yield from self._emit(Notice(note))
        if interrupted:
            return "interrupted", self.interrupt_reason
        if quit_now:
            return "quit", self._quit_reason
        if stop_guard:
            return "loop_guard", (
                f"the same block failed the same way {LOOP_GUARD_REPEATS} times in a row; "
                "stopped so it does not loop forever (rephrase the task or fix the input)"
            )
        return None

    def _end_event(self, status: EndStatus, reason: str, turns: int) -> SessionEnded:
        totals = self.totals
        session_id = self.transcript.path.stem if self.transcript else ""
        return SessionEnded(
            status, reason, turns, totals.prompt_tokens, totals.completion_tokens, session_id
        )

    def _end(self, status: EndStatus, reason: str, turns: int) -> SessionEvents:
        yield from self._emit(self._end_event(status, reason, turns))
        return status

    def _record_end(self, status: EndStatus, reason: str, turns: int) -> None:
        """The end event of a run that ends by an exception (nobody is left to show it)."""
        if self.transcript:  # if the record itself is what failed, the error says which
            with contextlib.suppress(OiError):
                self.transcript.event(self._end_event(status, reason, turns))

    # --- model ------------------------------------------------------------------------------

    def _tools(self) -> list[dict[str, Any]] | None:
        if not self.use_tools:
            return None
        box = self.runner.describe(self._likely_language)
        return [EXECUTE_TOOL_REMEMBERING if box.python_state else EXECUTE_TOOL]

    def _budget(self) -> int:
        if self._max_model_len is None:
            try:
                self._max_model_len = self.model.model_max_len() or self.settings.max_model_len
            except ModelError:
                self._max_model_len = self.settings.max_model_len
        return prompt_budget(self._max_model_len, self.settings.max_tokens)

    def _fit_context(self, budget: int) -> list[str]:
        """Trim the history to ``budget`` tokens: old outputs first, then old exchanges."""
        return fit_context(self.messages, self._tools(), budget)

    def _ask_model(self, turn: int) -> Generator[Event, Approval | None, Finished]:
        shrink_retry = True
        budget = self._budget()
        while True:
            for note in self._fit_context(budget):
                yield from self._emit(Notice(note))
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
                yield from self._emit(
                    Notice(
                        "the server does not accept tool calls (vLLM without "
                        "--enable-auto-tool-choice): using markdown code blocks instead"
                    )
                )
                continue
            except ImagesUnsupportedError as exc:
                if not self.images.enabled:
                    raise
                yield from self._emit(Notice(self.images.refused(exc, self.messages)))
                continue
            except ContextOverflowError:
                if not shrink_retry:
                    raise
                shrink_retry = False
                budget = int(min(budget, estimate_tokens(self.messages, self._tools())) * 0.6)
                yield from self._emit(
                    Notice("the server said the conversation is too long: trimming and retrying")
                )
                continue
            seconds = round(time.monotonic() - started, 3)
            yield from self._emit(
                ModelReply(finished.text, finished.finish_reason, len(finished.tool_calls), seconds)
            )
            return finished

    def _stream_reply(self) -> Generator[Event, Approval | None, Finished]:
        stream = self.model.stream_chat(self.messages, self._tools())
        try:
            for item in stream:
                if isinstance(item, TextDelta):
                    yield ModelText(item.text)
                elif isinstance(item, StreamRestarted):
                    # The reply was cut and is asked for again: what was shown is void.
                    yield from self._emit(ModelRestarted(item.partial_text, item.reason))
                elif isinstance(item, Usage):
                    totals = self.totals
                    totals.prompt_tokens += item.prompt_tokens
                    totals.completion_tokens += item.completion_tokens
                    yield from self._emit(
                        TokenUsage(
                            item.prompt_tokens,
                            item.completion_tokens,
                            totals.prompt_tokens,
                            totals.completion_tokens,
                        )
                    )
                elif isinstance(item, Finished):
                    return item
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        raise ModelError(
            f"the model server at {self.model.api_base} ended a reply without finishing it"
        )

    # --- blocks -----------------------------------------------------------------------------

    def _proposals(self, reply: Finished) -> list[tuple[ProposedBlock, str | None]]:
        """Blocks of a reply, each with an error for the model when it cannot be run."""
        if not reply.tool_calls:
            return [(block, None) for block in extract_blocks(reply.text)]
        proposals: list[tuple[ProposedBlock, str | None]] = []
        for call in reply.tool_calls:
            stub = ProposedBlock("?", "", "tool_call", call.id)
            try:
                # A reply cut by the token limit is not the parser's dropped brace: never
                # "repair" a truncated program into one that runs.
                block = parse_tool_arguments(
                    call.name,
                    call.arguments,
                    tool_call_id=call.id,
                    repair=reply.finish_reason != "length",
                )
            except ValueError as exc:
                proposals.append((stub, f"not run: {exc}"))
                continue
            if block is None:
                proposals.append((stub, f"not run: there is no tool {call.name!r}; use execute"))
            else:
                proposals.append((block, None))
        return proposals

    def _handle_block(
        self, block: ProposedBlock, finish_reason: str
    ) -> Generator[Event, Approval | None, Outcome]:
        """Approve, execute, report: one proposed block."""
        if block.unterminated and finish_reason == "length":
            return Outcome(
                "not run: your reply was cut off by the token limit, so the block is incomplete. "
                "Write a shorter block."
            )
        try:
            language = parse_language(block.language)
        except UnknownLanguageError:
            return Outcome(format_language_error(block.language))
        self.runner.warm(language)
        self._likely_language = language
        self._block_index += 1
        index = self._block_index
        approved = yield from self._approve(index, language, block)
        if isinstance(approved, Outcome):
            return approved
        code, sha = approved
        before = self.images.before_block()
        result = yield from self._execute(index, language, code)
        self.totals.blocks += 1
        self.images.after_block(before)
        return (yield from self._report(index, language, sha, result))

    def _approve(
        self, index: int, language: Language, block: ProposedBlock
    ) -> Generator[Event, Approval | None, tuple[str, str] | Outcome]:
        """Show the block until it is approved (as is or edited); (code, sha256) to run, or
        what the model is told when it does not run."""
        summary = self.runner.describe(language)
        code = block.code
        edited = False
        while True:
            sha = code_sha256(code)
            asks = not self.auto_run
            proposal = CodeProposed(
                index,
                language.value,
                code,
                sha,
                summary,
                block.source,
                awaits_approval=asks,
                edited=edited,
            )
            if not asks:
                yield from self._emit(proposal)
                yield from self._emit(Decision(index, "run", sha, "auto"))
                return code, sha
            try:
                answer = yield from self._emit(proposal)
            except KeyboardInterrupt as exc:  # Ctrl-C at the question: stop, run nothing
                self._why_interrupted(exc)
                yield from self._emit(Decision(index, "quit", sha, "user", "interrupted"))
                return Outcome(NOT_RUN_STOPPED, interrupted=True)
            answer = answer or Approval("decline", reason="no answer")
            if answer.kind == "edit" and answer.code is not None:
                code = answer.code
                edited = True
                yield from self._emit(Decision(index, "edited", code_sha256(code), "user"))
                continue
            if answer.kind == "decline":
                yield from self._emit(Decision(index, "declined", sha, "user", answer.reason))
                return Outcome(format_result_for_model(exit_code=None, declined=True))
            if answer.kind == "quit":
                yield from self._emit(Decision(index, "quit", sha, "user", answer.reason))
                self._quit_reason = answer.reason or "the user quit"
                return Outcome(NOT_RUN_STOPPED, quit=True)
            if answer.sha256 is not None and answer.sha256 != sha:
                # An asynchronous client approved other code than this: never run that.
                yield from self._emit(
                    Decision(index, "declined", sha, "user", "approved a different sha256")
                )
                return Outcome(format_result_for_model(exit_code=None, declined=True))
            if answer.kind == "always":
                self.auto_run = True
            yield from self._emit(Decision(index, "run", sha, "user"))
            return code, sha

    def _execute(
        self, index: int, language: Language, code: str
    ) -> Generator[Event, Approval | None, ExecResult | None]:
        """Run a block on a worker thread, yielding its output live. None if interrupted."""
        items: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self.runner.run(
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
        self._whole = {"stdout": Kept(), "stderr": Kept()}
        decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
        }
        try:
            while True:
                kind, stream, data = items.get()
                if kind == "done":
                    break
                if kind == "status":
                    yield from self._emit(Notice(stream))
                    continue
                self._whole[stream].add(data)
                text = decoders[stream].decode(data)
                if text:
                    yield BlockOutput(index, stream, text)  # type: ignore[arg-type]
        except KeyboardInterrupt as exc:
            self._why_interrupted(exc)
            # Kill the block and wait for its container to go; a second Ctrl-C (or a SIGTERM)
            # meanwhile must not cut that short: it is held, and raised once the result is
            # recorded (``_report``).
            held: list[int] = []
            with signals_deferred(held):
                self.runner.cancel()
                worker.join(timeout=30)
            self._interrupted_again = bool(held)
            return None
        except GeneratorExit:
            self.runner.cancel()
            worker.join(timeout=30)
            raise
        worker.join()
        if "error" in box:
            raise box["error"]
        result: ExecResult = box["result"]
        return result

    def _result_room(self) -> int:
        return result_room(self.messages, self._tools(), self._budget())

    def _keep_whole_output(self, index: int, result: ExecResult, max_chars: int) -> str:
        """When the model gets only part of a stream, keep the whole of it where a later block
        can read it, and say where (a note appended to the result)."""
        notes: list[str] = []
        for stream, text, cut in (
            ("stdout", result.stdout, result.stdout_cut),
            ("stderr", result.stderr, result.stderr_cut),
        ):
            if len(text) <= max_chars and not cut:
                continue
            kept = self._whole[stream]
            where = None
            if self.outputs is not None and kept.data:
                session = self.transcript.path.stem if self.transcript else "session"
                where = self.outputs.save(f"{session}-block{index}.{stream}", bytes(kept.data))
            if where:
                more = f" (its first {len(kept.data)} bytes)" if kept.dropped else ""
                notes.append(f"the whole {stream}{more} is in {where}")
        return ("\n[oi] " + "; ".join(notes)) if notes else ""

    def _report(
        self, index: int, language: Language, sha: str, result: ExecResult | None
    ) -> Generator[Event, Approval | None, Outcome]:
        """Tell the person and the model how the block ended."""
        if result is None:
            for_model = "interrupted by the user (Ctrl-C): the block was killed"
            yield from self._emit(
                BlockResult(index, language.value, sha, None, False, False, 0.0, True, for_model)
            )
            if self._interrupted_again:
                self._interrupted_again = False
                raise KeyboardInterrupt
            return Outcome(for_model, interrupted=True)
        if result.code_sha256 != sha:  # the product rule: what runs is what was approved
            raise ConfigError(
                f"internal error: block {index} ran code that differs from the approved hash"
            )
        box = self.runner.describe(language)
        per_stream = self._result_room() // (2 if result.stdout and result.stderr else 1)
        max_chars = max(MIN_RESULT_CHARS // 2, min(self.settings.max_output, per_stream))
        for_model = result_for_model(result, box, max_chars)
        for_model += self._keep_whole_output(index, result, max_chars)
        yield from self._emit(
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
        failed = (
            result.exit_code != 0
            or result.timed_out
            or result.oom_killed
            or result.workdir_exceeded
        )
        key = (
            sha,
            result.exit_code,
            result.timed_out,
            result.oom_killed,
            result.workdir_exceeded,
            result.stdout,
            result.stderr,
        )
        return Outcome(for_model, failure_key=key if failed else None)
