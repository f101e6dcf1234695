"""The one boundary between oi and docker-py: connecting, and mapping docker's errors.

Every call into docker-py goes through ``engine_errors`` so that people see one clear line
(what failed, where, the fix) instead of a requests/urllib3 traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from orchestrator.errors import (
    EngineUnavailableError,
    ImageMissingError,
    RuntimeMissingError,
    SandboxError,
)

ENGINE_FIX = (
    "start the Docker engine ('sudo make setup' installs and starts one on Debian, or "
    "'sudo systemctl start docker'), or point DOCKER_HOST at a running engine"
)


def engine_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Convert docker-py/requests exceptions raised while doing ``action`` into oi errors."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageMissingError(
            f"{action}: image not found ({exc.explanation}); run 'oi images build'"
        ) from exc
    except docker.errors.APIError as exc:
        explanation = str(exc.explanation or exc)
        if "unknown runtime" in explanation.lower() or "invalid runtime" in explanation.lower():
            raise RuntimeMissingError(
                f"{action}: {explanation}: the gVisor runtime is not registered with Docker, and "
                "oi will not fall back to a weaker one; install runsc and register it in "
                "/etc/docker/daemon.json ('sudo make setup' does), or use --isolation runc"
            ) from exc
        raise SandboxError(f"{action}: Docker engine error: {explanation}") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise EngineUnavailableError(
            f"{action}: no Docker engine answers at {engine_url()}; fix: {ENGINE_FIX}"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailableError(
            f"{action}: the Docker engine at {engine_url()} failed: {exc}; fix: {ENGINE_FIX}"
        ) from exc
    except urllib3.exceptions.HTTPError as exc:  # a stream (an image build) cut mid-way
        raise EngineUnavailableError(
            f"{action}: the Docker engine at {engine_url()} closed the connection ({exc}); "
            f"fix: {ENGINE_FIX}"
        ) from exc


def connect(timeout: float = 120.0) -> docker.DockerClient:
    """The one production factory for a Docker client (``DOCKER_HOST`` aware)."""
    with engine_errors("connecting to Docker"):
        return docker.DockerClient.from_env(timeout=int(timeout))


def engine_versions(client: docker.DockerClient) -> dict[str, Any]:
    with engine_errors("asking the Docker engine for its version"):
        return dict(client.version())
