"""The batch runner (I/O): planned tasks, ``concurrency`` at a time, each on its own worker
thread with its own sandbox, model client and session record; events for the CLI to render.

Layout of ``--out DIR`` (0700; every file in it 0600: they hold block output)::

    DIR/summary.json              the JSON summary of the last run
    DIR/<task id>/workdir/        the task's copy of its workdir, mounted at /workspace
    DIR/<task id>/session.jsonl   the session record (``oi replay DIR/<task id>/session.jsonl``)
    DIR/<task id>/log.txt         a readable log: model text, code, output, the check
    DIR/<task id>/result.json     the task's result (what ``--resume`` reads)

Only ``workdir/`` is mounted into sandboxes, so whatever a block creates there (symlinks to
host files, FIFOs) never sits where oi writes or reads its own files.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.batch.plan import PlannedTask
from orchestrator.batch.report import (
    TAIL_CHARS,
    CheckOutcome,
    StopKind,
    TaskResult,
    judge,
)
from orchestrator.errors import OiError
from orchestrator.events import (
    BlockOutput,
    BlockResult,
    CodeProposed,
    Event,
    ModelReply,
    Notice,
    SessionEnded,
)
from orchestrator.fsafe import copy_tree, remove_tree, write_atomic, write_inline_files

if TYPE_CHECKING:
    import docker

    from orchestrator.protocols import ChatModel
    from orchestrator.sandbox.container import ExecResult
    from orchestrator.sandbox.runner import Sandbox
    from orchestrator.settings import Settings


@dataclass(frozen=True)
class TaskStarted:
    task_id: str


@dataclass(frozen=True)
class TaskFinished:
    result: TaskResult


@dataclass(frozen=True)
class BatchNotice:
    message: str


BatchEvent = TaskStarted | TaskFinished | BatchNotice


@dataclass(frozen=True)
class BatchReport:
    results: list[TaskResult]  # in the tasks file's order
    interrupted: bool
    started_at: float
    duration_s: float


class _Control:
    """Shared between a task's worker thread and the runner: stop requests and the sandbox."""

    def __init__(self, planned: PlannedTask, deadline: float) -> None:
        self.planned = planned
        self.deadline = deadline
        self.stopped: StopKind | None = None
        self.sandbox: Sandbox | None = None
        self.session_id: str | None = None

    def stop(self, kind: StopKind) -> None:
        if self.stopped is None:
            self.stopped = kind
        self.cancel()

    def cancel(self) -> None:
        sandbox = self.sandbox
        if sandbox is not None:
            with contextlib.suppress(Exception):
                sandbox.cancel()


class TaskLog:
    """The readable log of one task (``log.txt``), and the tail kept for the reports."""

    def __init__(self, path: Path, tail_chars: int = TAIL_CHARS) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(path, flags, 0o600), "w", encoding="utf-8")
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._tail_chars = tail_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, text: str) -> None:
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len - len(self._tail[0]) >= self._tail_chars:
            self._tail_len -= len(self._tail.popleft())

    def write_bytes(self, _stream: str, data: bytes) -> None:
        self.write(self._decoder.decode(data))

    def event(self, event: Event) -> None:
        if isinstance(event, ModelReply):
            self.write(f"\n## model\n{event.text.rstrip()}\n")
        elif isinstance(event, CodeProposed):
            self.write(f"\n## block {event.index} ({event.language}) sha256 {event.sha256}\n")
            self.write(event.code.rstrip() + "\n## output\n")
        elif isinstance(event, BlockOutput):
            self.write(event.text)
        elif isinstance(event, BlockResult):
            self.write(f"\n## block {event.index}: {event.for_model.splitlines()[0]}\n")
        elif isinstance(event, Notice):
            self.write(f"\n## oi: {event.message}\n")
        elif isinstance(event, SessionEnded):
            self.write(f"\n## {event.status}: {event.reason}\n")

    def tail(self) -> str:
        text = "".join(self._tail)
        return text[-self._tail_chars :]

    def close(self) -> None:
        self._file.close()


