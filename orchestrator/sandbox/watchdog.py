"""A block's limits hold without oi: a watchdog process outside the sandbox's reach.

oi enforces a block's wall-clock limit itself, but an oi that is killed (SIGKILL), frozen or
stuck can no longer do so, and its containers would run on until the next oi start or
``oi gc``. So each oi process that runs blocks starts one watchdog: a small process of its
own (``python -m orchestrator.sandbox.watchdog``) in its own session (Ctrl-C, a terminal
closing or a kill of oi's process group do not reach it), which the blocks cannot see or
signal (they live in their containers' pid namespaces). oi tells it, over a pipe:

    watch <container id> <deadline, epoch seconds>     a block started
    forget <container id>                              it ended and its container is going

The watchdog removes a container whose deadline passed (a block that outlived its timeout +
kill grace + a margin, because oi could not stop it), and when the pipe closes - oi ended, in
any way - it removes every container labelled with oi's pid and start time at once (nothing
reads their output any more), then exits. The bound it guarantees: a block runs at most its
timeout + kill grace + ``MARGIN_S``, whatever happens to oi; if the watchdog itself is killed,
the next oi start or ``oi gc`` removes what is left.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

MARGIN_S = 5.0
"""Added to a block's own deadline: oi's own timeout handling goes first."""
_POLL_S = 0.5


class Watchdog:
    """The oi side: starts the watchdog on first use and keeps its pipe."""

    def __init__(self, *, launch: Callable[[], subprocess.Popen[bytes]] | None = None) -> None:
        self._launch = launch or _launch
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._broken = False

    def watch(self, container_id: str, deadline: float) -> None:
        """The block in ``container_id`` must be gone by ``deadline`` (+ the margin)."""
        self._send(f"watch {container_id} {deadline + MARGIN_S:.3f}\n")

    def forget(self, container_id: str) -> None:
        self._send(f"forget {container_id}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                if self._process is None or self._process.poll() is not None:
                    self._process = self._launch()
                stdin = self._process.stdin
                assert stdin is not None
                stdin.write(line.encode())
                stdin.flush()
            except (OSError, ValueError):
                # No watchdog (it could not start or died): oi's own limits and the startup
                # sweep remain; never fail a block for it.
                self._broken = True

    def close(self) -> None:
        """oi is ending normally: the pipe closes, the watchdog sweeps and exits."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()


_process_watchdog: Watchdog | None = None
_process_lock = threading.Lock()


def process_watchdog() -> Watchdog:
    """This oi process's one watchdog (shared by all its sandboxes: its end-of-pipe sweep
    removes every container the process labelled). It is never closed by hand: when the
    process ends, in any way, the kernel closes the pipe."""
    global _process_watchdog  # noqa: PLW0603
    with _process_lock:
        if _process_watchdog is None:
            _process_watchdog = Watchdog()
        return _process_watchdog


def _launch() -> subprocess.Popen[bytes]:
    from orchestrator.sandbox.spec import process_start_time  # noqa: PLC0415

    pid = os.getpid()
    return subprocess.Popen(
        # -I: isolated, and started in /: nothing of the current folder (a repository, a
        # block's workdir) or of PYTHON* variables can stand in for a module it imports.
        [
            sys.executable,
            "-I",
            "-m",
            "orchestrator.sandbox.watchdog",
            str(pid),
            process_start_time(pid),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,  # not in oi's process group: Ctrl-C and kill -PGID miss it
        close_fds=True,
    )


class Watch:
    """The watchdog's state (pure but for the clock): containers and their deadlines."""

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}

    def feed(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "watch":
            with contextlib.suppress(ValueError):
                self.deadlines[parts[1]] = float(parts[2])
        elif len(parts) == 2 and parts[0] == "forget":
            self.deadlines.pop(parts[1], None)

    def due(self, now: float) -> list[str]:
        late = [cid for cid, deadline in self.deadlines.items() if deadline <= now]
        for cid in late:
            del self.deadlines[cid]
        return late


def run(
    pipe: IO[bytes],
    remove: Callable[[str], None],
    sweep: Callable[[], None],
    clock: Callable[[], float] = time.time,
) -> None:
    """The watchdog's loop: remove late containers; when the pipe ends, sweep and return."""
    watch = Watch()
    buffer = b""
    fd = pipe.fileno()
    while True:
        readable, _, _ = select.select([fd], [], [], _POLL_S)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                sweep()
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                watch.feed(line.decode(errors="replace"))
        for container_id in watch.due(clock()):
            remove(container_id)


def main(argv: list[str]) -> int:
    """``python -m orchestrator.sandbox.watchdog <oi pid> <oi start time>``."""
    import docker  # noqa: PLC0415
    import docker.errors  # noqa: PLC0415

    from orchestrator.sandbox.spec import LABEL_MANAGED, LABEL_PID, LABEL_PID_START  # noqa: PLC0415

    pid, start = argv[0], argv[1]
    labels = [f"{LABEL_MANAGED}=1", f"{LABEL_PID}={pid}", f"{LABEL_PID_START}={start}"]
    client = docker.DockerClient.from_env(timeout=60)

    def remove(container_id: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            # Only a container oi itself labelled as its own (a stray id changes nothing).
            info = client.api.inspect_container(container_id)
            mine = info["Config"]["Labels"] or {}
            if mine.get(LABEL_PID) == pid and mine.get(LABEL_PID_START) == start:
                client.api.remove_container(container_id, force=True, v=True)

    def sweep() -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            for container in client.api.containers(all=True, filters={"label": labels}):
                with contextlib.suppress(docker.errors.DockerException, OSError):
                    client.api.remove_container(container["Id"], force=True, v=True)

    run(sys.stdin.buffer, remove, sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
