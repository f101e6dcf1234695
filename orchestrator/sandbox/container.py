"""One sandbox container's life below the runner: what a block's result is, a started container
waiting for its program, launching one, removing one, and holding stop signals while cleaning
up. ``runner.Sandbox`` builds on these; the pool hands out ``LiveContainer``s too.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import docker

from orchestrator.sandbox.bootstrap import speaks_protocol
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.spec import ContainerSpec
from orchestrator.sandbox.workdir_quota import WORKDIR_EXIT, WorkdirOverrun

TIMEOUT_EXIT = 124  # as timeout(1)
OOM_EXIT = 137  # as Docker: 128 + SIGKILL


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class ExecResult:
    """What happened to one block. Failed user code is data here, never an exception."""

    language: str
    exit_code: int
    stdout: str
    stderr: str
    stdout_cut: int  # bytes dropped from the middle of stdout (kept: head + tail)
    stderr_cut: int
    stdout_bytes: int
    stderr_bytes: int
    duration_s: float
    timed_out: bool
    oom_killed: bool
    container_id: str
    image: str
    image_id: str
    code_sha256: str
    workdir_overrun: WorkdirOverrun | None = None  # the workdir passed its session limit

    @property
    def truncated(self) -> bool:
        return bool(self.stdout_cut or self.stderr_cut)

    @property
    def workdir_exceeded(self) -> bool:
        return self.workdir_overrun is not None

    @property
    def shell_exit_code(self) -> int:
        """The exit code a shell would show: 124 on timeout, 137 on OOM, 73 when the workdir
        limit stopped the block (or it passed it), else the block's."""
        if self.timed_out:
            return TIMEOUT_EXIT
        if self.oom_killed:
            return OOM_EXIT
        if self.workdir_exceeded:
            return WORKDIR_EXIT
        return self.exit_code

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["truncated"] = self.truncated
        data["workdir_exceeded"] = self.workdir_exceeded
        return data


@dataclass
class LiveContainer:
    """A started container whose stdin/stdout/stderr are attached, waiting for its program."""

    id: str
    sock: socket.socket
    response: Any  # keeps the hijacked HTTP response (and so the socket) alive
    framed: bool = False  # runs bootstrap.py's wrapper (else: plain program-on-stdin protocol)
    greeted: bool = False  # the wrapper's greeting was already read (by the pool)
    preread: bytes = b""  # attach-stream bytes read before the block was sent
    ended: bool = False  # the block ended by itself and none of its processes is left


class Launcher(Protocol):
    """Hands out started, attached containers for a spec. A pool implements this too."""

    def launch(self, spec: ContainerSpec) -> LiveContainer: ...


class DirectLauncher:
    """Creates, attaches and starts a container on demand."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api

    def launch(self, spec: ContainerSpec) -> LiveContainer:
        with engine_errors(f"creating a {spec.language.value} sandbox from {spec.image}"):
            host_config = self._api.create_host_config(**spec.host_config)
            created = self._api.create_container(host_config=host_config, **spec.create_kwargs())
        container_id = str(created["Id"])
        try:
            with engine_errors("attaching to the sandbox"):
                raw = self._api.attach_socket(
                    container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
                )
            sock: socket.socket = getattr(raw, "_sock", raw)
            with engine_errors("starting the sandbox"):
                self._api.start(container_id)
        except BaseException:
            remove_container(self._api, container_id)
            raise
        return LiveContainer(
            container_id, sock, raw, framed=speaks_protocol(spec.command, spec.language)
        )


def remove_container(api: docker.APIClient, container_id: str) -> None:
    """Force-remove a container; never raises (the sweep catches what this misses)."""
    with contextlib.suppress(Exception), signals_deferred():
        api.remove_container(container_id, force=True, v=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop oi (Ctrl-C, a kill, a closed terminal): all end like Ctrl-C."""


@contextlib.contextmanager
def signals_deferred(received: list[int] | None = None) -> Iterator[None]:
    """Hold the stop signals while cleaning up, so that a second Ctrl-C (or a SIGTERM) cannot
    leak a container. Afterwards a held signal is raised as ``KeyboardInterrupt``, or, when the
    caller passes ``received``, only noted there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = [] if received is None else received
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held and received is None:
            raise KeyboardInterrupt
