"""Telling the engine's failures from the code's (sandbox/health.py), with a fake engine API."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from orchestrator.batch.report import judge
from orchestrator.sandbox.health import EngineProbe, ended_from_outside


class FakeApi:
    def __init__(self, actions: list[str], *, vanished: bool = False) -> None:
        self.actions = actions
        self.vanished = vanished
        self.asked: dict[str, Any] = {}

    def wait(self, container_id: str, timeout: int) -> dict[str, int]:
        if self.vanished:
            raise docker.errors.NotFound("no such container")
        return {"StatusCode": 143}

    def events(self, **kwargs: Any) -> list[dict[str, str]]:
        self.asked = kwargs
        return [{"Action": action, "status": action} for action in self.actions]


@pytest.mark.parametrize(
    ("actions", "vanished", "verdict"),
    [
        (["attach", "start", "die"], False, None),  # the block ended itself (kill $$, kill 1)
        (["start", "kill", "die"], False, "stopped from outside oi"),  # docker stop, shutdown
        (["kill", "kill", "die"], False, "stopped from outside oi"),  # SIGTERM, then SIGKILL
        ([], False, "engine restarted"),  # its event log starts anew after a restart
        (["start"], False, "engine restarted"),
        (["die"], True, "vanished"),
    ],
)
def test_ended_from_outside(actions: list[str], vanished: bool, verdict: str | None) -> None:
    api = FakeApi(actions, vanished=vanished)
    found = ended_from_outside(api, "c0ffee", since=1000.5)  # type: ignore[arg-type]
    assert (found is None) if verdict is None else (verdict in (found or ""))
    if not vanished:
        assert api.asked["filters"] == {"container": "c0ffee"} and api.asked["since"] == 999


def test_a_probe_that_cannot_reach_the_engine_says_no() -> None:
    class Down:
        def ping(self) -> bool:
            raise docker.errors.DockerException("connection refused")

    probe = EngineProbe(Down())
    assert probe.answers() is False
    assert "stopped answering" in str(probe.frozen())


def test_an_infrastructure_error_is_an_error_not_a_failure() -> None:
    outcome, reason = judge(
        session_status="error",
        session_reason="its container was stopped from outside oi",
        check_command="true",
        check=None,
        stopped=None,
        budget_s=60,
    )
    assert (outcome, reason) == ("error", "its container was stopped from outside oi")
