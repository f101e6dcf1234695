"""The production wiring, in one place for every adapter (CLI, batch, replay, server): a
session's model client, sandbox and record from loaded settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.context import instructions_problem
from orchestrator.errors import ConfigError, ModelError, OiError
from orchestrator.events import CodeProposed, Event, Notice
from orchestrator.fsafe import write_beneath
from orchestrator.llm.client import ModelClient
from orchestrator.llm.instructions import Instructions
from orchestrator.llm.slots import BoundedModel, ModelSlots
from orchestrator.loading import Loaded
from orchestrator.protocols import BlockRunner, ChatModel
from orchestrator.records import RECORD_VERSION
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.container import new_session_id
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import env_key, state_key
from orchestrator.session import Session
from orchestrator.settings import Settings
from orchestrator.transcript import (
    Transcript,
    find_session,
    read_records,
    rebuild_history,
)


def model_client(settings: Settings) -> ModelClient:
    """The production model client: ``settings.api_base`` / ``settings.model`` with Qwen's
    sampling and the fault bounds of the settings (the SDK's own retries off)."""
    import openai  # noqa: PLC0415 - the SDK only when a model is talked to

    client = openai.OpenAI(
        base_url=settings.api_base,
        api_key=settings.api_key,
        timeout=openai.Timeout(settings.request_timeout, connect=settings.connect_timeout),
        max_retries=0,
    )
    return ModelClient(
        client,
        model=settings.model,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_tokens=settings.max_tokens,
        connect_timeout=settings.connect_timeout,
        first_token_timeout=settings.first_token_timeout,
        stream_idle_timeout=settings.stream_idle_timeout,
        request_timeout=settings.request_timeout,
        models_timeout=settings.models_timeout,
        retry_attempts=settings.retry_attempts,
        retry_deadline=settings.retry_deadline,
        retry_backoff=settings.retry_backoff,
    )


def bounded_model(settings: Settings, on_wait: Callable[[str], None] | None = None) -> BoundedModel:
    """The model client behind the per-user bound on requests in flight to its endpoint
    (``max_model_requests``; see ``llm/slots.py``). A request waits for a slot at most
    ``request_timeout`` seconds; ``on_wait`` is told once when it has to wait."""
    slots = ModelSlots(settings.api_base, settings.max_model_requests)
    return BoundedModel(
        model_client(settings), slots, wait_s=settings.request_timeout, on_wait=on_wait
    )


def check_instructions(instructions: Instructions, model: ChatModel, settings: Settings) -> None:
    """Refuse standing instructions the model's context cannot hold (a quarter of it), before
    anything runs; the server's context length when it says, else ``max_model_len``."""
    if instructions.empty:
        return
    try:
        length = model.model_max_len() or settings.max_model_len
    except ModelError:
        length = settings.max_model_len
    sources = ", ".join(piece.source for piece in instructions.pieces if piece.text.strip())
    problem = instructions_problem(
        instructions.size, sources, length, settings.max_tokens, framing=instructions.framing
    )
    if problem is not None:
        raise ConfigError(problem)


def project_instructions_notice(instructions: Instructions) -> str | None:
    """What the first approval screen of a session says when a project's instructions are in
    force (a cloned repository wrote them), or None."""
    sources = instructions.project_sources
    if not sources:
        return None
    return (
        f"instructions from {'; '.join(sources)} are in force for this session (%instructions "
        "in chat shows them); they add to yours and cannot change the sandbox below"
    )


def announce_project_instructions(
    render: Callable[[Event], None], instructions: Instructions
) -> Callable[[Event], None]:
    """``render``, which shows the project-instructions notice just before the session's first
    proposed block (on the approval screen); unchanged when there are none."""
    notice = project_instructions_notice(instructions)
    if notice is None:
        return render
    pending = [Notice(notice)]

    def wrapped(event: Event) -> None:
        if pending and isinstance(event, CodeProposed):
            render(pending.pop())
        render(event)

    return wrapped


def record_header(
    transcript: Transcript,
    *,
    session_id: str,
    settings: Settings,
    resumed: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """The first record of a session (and of each resumption): the one place it is written."""
    transcript.append(
        "session",
        v=RECORD_VERSION,
        session_id=session_id,
        resumed=resumed,
        oi_version=__version__,
        model=settings.model,
        api_base=settings.api_base,
        settings=settings.model_dump(mode="json", exclude={"api_key"}),
        **(extra or {}),
    )


OUTPUT_DIR = ".oi/output"
"""Where, in the workdir, a block's whole output is kept when the model got only part of it."""


@dataclass(frozen=True)
class WorkdirOutputs:
    """Keeps whole outputs in the workdir, where a later block can read them
    (``/workspace/.oi/output/...``); the folder ignores itself for git. Never through a link
    a block planted (``fsafe.write_beneath``)."""

    workdir: Path

    def save(self, name: str, data: bytes) -> str | None:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:120]
        try:
            write_beneath(self.workdir, ".oi/.gitignore", b"*\n", 0o644, dir_mode=0o755)
            write_beneath(self.workdir, f"{OUTPUT_DIR}/{safe}", data, 0o644, dir_mode=0o755)
        except OiError:
            return None  # keeping it is a courtesy: the model still gets its part
        return f"/workspace/{OUTPUT_DIR}/{safe}"


def recorded_workdir(settings: Settings, resume: str) -> Path | None:
    """The workdir a recorded session ran in (its first header), if the record says."""
    path = find_session(settings.sessions_dir, resume)
    for record in read_records(path):
        if record.get("type") == "session":
            workdir = (record.get("settings") or {}).get("workdir")
            return Path(workdir) if isinstance(workdir, str) and workdir else None
    return None


def session_config(loaded: Loaded, session_id: str, env_root: Path | None = None) -> SandboxConfig:
    """The sandbox config of one session: the loaded one, plus where its environment lives
    (``sandbox/session_env.py``; resuming a session finds the same one)."""
    settings = loaded.settings
    config = loaded.sandbox_config()
    key = env_key(settings.session_env, session_id, settings.workdir, os.getuid())
    if key is None:
        return config
    envs = env_root or settings.data_dir / "envs"
    sealed = state_key(envs, session_id) if config.python_state else None
    return dataclasses.replace(config, env_dir=envs / key, state_key=sealed)


@dataclass
class Opened:
    """A session ready to ``send``, with the sandbox and record it owns."""

    session: Session
    sandbox: Sandbox
    transcript: Transcript
    session_id: str

    def close(self) -> None:
        try:
            self.sandbox.close()
        finally:
            self.transcript.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_session(
    loaded: Loaded,
    *,
    resume: str | None = None,
    session_id: str | None = None,
    record_path: Path | None = None,
    extra: dict[str, Any] | None = None,
    docker_client: Any = None,
    model: ChatModel | None = None,
    relocate_hint: str | None = None,
    env_root: Path | None = None,
    on_model_wait: Callable[[str], None] | None = None,
    wrap_runner: Callable[[BlockRunner], BlockRunner] | None = None,
    audit_user: str | None = None,
) -> Opened:
    """Sandbox, model client and record from ``loaded``.

    With ``resume`` (a session id or unique prefix), the history comes from its record and new
    records are appended to the same file. ``record_path`` puts the record elsewhere than the
    data dir (batch keeps it beside the task's workdir; ``relocate_hint`` then says how to
    make room, e.g. "choose another --out folder"). ``env_root`` puts the session's
    environment elsewhere than the data dir's ``envs`` (batch keeps it with the task).
    ``on_model_wait`` is told when a model request waits for a slot (``max_model_requests``).
    Standing instructions too large for the model's context are refused here, before anything
    runs. A server passes ``wrap_runner`` (its per-user block gate around the sandbox) and
    ``audit_user`` (who the audit log names).
    """
    settings = loaded.settings
    model = model or bounded_model(settings, on_model_wait)
    check_instructions(loaded.instructions, model, settings)
    history = None
    if resume:
        path = find_session(settings.sessions_dir, resume)
        history = rebuild_history(list(read_records(path)))
        session_id = path.stem
        record_path = path
    session_id = session_id or new_session_id()
    # The record first: a full data dir fails here, before any container or model request.
    if record_path is not None:
        if relocate_hint:
            transcript = Transcript.open(record_path, relocate_hint=relocate_hint)
        else:
            transcript = Transcript.open(record_path)
    else:
        transcript = Transcript.create(settings.sessions_dir, session_id)
    try:
        config = session_config(loaded, session_id, env_root)
        if audit_user is not None:
            config = dataclasses.replace(config, audit_user=audit_user)
        sandbox = Sandbox.from_config(config, session_id=session_id, client=docker_client)
        try:
            record_header(
                transcript,
                session_id=session_id,
                settings=settings,
                resumed=bool(resume),
                extra=extra,
            )
            session = Session(
                model=model,
                runner=wrap_runner(sandbox) if wrap_runner else sandbox,
                settings=settings,
                transcript=transcript,
                history=history,
                outputs=WorkdirOutputs(settings.workdir),
                instructions=loaded.instructions,
            )
        except BaseException:
            sandbox.close()
            raise
    except BaseException:
        transcript.close()  # an empty record it created is removed
        raise
    return Opened(session, sandbox, transcript, session_id)