DockerFactory = Callable[[], "docker.DockerClient"]
ModelFactory = Callable[["Settings"], "ChatModel"]
ENGINE_WAIT_S = 120.0  # how long a task waits for a Docker engine that went away (a restart)
STOP_GRACE_S = 20.0  # how long Ctrl-C waits for running tasks to stop before forcing cleanup
_POLL_S = 0.2


class BatchRunner:
    """Runs planned tasks, ``concurrency`` at a time, each on its own worker thread with its
    own sandbox, model client and session record. ``run()`` yields ``BatchEvent``s and
    returns a ``BatchReport``; Ctrl-C (a ``KeyboardInterrupt`` raised in or thrown into it)
    stops every task, removes their containers and returns the partial report."""

    def __init__(
        self,
        tasks: Sequence[PlannedTask],
        *,
        out_dir: Path,
        concurrency: int,
        docker_factory: DockerFactory,
        model_factory: ModelFactory | None = None,
        tasks_file: str = "",
        engine_wait_s: float = ENGINE_WAIT_S,
    ) -> None:
        self.tasks = list(tasks)
        self.out_dir = out_dir
        self.concurrency = max(1, concurrency)
        self._docker_factory = docker_factory
        self._model_factory = model_factory
        self._tasks_file = tasks_file
        self._done: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.engine_wait_s = engine_wait_s

    # --- the main loop (runs on the caller's thread) ----------------------------------------

    def run(self) -> Generator[BatchEvent, None, BatchReport]:
        started_at = time.time()
        clock = time.monotonic()
        results: dict[str, TaskResult] = {}
        pending: deque[PlannedTask] = deque()
        for planned in self.tasks:
            if planned.kept is not None:
                results[planned.spec.id] = planned.kept
            else:
                pending.append(planned)
        running: dict[str, _Control] = {}
        seen_notices: set[str] = set()
        interrupted = False
        try:
            for planned in self.tasks:
                if planned.kept is not None:
                    yield TaskFinished(planned.kept)
            while pending or running:
                while pending and len(running) < self.concurrency:
                    planned = pending.popleft()
                    control = _Control(planned, time.monotonic() + planned.budget_s)
                    running[planned.spec.id] = control
                    threading.Thread(
                        target=self._worker,
                        args=(control,),
                        name=f"oi-batch-{planned.spec.id}",
                        daemon=True,  # Ctrl-C must not wait on a model request forever
                    ).start()
                    yield TaskStarted(planned.spec.id)
                self._watch(running)
                try:
                    kind, task_id, payload = self._done.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if kind == "notice":
                    if payload not in seen_notices:
                        seen_notices.add(payload)
                        yield BatchNotice(payload)
                    continue
                running.pop(task_id, None)
                results[task_id] = payload
                yield TaskFinished(payload)
        except KeyboardInterrupt:
            interrupted = True
            for result in self._stop_all(running):
                results[result.task_id] = result
                yield TaskFinished(result)
        ordered: list[TaskResult] = []
        for planned in self.tasks:
            found = results.get(planned.spec.id)
            if found is None:
                found = TaskResult(
                    planned.spec.id,
                    "skipped",
                    "not started: the batch was interrupted (Ctrl-C)",
                    digest=planned.spec.digest(),
                )
            ordered.append(found)
        return BatchReport(ordered, interrupted, started_at, time.monotonic() - clock)

    def _watch(self, running: Mapping[str, _Control]) -> None:
        now = time.monotonic()
        for control in running.values():
            if control.stopped is None and now > control.deadline:
                control.stop("budget")
            elif control.stopped is not None:
                control.cancel()  # again: a block may have started since the last try

    def _stop_all(self, running: dict[str, _Control]) -> list[TaskResult]:
        """Ctrl-C: stop every running task, wait a little for them, then clean up by force."""
        for control in running.values():
            control.stop("interrupt")
        results: list[TaskResult] = []
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while running and time.monotonic() < deadline:
                try:
                    kind, task_id, payload = self._done.get(timeout=_POLL_S)
                except queue.Empty:
                    self._watch(running)
                    continue
                if kind == "done" and running.pop(task_id, None) is not None:
                    results.append(payload)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting, clean up by force below
        for task_id, control in running.items():
            self._remove_containers(control)
            results.append(
                TaskResult(
                    task_id,
                    "skipped",
                    "interrupted (Ctrl-C); it was still stopping when oi exited",
                    digest=control.planned.spec.digest(),
                )
            )
        return results

    def _engine(self, control: _Control) -> Any:
        """A Docker client that answers: when the engine is down (restarting), wait for it,
        bounded by ``engine_wait_s`` and the task's stop, instead of failing the whole queue
        in no time."""
        from orchestrator.errors import EngineUnavailableError, SandboxError  # noqa: PLC0415
        from orchestrator.sandbox.docker import engine_errors  # noqa: PLC0415

        waited_since: float | None = None
        while True:
            try:
                client = self._docker_factory()
                with engine_errors("reaching the Docker engine"):
                    client.ping()
                return client
            except SandboxError as exc:
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    self._done.put(
                        (
                            "notice",
                            control.planned.spec.id,
                            f"the Docker engine does not answer ({_first_line(exc)}); tasks wait "
                            f"up to {self.engine_wait_s:g} s for it to come back",
                        )
                    )
                if now - waited_since >= self.engine_wait_s or control.stopped is not None:
                    raise EngineUnavailableError(
                        f"the Docker engine did not come back within {self.engine_wait_s:g} s "
                        f"({_first_line(exc)}); start it (sudo systemctl start docker) and "
                        "rerun with --resume"
                    ) from None
                time.sleep(min(2.0, self.engine_wait_s / 10))

    def _remove_containers(self, control: _Control) -> None:
        if control.session_id is None:
            return
        from orchestrator.sandbox.spec import LABEL_SESSION  # noqa: PLC0415

        with contextlib.suppress(Exception):
            client = self._docker_factory()
            try:
                for container in client.api.containers(
                    all=True, filters={"label": f"{LABEL_SESSION}={control.session_id}"}
                ):
                    client.api.remove_container(container["Id"], force=True, v=True)
            finally:
                client.close()

    # --- one task (runs on its worker thread) -------------------------------------------------

    def _worker(self, control: _Control) -> None:
        spec = control.planned.spec
        try:
            result = self._run_task(control)
        except BaseException as exc:  # a worker must always report back
            result = TaskResult(
                spec.id,
                "error",
                f"internal error: {type(exc).__name__}: {exc}",
                digest=spec.digest(),
            )
        self._done.put(("done", spec.id, result))

    def _run_task(self, control: _Control) -> TaskResult:
        from orchestrator.sandbox.container import new_session_id  # noqa: PLC0415

        planned = control.planned
        spec = planned.spec
        task_dir = self.out_dir / spec.id
        started_at = time.time()
        clock = time.monotonic()
        session_id = new_session_id() + "-" + spec.id[:40]
        control.session_id = session_id
        base: dict[str, Any] = {
            "task_id": spec.id,
            "session_id": session_id,
            "digest": spec.digest(),
        }
        log: TaskLog | None = None
        client: Any = None
        status: str | None = None
        session_reason = ""
        check: CheckOutcome | None = None
        blocks = 0
        try:
            remove_tree(task_dir)
            task_dir.mkdir(mode=0o700)  # it holds the record and log: block output
            workdir = task_dir / "workdir"
            if spec.workdir is not None:
                copy_tree(spec.workdir, workdir, owner=planned.owner)
            else:
                workdir.mkdir(mode=0o755)
                if planned.owner is not None:
                    os.chown(workdir, *planned.owner)
            write_inline_files(workdir, spec.files, owner=planned.owner)
            log = TaskLog(task_dir / "log.txt")
            log.write(f"# task {spec.id}\n{spec.prompt}\n")
            client = self._engine(control)
            status, session_reason, blocks = self._run_session(
                control, client, session_id, task_dir, log
            )
            if status == "finished" and spec.check is not None and control.stopped is None:
                check = self._run_check(control, log)
            outcome, reason = judge(
                session_status=status,
                session_reason=session_reason,
                check_command=spec.check,
                check=check,
                stopped=control.stopped,
                budget_s=planned.budget_s,
            )
        except Exception as exc:
            if isinstance(exc, OiError):
                reason = str(exc)
            else:
                reason = f"internal error: {type(exc).__name__}: {exc}"
                if log is not None:
                    log.write("\n## internal error\n" + traceback.format_exc())
            outcome = "error"
            if control.stopped is not None:  # stopping it is what failed it, not the engine
                outcome, reason = judge(
                    session_status=status,
                    session_reason=session_reason,
                    check_command=spec.check,
                    check=check,
                    stopped=control.stopped,
                    budget_s=planned.budget_s,
                )
        finally:
            if control.sandbox is not None:
                with contextlib.suppress(Exception):
                    control.sandbox.close()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        if log is not None:
            log.write(f"\n## {outcome}: {reason}\n")
        result = TaskResult(
            outcome=outcome,
            reason=reason,
            duration_s=round(time.monotonic() - clock, 3),
            session_status=status,
            check_exit_code=check.exit_code if check else None,
            blocks=blocks,
            output_tail=log.tail() if log else "",
            started_at=started_at,
            **base,
        )
        return self._finish(task_dir, result, log)

    def _finish(self, task_dir: Path, result: TaskResult, log: TaskLog | None) -> TaskResult:
        if log is not None:
            log.close()
        if task_dir.is_dir() and not task_dir.is_symlink():
            data = json.dumps(result.to_dict(), indent=2).encode() + b"\n"
            write_atomic(task_dir / "result.json", data, 0o600)
        return result

    def _run_session(
        self, control: _Control, client: Any, session_id: str, task_dir: Path, log: TaskLog
    ) -> tuple[str, str, int]:
        """Run the model's session to its end (or a stop); (status, reason, blocks run)."""
        from orchestrator.drive import drive  # noqa: PLC0415
        from orchestrator.wiring import announce_project_instructions, open_session  # noqa: PLC0415

        planned = control.planned
        opened = open_session(
            planned.loaded,
            session_id=session_id,
            record_path=task_dir / "session.jsonl",
            extra={
                "batch": {
                    "task_id": planned.spec.id,
                    "tasks_file": self._tasks_file,
                    "check": planned.spec.check,
                    "files": [list(item) for item in planned.spec.files],  # for `oi replay`
                }
            },
            docker_client=client,
            model=self._model_factory(planned.settings) if self._model_factory else None,
            relocate_hint="choose another --out folder",
            env_root=task_dir,  # its packages and Python state stay with the task's results
            on_model_wait=lambda message: self._done.put(("notice", planned.spec.id, message)),
        )
        control.sandbox = opened.sandbox
        ended: list[SessionEnded] = []

        def record(event: Event) -> None:
            log.event(event)
            if isinstance(event, SessionEnded):
                ended.append(event)

        render = announce_project_instructions(record, planned.loaded.instructions)

        try:
            if opened.sandbox.identity.warning:
                self._done.put(("notice", planned.spec.id, opened.sandbox.identity.warning))
            session = opened.session

            def stop() -> bool:
                if control.stopped is None:
                    return False
                why = "over budget" if control.stopped == "budget" else "interrupted"
                session.interrupt_reason = f"stopped by oi batch: {why}"
                return True

            # What Ctrl-C does in `oi run`, when the task is stopped: kills a running block.
            status = drive(session.send(planned.spec.prompt), render=render, stop=stop)
            return status, ended[-1].reason if ended else "", opened.session.totals.blocks
        finally:
            opened.transcript.close()

    def _run_check(self, control: _Control, log: TaskLog) -> CheckOutcome:
        from orchestrator.languages import Language  # noqa: PLC0415

        spec = control.planned.spec
        assert control.sandbox is not None and spec.check is not None
        log.write(f"\n## check: {spec.check}\n")
        # Not in the session's environment: programs the model's blocks installed or planted
        # there (a grep that always matches) must not judge them.
        checker = control.sandbox.without_env()
        try:
            result: ExecResult = checker.run(Language.SHELL, spec.check, on_output=log.write_bytes)
        finally:
            checker.close()
        log.write(f"\n## check exit code {result.shell_exit_code}\n")
        return CheckOutcome(
            result.exit_code, result.timed_out, result.oom_killed, control.planned.settings.timeout
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
