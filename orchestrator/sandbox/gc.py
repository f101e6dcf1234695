"""Reaping orphans: containers and networks labelled by an oi process that no longer runs.

A container (a sandbox or an allowlist proxy) or a network is an orphan when the process named
by its ``oi.pid`` label is gone, or when that pid now belongs to another process (its start
time differs from ``oi.pid_start``). Networks go after the containers that were on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import docker

from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.spec import LABEL_MANAGED, LABEL_PID, LABEL_PID_START, process_start_time

ProcessProbe = Callable[[int], str | None]
"""Returns a live process's start time, or None when no process has that pid."""


def probe_process(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace"):
            pass
    except OSError:
        return None
    return process_start_time(pid)


def is_orphan(labels: dict[str, str], probe: ProcessProbe) -> bool:
    """Pure decision: does this container's owning oi process still run?"""
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return True  # an oi container without an owner can only be a leftover
    started = probe(pid)
    if started is None:
        return True
    return started != labels.get(LABEL_PID_START, started)


@dataclass(frozen=True)
class SweepResult:
    removed: list[str]
    kept: int
    networks: list[str] = field(default_factory=list)


def sweep(client: docker.DockerClient, probe: ProcessProbe = probe_process) -> SweepResult:
    """Remove every oi-managed container whose oi process is gone."""
    with engine_errors("listing oi containers"):
        containers = client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=1"})
    removed: list[str] = []
    kept = 0
    for container in containers:
        labels = container.get("Labels") or {}
        if not is_orphan(labels, probe):
            kept += 1
            continue
        # Another process may be removing the same orphan: losing that race is fine.
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(container["Id"], force=True, v=True)
            removed.append(str(container["Id"]))
    return SweepResult(removed, kept, _sweep_networks(client, probe))


def _sweep_networks(client: docker.DockerClient, probe: ProcessProbe) -> list[str]:
    with engine_errors("listing oi networks"):
        networks = client.api.networks(filters={"label": f"{LABEL_MANAGED}=1"})
    removed = []
    for network in networks:
        labels = network.get("Labels") or {}
        if labels.get("oi.role") == "egress":
            continue  # the proxies' shared way out: kept (one small network)
        if is_orphan(labels, probe):
            # Still in use (a container of a live process on it) or gone meanwhile: leave it.
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_network(network["Id"])
                removed.append(str(network.get("Name") or network["Id"]))
    return removed
