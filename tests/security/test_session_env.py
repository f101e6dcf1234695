"""Checklist 46: a session's environment and its Python state are never shared across
sessions or users, and never loaded by the host; the folder cannot be turned against oi."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pickle
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.llm.prompts import format_result_for_model
from orchestrator.sandbox.bootstrap import ENV_DIR
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import env_size, sweep_envs
from orchestrator.sandbox.spec import current_identity, state_dir_in_sandbox
from tests.sandbox_fixtures import SandboxFactory, catalog


@pytest.fixture
def envs(tmp_path: Path) -> Path:
    path = tmp_path / "envs"
    return path


def with_env(make_sandbox: SandboxFactory, env: Path, **settings: object) -> Sandbox:
    return make_sandbox(sandbox_only={"env_dir": env}, **settings)


@pytest.fixture
def second_session(docker_client: docker.DockerClient) -> Iterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for sandbox in made:
        sandbox.close()
        for container in docker_client.api.containers(
            all=True, filters={"label": f"oi.session={sandbox.session_id}"}
        ):
            docker_client.api.remove_container(container["Id"], force=True)


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_46_another_session_sees_nothing_of_this_ones_environment(
    make_sandbox: SandboxFactory,
    docker_client: docker.DockerClient,
    envs: Path,
    second_session: list[Sandbox],
    isolation: str,
) -> None:
    first = with_env(make_sandbox, envs / "session-a", isolation=isolation)
    wrote = first.run("python", "secret = 'sk-first'\nopen('/oi/env/mine', 'w').write('x')")
    assert wrote.exit_code == 0, wrote
    assert (envs / "session-a" / "mine").exists()  # positive control: it was kept

    config = dataclasses.replace(first.config, env_dir=envs / "session-b")
    other = Sandbox(
        docker_client,
        config,
        catalog(docker_client, config),
        prepare_host(current_identity(config.workdir), config),
        session_id="test-" + uuid.uuid4().hex[:10],
    )
    second_session.append(other)
    probe = other.run(
        "python",
        "import os\nprint(sorted(os.listdir('/oi/env')), 'secret' in globals())\n"
        "print(os.path.exists('/oi/env/mine'))",
    )
    listing, exists = probe.stdout.split("\n")[:2]
    assert "mine" not in listing and listing.endswith(" False"), probe  # no file, no variable
    assert exists == "False", probe


def test_46_the_env_folder_is_private_and_the_blocks_own(
    make_sandbox: SandboxFactory, envs: Path
) -> None:
    sandbox = with_env(make_sandbox, envs / "session-a")
    result = sandbox.run("sh", "id -u; ls -ld /oi/env | cut -c1-10")
    env = envs / "session-a"
    info = env.lstat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and stat.S_IMODE(envs.lstat().st_mode) == 0o700
    assert str(info.st_uid) == result.stdout.split()[0]  # the uid the blocks run as
    assert info.st_uid != 0


def seal(key_hex: str, state: dict[str, object]) -> bytes:
    """A state file as the sandbox's oi_state writes it (MAGIC, HMAC-SHA256, pickle)."""
    data = pickle.dumps(state)
    return b"oi-state-1\n" + hmac.new(bytes.fromhex(key_hex), data, hashlib.sha256).digest() + data


def state_file(sandbox: Sandbox, env: Path) -> Path:
    folder = state_dir_in_sandbox(sandbox.session_id).removeprefix(ENV_DIR + "/")
    return env / folder / "python.state"


class Trap:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_46_the_host_never_loads_a_snapshot(make_sandbox: SandboxFactory, envs: Path) -> None:
    """A state file crafted to run code when unpickled, sealed with the session's own key (as
    a block of the session could): loaded only in the next block's sandbox (where its marker
    appears), never by oi on the host."""
    env = envs / "session-a"
    sandbox = with_env(make_sandbox, env)
    sandbox.run("python", "x = 1")  # the environment and its state now exist
    host_marker = Path(f"/tmp/oi-host-unpickled-{uuid.uuid4().hex}")
    trap = Trap(f"touch {host_marker} /oi/env/unpickled-in-sandbox")
    state = {"v": 1, "modules": {}, "values": {"x": pickle.dumps(trap)}}
    assert sandbox.config.state_key is not None
    state_file(sandbox, env).write_bytes(seal(sandbox.config.state_key, state))
    after = sandbox.run("python", "print('ran')")
    assert (env / "unpickled-in-sandbox").exists(), after  # positive control: it did load
    sandbox.close()
    sweep_envs(envs, keep_days=0)  # oi's own handling of the folder: measured, then removed
    assert not host_marker.exists(), "the host unpickled the session's state"
    assert "ran" in after.stdout
    assert not env.exists()


