"""The server's sessions, per user: create, list, resume, delete; per-user limits.

Each user has a folder of their own under the workspaces folder::

    WORKSPACES/<user>/data/sessions/<id>.jsonl   the session records (never mounted)
    WORKSPACES/<user>/work/<id>/                 one workdir per session (mounted at /workspace)
    WORKSPACES/<user>/data/envs/session-<id>/    its environment (pip, npm, Python state)
    WORKSPACES/<user>/mcp/                       the workdir of their MCP tools

A session is found only among its user's own records and open sessions, so another user's id
answers exactly as an id that does not exist (404). Deleting a session removes its record,
workdir and environment; environments unused for ``KEEP_DAYS`` go when the server starts
(``sweep_user_envs``), as ``oi gc`` sweeps the data dir's. Sessions are built by
``wiring.open_session`` from the server's ``Loaded`` with the workdir and data dir replaced
(the admin policy is applied again), the audit log naming the server user. Blocks of one user
wait in line beyond ``max_concurrent_blocks`` (``GatedRunner``); the admin's host-wide quotas
still apply below that.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ConflictError, LimitError, NotFoundError, OiError
from orchestrator.fsafe import remove_tree
from orchestrator.languages import Language
from orchestrator.loading import Loaded
from orchestrator.protocols import BlockRunner, OutputCallback, StatusCallback
from orchestrator.sandbox.config import SandboxDescription, SessionEnvScope
from orchestrator.sandbox.container import ExecResult, new_session_id
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import USED_SUFFIX, env_key, sweep_envs
from orchestrator.server.files import Workdir
from orchestrator.server.mcp_tools import McpWorkspace
from orchestrator.server.turns import Turn
from orchestrator.server.users import User
from orchestrator.transcript import list_sessions, session_path
from orchestrator.wiring import Opened, open_session

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
WAIT_POLL_S = 0.2


class GatedRunner:
    """A ``BlockRunner`` that runs a block only while its user has a slot free (a server
    user's ``max_concurrent_blocks``); a cancel also ends the wait."""

    def __init__(self, inner: BlockRunner, slots: threading.BoundedSemaphore, limit: int) -> None:
        self.inner = inner
        self._slots = slots
        self._limit = limit
        self._cancelled = threading.Event()

    def warm(self, language: Language) -> None:
        self.inner.warm(language)

    def describe(self, language: Language) -> SandboxDescription:
        return self.inner.describe(language)

    def cancel(self) -> None:
        self._cancelled.set()
        self.inner.cancel()

    def run(
        self,
        language: Language,
        code: str | bytes,
        on_output: OutputCallback | None = None,
        on_status: StatusCallback | None = None,
    ) -> ExecResult:
        self._cancelled.clear()
        if not self._slots.acquire(blocking=False):
            if on_status is not None:
                on_status(
                    f"waiting for a sandbox slot: your {self._limit} block(s) at once are "
                    "running in other sessions"
                )
            while not self._slots.acquire(timeout=WAIT_POLL_S):
                if self._cancelled.is_set():
                    raise KeyboardInterrupt  # stopped while in line: nothing ran
        try:
            return self.inner.run(language, code, on_output, on_status)
        finally:
            self._slots.release()


@dataclass(eq=False)
class LiveSession:
    id: str
    user: str
    workdir: Path
    opened: Opened
    runner: GatedRunner
    created: float
    title: str = ""
    turn: Turn | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)  # last opened or sent a message

    def state(self) -> str:
        if self.turn is None or self.turn.done.is_set():
            return "idle"
        return "awaiting approval" if self.turn.pending is not None else "running"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "workdir": str(self.workdir),
            "state": self.state(),
            "created": self.created,
            "live": True,
        }

    def start_turn(self, text: str) -> Turn:
        with self.lock:
            if self.turn is not None and not self.turn.done.is_set():
                raise ConflictError(
                    "this session is still working on a message; wait for its end event "
                    "or stop it (POST .../stop)"
                )
            if not self.title:
                self.title = text.strip().splitlines()[0][:80] if text.strip() else ""
            self.used = time.monotonic()
            self.turn = Turn(self.opened.session, self.runner.cancel, text).start()
            return self.turn

    def close(self) -> None:
        if self.turn is not None and not self.turn.done.is_set():
            self.turn.stop("the session was closed")
            self.turn.done.wait(30)
        self.opened.close()


