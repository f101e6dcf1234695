"""Fixtures for tests against the real Docker engine (imported by the integration and security
conftests). Every test gets its own session id; afterwards we assert that no container of that
session remains, and remove any that did (so one failure does not cascade)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.languages import parse_language
from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.docker import connect
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.images import ImageCatalog
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import state_key
from orchestrator.sandbox.spec import current_identity
from orchestrator.settings import Settings

REPO = Path(__file__).resolve().parents[1]
OI = str(Path(sys.executable).parent / "oi")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return connect()


def session_containers(client: docker.DockerClient, session_id: str) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"oi.session={session_id}"})


def pid_containers(client: docker.DockerClient, pid: int) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"oi.pid={pid}"})


@pytest.fixture
def session_id(docker_client: docker.DockerClient) -> Iterator[str]:
    sid = "test-" + uuid.uuid4().hex[:10]
    yield sid
    leftovers = session_containers(docker_client, sid)
    for container in leftovers:
        docker_client.api.remove_container(container["Id"], force=True)
    networks = docker_client.api.networks(filters={"label": f"oi.session={sid}"})
    for network in networks:
        docker_client.api.remove_network(network["Id"])
    assert not leftovers, f"containers of session {sid} left behind: {leftovers}"
    assert not networks, f"networks of session {sid} left behind: {networks}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


SandboxFactory = Callable[..., Sandbox]


def make_config(**settings: Any) -> SandboxConfig:
    """A sandbox config from settings-style values (sizes as text, host presets), as the CLI
    would build it without any policy."""
    return sandbox_config(Settings(**settings), Policy())


def catalog(client: docker.DockerClient, config: SandboxConfig | None = None) -> ImageCatalog:
    config = config or SandboxConfig()
    return ImageCatalog(client, prefix=config.image_prefix, base_image=config.base_image)


class PooledSandbox(Sandbox):
    """A Sandbox that runs every block in a container its pool pre-started, and checks it did.

    Used to run the security checklist both ways: the pooled path must isolate exactly as the
    direct one does.
    """

    def run(self, language: Any, code: str | bytes, on_output: Any = None) -> Any:
        lang = parse_language(language) if isinstance(language, str) else language
        assert self.pool is not None, "PooledSandbox needs settings.pool"
        spec = self.spec_for(lang)
        self.warm(lang)
        assert self.pool.wait_ready(spec, 60), "the pool did not start a container"
        pre_started = self.pool.ready_ids(spec)
        result = super().run(lang, code, on_output)
        assert result.container_id in pre_started, "the block did not run in a pooled container"
        return result


def _pool_mode(request: pytest.FixtureRequest) -> bool:
    """A test module opts in to running both ways with a parametrized ``sandbox_pool`` fixture."""
    if "sandbox_pool" in request.fixturenames:
        return bool(request.getfixturevalue("sandbox_pool"))
    return False


@pytest.fixture
def make_sandbox(
    request: pytest.FixtureRequest,
    docker_client: docker.DockerClient,
    session_id: str,
    workdir: Path,
) -> Iterator[SandboxFactory]:
    """Build a Sandbox for this test's session with settings overrides; closed after the test
    (used containers are removed in the background, and close() waits for that)."""
    pooled = _pool_mode(request)
    made: list[Sandbox] = []

    def factory(
        host_env: dict[str, str] | None = None,
        sandbox_only: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Sandbox:
        """``overrides`` are settings-style values; ``sandbox_only`` are SandboxConfig fields
        set afterwards (values no setting can give, such as no workdir quota)."""
        overrides.setdefault("workdir", workdir)
        if pooled:
            overrides["pool"] = True
        config = dataclasses.replace(make_config(**overrides), **(sandbox_only or {}))
        if config.env_dir is not None and config.state_key is None:  # as wiring does
            config = dataclasses.replace(
                config, state_key=state_key(config.env_dir.parent, session_id)
            )
        sandbox = (PooledSandbox if pooled else Sandbox)(
            docker_client,
            config,
            catalog(docker_client, config),
            prepare_host(current_identity(config.workdir), config),
            session_id=session_id,
            host_env=host_env,
        )
        made.append(sandbox)
        return sandbox

    yield factory
    for sandbox in made:
        sandbox.close()


def run_oi(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real ``oi`` console script."""
    full_env = {**os.environ, **(env or {})}
    kwargs.setdefault("timeout", 120)
    return subprocess.run(
        [OI, *args], capture_output=True, text=True, env=full_env, check=False, **kwargs
    )


@dataclass(frozen=True)
class OtherUser:
    """A throwaway local account that can run this checkout's ``oi``."""

    name: str
    uid: int
    gid: int
    site: Path  # what PYTHONPATH must hold: the package and its dependencies, readable by all

    def oi(
        self, *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """``oi ARGS`` as this user (no groups), with the system Python."""
        base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": str(self.site)}
        kwargs.setdefault("timeout", 120)
        return subprocess.run(
            [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                SYSTEM_PYTHON,
                "-c",
                "from orchestrator.cli import main; main()",
                *args,
            ],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def shared_site() -> Iterator[Path]:
    """This checkout's package and its dependencies, copied where any user can read them
    (the venv's Python and this checkout may sit in root's private folders): for the system
    Python of the same minor version."""
    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("runs oi as another user: needs root and the system's python3")
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"the system's python3 is {version}, not this venv's version")
    site = Path(tempfile.mkdtemp(prefix="oi-site-", dir="/var/tmp"))
    try:
        for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
            if entry.name.startswith(("__editable__", "oi_orchestrator")) or entry.suffix == ".pth":
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, site / entry.name)
        shutil.copytree(REPO / "orchestrator", site / "orchestrator")
        shutil.copytree(REPO / "sandbox-images", site / "orchestrator" / "sandbox_images")
        subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
        site.chmod(0o755)
        yield site
    finally:
        shutil.rmtree(site, ignore_errors=True)


@contextlib.contextmanager
def throwaway_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A local account made for one test (no home, no login shell) and removed after it."""
    name = prefix + uuid.uuid4().hex[:8]
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def oi_user(shared_site: Path) -> Iterator[OtherUser]:
    """A throwaway account (in no group that may use Docker) that runs this checkout's oi."""
    with throwaway_user("oiusr") as entry:
        yield OtherUser(entry.pw_name, entry.pw_uid, entry.pw_gid, shared_site)