def test_46_empty_files_cannot_exhaust_the_hosts_inodes_through_the_environment(
    make_sandbox: SandboxFactory, envs: Path
) -> None:
    bound = 2000  # the default is 200,000: the same watcher, quicker to reach
    only = {"env_dir": envs / "session-a", "env_max_files": bound}
    assert SandboxConfig(workdir=envs).env_max_files == 200_000
    box = make_sandbox(sandbox_only=only, pool=False, timeout=120)
    result = box.run(
        "python",
        "import os\nos.makedirs('/oi/env/d', exist_ok=True)\n"
        "for i in range(300_000):\n    open(f'/oi/env/d/{i}', 'w').close()\nprint('done')\n",
    )
    overrun = result.workdir_overrun
    assert overrun is not None and overrun.stopped and overrun.kind == "files", result
    assert overrun.where == "environment" and "done" not in result.stdout
    entries = sum(1 for _ in os.scandir(envs / "session-a" / "d"))
    assert bound < entries < bound + 5000, entries


def test_46_a_state_another_session_wrote_is_never_loaded(
    make_sandbox: SandboxFactory, envs: Path
) -> None:
    """Sessions sharing one environment (``--session-env workdir``) never load each other's
    Python state: a state file not sealed with this session's key - written by another
    session's block, which knows the file but not the key - is ignored and named."""
    env = envs / "workdir-shared"
    sandbox = with_env(make_sandbox, env)
    kept = sandbox.run("python", "x = 41")
    assert kept.exit_code == 0, kept
    again = sandbox.run("python", "print('x is', x + 1)")
    assert "x is 42" in again.stdout, again  # positive control: its own state comes back
    trap = Trap("touch /oi/env/forged-state-ran")
    forged = {"v": 1, "modules": {}, "values": {"x": pickle.dumps(trap)}}
    state_file(sandbox, env).write_bytes(seal("00" * 32, forged))  # the wrong key
    after = sandbox.run("python", "print('ran', 'x' in globals())")
    assert "ran False" in after.stdout, after
    assert "not written by this session" in after.stderr, after
    assert not (env / "forged-state-ran").exists()


def test_46_links_a_block_plants_in_its_environment_lead_oi_nowhere(
    make_sandbox: SandboxFactory, envs: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"k" * 300_000)
    env = envs / "session-a"
    sandbox = with_env(make_sandbox, env)
    result = sandbox.run(
        "sh",
        f"ln -s {victim} /oi/env/escape && ln -s / /oi/env/root && mkdir -p /oi/env/d "
        "&& chmod 000 /oi/env/d && echo planted",
    )
    assert "planted" in result.stdout, result
    sandbox.close()
    assert env_size(env) < 300_000  # not counted through the links
    sweep_envs(envs, keep_days=0)
    assert (victim / "keep").stat().st_size == 300_000  # not removed through them
    assert not env.exists()


def test_46_a_full_environment_stops_the_block_and_the_model_is_told(
    make_sandbox: SandboxFactory, envs: Path
) -> None:
    box = make_sandbox(
        sandbox_only={"env_dir": envs / "session-a", "env_max_bytes": 1 << 20}, pool=False
    )
    small = box.run("sh", "head -c 300000 /dev/zero > /oi/env/small && echo kept")
    assert "kept" in small.stdout and small.workdir_overrun is None, small
    full = box.run("sh", "head -c 3000000 /dev/zero > /oi/env/big; sleep 5; echo survived")
    overrun = full.workdir_overrun
    assert overrun is not None and overrun.where == "environment", full
    text = format_result_for_model(exit_code=full.exit_code, workdir_overrun=overrun)
    assert "session environment limit of 1 MiB" in text, text
    assert overrun.stopped and "survived" not in full.stdout, full  # killed while it slept
    # Past the bound, a block that frees room runs (and one that grows does not).
    freed = box.run("sh", "rm /oi/env/big && cat /oi/env/small | wc -c")
    assert freed.workdir_overrun is None and "300000" in freed.stdout, freed
    assert ENV_DIR == "/oi/env"