Opener = Callable[..., Opened]


def sweep_user_envs(workspaces: Path) -> list[str]:
    """Remove every user's environments unused for ``KEEP_DAYS`` (``oi gc`` sweeps only the
    data dir's); the names removed, as ``user/key``."""
    removed = []
    for envs in sorted(workspaces.glob("*/data/envs")):
        user = envs.parent.parent.name
        removed += [f"{user}/{key}" for key in sweep_envs(envs)]
    return removed


class Hub:
    """Every live session of a server, and each user's folders."""

    def __init__(
        self,
        loaded: Loaded,
        workspaces: Path,
        *,
        opener: Opener = open_session,
        docker_client: Any = None,
        model: Any = None,
    ) -> None:
        self.loaded = loaded
        self.workspaces = workspaces
        self._opener = opener
        self._docker = docker_client
        self._model = model
        self._live: dict[tuple[str, str], LiveSession] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._mcp: dict[str, tuple[McpWorkspace, Sandbox]] = {}
        self._lock = threading.RLock()  # slots() is asked for while a session is opened

    # --- folders ------------------------------------------------------------------------------

    def user_root(self, user: User) -> Path:
        root = self.workspaces / user.name
        for sub in ("", "data", "work", "mcp"):
            (root / sub).mkdir(mode=0o700 if sub in ("", "data") else 0o755, exist_ok=True)
        return root

    def sessions_dir(self, user: User) -> Path:
        return self.user_root(user) / "data" / "sessions"

    def user_loaded(self, user: User, workdir: Path) -> Loaded:
        return self.loaded.replace(workdir=workdir, data_dir=self.user_root(user) / "data")

    def slots(self, user: User) -> threading.BoundedSemaphore:
        with self._lock:
            if user.name not in self._slots:
                self._slots[user.name] = threading.BoundedSemaphore(
                    user.limits.max_concurrent_blocks
                )
            return self._slots[user.name]

    # --- sessions -----------------------------------------------------------------------------

    def _open(self, user: User, session_id: str, *, resume: bool) -> LiveSession:
        self._make_room(user)
        workdir = self.user_root(user) / "work" / session_id
        workdir.mkdir(mode=0o755, exist_ok=True)
        limit = user.limits.max_concurrent_blocks
        holder: dict[str, GatedRunner] = {}

        def wrap(inner: BlockRunner) -> BlockRunner:
            holder["runner"] = GatedRunner(inner, self.slots(user), limit)
            return holder["runner"]

        opened = self._opener(
            self.user_loaded(user, workdir),
            resume=session_id if resume else None,
            session_id=None if resume else session_id,
            docker_client=self._docker,
            model=self._model,
            wrap_runner=wrap,
            audit_user=user.name,
        )
        live = LiveSession(session_id, user.name, workdir, opened, holder["runner"], time.time())
        self._live[(user.name, session_id)] = live
        return live

    def _make_room(self, user: User) -> None:
        """At ``max_sessions`` open sessions, close the one of ``user``'s idle longest (its
        record stays: opening it again resumes it); if every one is working, refuse."""
        mine = [s for (name, _), s in self._live.items() if name == user.name]
        if len(mine) < user.limits.max_sessions:
            return
        idle = sorted((s for s in mine if s.state() == "idle"), key=lambda s: s.used)
        if not idle:
            raise LimitError(
                f"your {len(mine)} open session(s) are all working and your limit is "
                f"{user.limits.max_sessions} (max_sessions): wait for one to finish, stop one, "
                "or delete one"
            )
        for live in idle[: len(mine) - user.limits.max_sessions + 1]:
            del self._live[(user.name, live.id)]
            live.close()

    def create(self, user: User, title: str = "") -> LiveSession:
        with self._lock:
            live = self._open(user, new_session_id(), resume=False)
        live.title = title[:200]
        return live

    def get(self, user: User, session_id: str, *, resume: bool = True) -> LiveSession:
        """A session of ``user``: open, or resumed from its record; else ``NotFoundError``."""
        if not _ID.match(session_id):
            raise NotFoundError("no such session")
        with self._lock:
            live = self._live.get((user.name, session_id))
            if live is not None:
                live.used = time.monotonic()
                return live
            if not resume or not session_path(self.sessions_dir(user), session_id).is_file():
                raise NotFoundError(f"no session {session_id} of yours")
            return self._open(user, session_id, resume=True)

    def record_path(self, user: User, session_id: str) -> Path:
        path = session_path(self.sessions_dir(user), session_id) if _ID.match(session_id) else None
        if path is None or not path.is_file() or path.is_symlink():
            raise NotFoundError(f"no session {session_id} of yours")
        return path

    def list(self, user: User) -> list[dict[str, Any]]:
        """Newest first: live sessions and recorded ones."""
        with self._lock:
            live = {sid: s for (name, sid), s in self._live.items() if name == user.name}
        rows = [s.summary() for s in live.values()]
        for info in list_sessions(self.sessions_dir(user)):
            if info.session_id in live:
                continue
            rows.append(
                {
                    "id": info.session_id,
                    "title": info.task[:80],
                    "workdir": str(self.user_root(user) / "work" / info.session_id),
                    "state": info.status,
                    "created": info.started,
                    "live": False,
                }
            )
        for row in rows:
            if row["live"] and not row["title"]:
                row["title"] = "(new session)"
        return sorted(rows, key=lambda row: row["created"], reverse=True)

    def env_folders(self, user: User, session_id: str) -> tuple[Path, ...]:
        """Where the session's environment may be (``sandbox/session_env.py``), with the
        stamps beside them: keyed by the session, or by its workdir (one per session here
        too), whichever ``session_env`` the server ran with when the session was used."""
        workdir = self.user_root(user) / "work" / session_id
        envs = self.user_loaded(user, workdir).settings.data_dir / "envs"
        scopes: tuple[SessionEnvScope, ...] = ("session", "workdir")
        keys = [env_key(scope, session_id, workdir, os.getuid()) for scope in scopes]
        return tuple(envs / (key + end) for key in keys if key for end in ("", USED_SUFFIX))

    def delete(self, user: User, session_id: str) -> None:
        """Close the session and remove its record, workdir and environment (404 unless it is
        ``user``'s)."""
        with self._lock:
            live = self._live.pop((user.name, session_id), None)
        if live is None:
            self.record_path(user, session_id)  # 404 unless it is theirs
        else:
            live.close()
        folder = self.user_root(user)
        for path in (
            session_path(self.sessions_dir(user), session_id),
            *self.env_folders(user, session_id),
            folder / "work" / session_id,
        ):
            try:
                remove_tree(path)
            except (OiError, OSError):
                continue

    def mcp_workspace(self, user: User) -> McpWorkspace:
        """The user's MCP workdir and sandbox (made on first use, kept until the server ends)."""
        with self._lock:
            known = self._mcp.get(user.name)
            if known is not None:
                return known[0]
            workdir = self.user_root(user) / "mcp"
            loaded = self.user_loaded(user, workdir)
            config = replace(loaded.sandbox_config(), audit_user=user.name)
            sandbox = Sandbox.from_config(config, client=self._docker)
            runner = GatedRunner(sandbox, self.slots(user), user.limits.max_concurrent_blocks)
            space = McpWorkspace(runner, Workdir(workdir), loaded.settings.max_output)
            self._mcp[user.name] = (space, sandbox)
            return space

    def close(self) -> None:
        with self._lock:
            sessions = list(self._live.values())
            self._live.clear()
            sandboxes = [sandbox for _, sandbox in self._mcp.values()]
            self._mcp.clear()
        for sandbox in sandboxes:
            sandbox.close()
        for live in sessions:
            try:
                live.close()
            except OiError:
                continue
