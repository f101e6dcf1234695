"""Telling the engine's failures from the code's: a block that ended because the Docker engine
stopped, restarted or froze is an infrastructure error for the person, never a result for the
model ("exit 143" would be a made-up answer).

- **Killed from outside.** A block that died of a signal oi did not send (oi sends one only on
  a timeout, a cancel or the workdir limit) is checked against the engine's event log: a
  ``kill`` event means someone stopped it from outside (``docker stop``/``kill``, or the engine
  shutting down its containers); no ``die`` event at all for a container that has ended means
  the engine restarted meanwhile (its event log lives in memory). A block that signals itself
  (``kill $$``, even ``kill 1``) leaves a ``die`` and no ``kill`` event: its own result.
- **Frozen.** While a block is silent, oi pings the engine every ``QUIET_PING_S`` seconds with a
  short timeout; no answer means the engine is frozen (output could not reach oi either). A
  frozen engine is so reported within ``QUIET_PING_S + PING_TIMEOUT_S`` seconds of silence.
"""

from __future__ import annotations

import time
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.utils import kwargs_from_env

from orchestrator.errors import EngineUnavailableError
from orchestrator.sandbox.docker import ENGINE_FIX, engine_errors, engine_url

QUIET_PING_S = 10.0
PING_TIMEOUT_S = 5
SIGNALLED = range(129, 193)
"""Exit codes of a process killed by a signal (128 + its number)."""


class EngineLostError(EngineUnavailableError):
    """The engine stopped, restarted or froze while a block ran: its result is unknown."""


def lost(
    what: str, fix: str = "check the engine ('docker info'), then run it again"
) -> EngineLostError:
    return EngineLostError(
        f"{what}, so the block's result is unknown (nothing was given to the model); fix: {fix}"
    )


def ended_from_outside(api: docker.APIClient, container_id: str, since: float) -> str | None:
    """Why a block that died of a signal oi did not send ended, if the engine is to blame
    (see the module docstring); None when it was the block's own doing."""
    with engine_errors("the Docker engine went away while the block ran"):
        try:
            api.wait(container_id, timeout=30)  # its end is recorded once this returns
        except docker.errors.NotFound:
            return "its container vanished from the Docker engine"
        events = api.events(
            since=int(since) - 1,
            until=int(time.time()) + 1,
            filters={"container": container_id},
            decode=True,
        )
        actions = {str(event.get("Action") or event.get("status") or "") for event in events}
    if any(action.startswith("kill") for action in actions):
        return (
            "its container was stopped from outside oi (docker stop or kill, or the engine "
            "shutting down)"
        )
    if "die" not in actions:
        return "the Docker engine restarted while it ran"
    return None


class EngineProbe:
    """Pings the engine with a short timeout (its own client: the main one waits minutes)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def answers(self) -> bool:
        try:
            if self._client is None:
                self._client = docker.APIClient(timeout=PING_TIMEOUT_S, **kwargs_from_env())
            return bool(self._client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    def frozen(self) -> EngineLostError:
        return lost(
            f"the Docker engine at {engine_url()} stopped answering during the block (no reply "
            f"within {PING_TIMEOUT_S:g} s)",
            ENGINE_FIX,
        )
