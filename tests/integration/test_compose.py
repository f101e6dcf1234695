"""``compose/docker-compose.yml`` as Compose v1 (Debian bookworm's ``docker-compose`` 1.29) and
Compose v2 (``docker compose``) read it, for the defaults and each documented ``.env``
(``compose/env/*.env``): both accept it, and the values reach vLLM's command line.

No GPU here, so vLLM itself cannot start: what is checked is what Compose would hand the
engine (``config``), including the device request v1 builds at ``up`` (it refuses a count
that is not an integer or "all", which ``config`` alone does not show). ``make setup``
installs both (``scripts/ensure-compose.sh``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
ENV_FILES = sorted((ROOT / "compose" / "env").glob("*.env"))

COMPOSES = {"v1": ["docker-compose"], "v2": ["docker", "compose"]}

# (env file, context length, GPUs / tensor parallel size, memory share, sequences)
EXPECTED = {
    None: ("32768", "1", "0.90", "16"),
    "12gb.env": ("4096", "1", "0.90", "4"),
    "2gpu.env": ("16384", "2", "0.90", "8"),
}


def compose(version: str) -> list[str]:
    command = COMPOSES[version]
    if shutil.which(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed: run 'make setup' (scripts/ensure-compose.sh)")
    out = subprocess.run(
        [*command, "version", "--short"], check=False, capture_output=True, text=True
    )
    major = out.stdout.strip().lstrip("v").split(".")[0]
    assert out.returncode == 0 and major == version[1], (version, out.stdout, out.stderr)
    return command


def rendered(version: str, env_file: Path | None, tmp_path: Path) -> dict[str, Any]:
    """``config`` of the compose file, run from an empty folder (no stray .env is read)."""
    args = [*compose(version), "-p", "oi", "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [*args, "config"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean,
        timeout=60,
    )
    assert done.returncode == 0, f"{' '.join(args)} config failed:\n{done.stderr}"
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    return data


def flag(command: list[str], name: str) -> str:
    return str(command[command.index(name) + 1])


def test_every_documented_env_file_is_expected() -> None:
    assert {path.name for path in ENV_FILES} == {name for name in EXPECTED if name}


@pytest.mark.parametrize("version", sorted(COMPOSES))
@pytest.mark.parametrize("env_name", list(EXPECTED), ids=lambda n: n or "defaults")
def test_compose_accepts_the_file_and_passes_the_settings_on(
    version: str, env_name: str | None, tmp_path: Path
) -> None:
    env_file = ROOT / "compose" / "env" / env_name if env_name else None
    service = rendered(version, env_file, tmp_path)["services"]["vllm"]
    command = [str(part) for part in service["command"]]
    length, gpus, share, seqs = EXPECTED[env_name]
    assert flag(command, "--max-model-len") == length
    assert flag(command, "--tensor-parallel-size") == gpus
    assert flag(command, "--gpu-memory-utilization") == share
    assert flag(command, "--max-num-seqs") == seqs
    assert flag(command, "--tool-call-parser") == "hermes"
    assert "--enable-auto-tool-choice" in command
    assert "--chat-template" not in command and "--reasoning-parser" not in command
    assert service["image"].startswith("vllm/vllm-openai:v")  # a pinned release, not latest
    # the endpoint has no authentication: loopback only
    ports = service["ports"]
    published = str(ports[0]) if version == "v1" else ports[0]["host_ip"]
    assert "127.0.0.1" in published
    # the device request as Compose v1 builds it at `up` (project.get_device_requests):
    # an integer or "all"; v2 prints "all" as -1
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    count = device["count"]
    assert isinstance(count, int) or count == "all", f"{version} would refuse count {count!r}"
    assert device["capabilities"] == ["gpu"]


def test_the_compose_file_has_no_key_debians_compose_v1_refuses() -> None:
    """The regression: a top-level ``name:`` made v1 refuse the whole file."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(data) <= {"services", "volumes", "networks"}
