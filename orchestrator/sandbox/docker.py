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


PERMISSION_FIX = (
    "join the 'docker' group ('sudo usermod -aG docker $USER', then log in again; it is "
    "root-equivalent), or run oi through your admin's sudo rule (README: admin guide)"
)


def _permission_denied(exc: BaseException) -> bool:
    """Whether the socket refused us (EACCES), anywhere in the exception's chain or text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PermissionError) or "Permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _socket_owner() -> str:
    """ "/var/run/docker.sock is root:docker 0660", or what is known of the socket."""
    url = engine_url()
    if not url.startswith("unix://"):
        return url
    path = url.removeprefix("unix://")
    try:
        info = os.stat(path)
    except OSError:
        return path
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415
    import stat  # noqa: PLC0415

    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{path} is {owner}:{group} {stat.S_IMODE(info.st_mode):04o}"


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
        if _permission_denied(exc):
            raise EngineUnavailableError(
                f"{action}: the Docker engine at {engine_url()} refused you (permission denied: "
                f"{_socket_owner()}); fix: {PERMISSION_FIX}"
            ) from exc
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
