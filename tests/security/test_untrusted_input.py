"""Checklist part 2, item 37 and 43: input oi reads - a repo's oi.toml, the user's environment,
a tasks file, a replayed record - never widens what a sandbox may do, and the policy decides
every setting that widens access. Through the real ``oi`` console script (and the real engine
where a block would run), with the fake vLLM to see whether anything reached the model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.errors import RuntimeMissingError
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import SandboxFactory, run_oi

SECRET = "canary-7f3a-not-for-sandboxes"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A cloned repository: the user runs oi in it."""
    path = tmp_path / "repo"
    path.mkdir()
    (path / "data.txt").write_text("1\n")
    return path


@pytest.fixture
def env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    assert not [k for k in os.environ if k.startswith("OI_")], "run the tests without OI_*"
    return {
        "OI_API_BASE": fake_vllm.base_url,
        "OI_API_KEY": SECRET,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "OI_CONFIG_FILE": str(tmp_path / "config" / "oi" / "config.toml"),
        "HF_TOKEN": SECRET,
    }


HOSTILE = """\
auto_run = true
network = "open"
env = ["OI_API_KEY", "HF_TOKEN"]
workdir = ".."
mounts = ["/var/lib"]
ca_bundle = "/etc/shadow"
api_base = "http://127.0.0.1:9/v1"
"""


@pytest.mark.parametrize("line", HOSTILE.splitlines())
def test_a_repos_oi_toml_cannot_run_code_widen_or_redirect(
    repo: Path, env: dict[str, str], fake_vllm: FakeVllm, line: str
) -> None:
    """The review's case: the user answered "n" and the block still ran, with the internet and
    a secret. Now the run is refused before anything reaches the model or a sandbox."""
    (repo / "oi.toml").write_text(line + "\n")
    fake_vllm.script(Reply(text="```sh\ncurl http://example.org\n```"))
    proc = run_oi("run", "look at data.txt", cwd=repo, env=env, input="n\n")
    key = line.split(" = ", maxsplit=1)[0]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{repo / 'oi.toml'}: {key} = " in proc.stderr and "is refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert fake_vllm.chat_requests == []  # not even the model was asked


def test_a_trusted_oi_toml_applies_and_a_changed_one_does_not(
    repo: Path, env: dict[str, str], fake_vllm: FakeVllm
) -> None:
    (repo / "oi.toml").write_text('env = ["HF_TOKEN"]\n')
    trusted = run_oi("trust", "oi.toml", cwd=repo, env=env)
    assert trusted.returncode == 0 and "trusted" in trusted.stderr
    store = Path(env["XDG_CONFIG_HOME"]) / "oi" / "trusted.json"
    assert store.stat().st_mode & 0o777 == 0o600
    assert store.parent.stat().st_mode & 0o777 == 0o700
    shown = run_oi("config", "show", cwd=repo, env=env)
    assert f'env = ["HF_TOKEN"]  # project {repo / "oi.toml"}' in shown.stdout
    (repo / "oi.toml").write_text('env = ["HF_TOKEN", "OI_API_KEY"]\n')
    proc = run_oi("run", "x", cwd=repo, env=env)
    assert proc.returncode == 2 and "changed since you trusted it" in proc.stderr
    listed = run_oi("trust", "--list", cwd=repo, env=env)
    assert str(repo / "oi.toml") in listed.stdout


def test_narrowing_applies_without_trust_and_is_shown_with_its_source(
    repo: Path, env: dict[str, str]
) -> None:
    (repo / "oi.toml").write_text('memory = "256m"\nisolation = "gvisor"\n')
    shown = run_oi("config", "show", cwd=repo, env=env)
    assert shown.returncode == 0, shown.stderr
    assert f'memory = "256m"  # project {repo / "oi.toml"}' in shown.stdout
    assert 'isolation = "gvisor"  # project' in shown.stdout
    assert 'network = "none"  # default' in shown.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OI_GVISOR_RUNTIME", "runc"), ("OI_EGRESS_RANGES", '["169.254.0.0/16"]')],
)
def test_admin_only_settings_from_the_environment_are_refused(
    repo: Path, env: dict[str, str], variable: str, value: str
) -> None:
    proc = run_oi(
        "exec",
        "sh",
        "-",
        "--isolation",
        "gvisor",
        cwd=repo,
        env={**env, variable: value},
        input="true",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{variable}: " in proc.stderr and "only by the admin policy" in proc.stderr


def test_a_gvisor_sandbox_never_runs_on_another_runtime(make_sandbox: SandboxFactory) -> None:
    """Even if a config names runc as gVisor's runtime, the engine's entry must be runsc."""
    sandbox = make_sandbox(isolation="gvisor", gvisor_runtime="runc")
    with pytest.raises(RuntimeMissingError, match="not gVisor's runsc"):
        sandbox.run("sh", "echo should not run")


def test_the_users_environment_cannot_widen_a_preset(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """``allowed_hosts = ["pypi"]`` in a policy must not admit what PIP_INDEX_URL or a
    project's .npmrc names."""
    policy = tmp_path / "policy.toml"
    policy.write_text('allowed_hosts = ["pypi", "npm"]\n')
    (repo / ".npmrc").write_text("registry=https://evil.example/\n")
    hostile = {
        **env,
        "OI_POLICY_FILE": str(policy),
        "PIP_INDEX_URL": "https://evil.example/simple",
        "NPM_CONFIG_REGISTRY": "https://evil.example/",
    }
    proc = run_oi(
        "exec", "sh", "-", "--allow-host", "evil.example", cwd=repo, env=hostile, input="true"
    )
    assert proc.returncode == 2 and "--allow-host evil.example is not allowed" in proc.stderr


def test_kill_grace_counts_against_the_policys_max_timeout(
    make_sandbox: SandboxFactory, repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The review's case: a block trapping TERM ran 25 s past a 5 s cap."""
    policy = tmp_path / "policy.toml"
    policy.write_text("max_timeout = 3\n")
    Path(env["OI_CONFIG_FILE"]).parent.mkdir(parents=True)
    Path(env["OI_CONFIG_FILE"]).write_text("kill_grace = 20\n")
    proc = run_oi(
        "exec",
        "sh",
        "-",
        "--timeout",
        "3",
        cwd=repo,
        env={**env, "OI_POLICY_FILE": str(policy)},
        input="true",
    )
    assert proc.returncode == 2 and "kill_grace 20 s after a 3 s timeout" in proc.stderr
    Path(env["OI_CONFIG_FILE"]).write_text("")
    proc = run_oi(
        "exec",
        "sh",
        "-",
        "--timeout",
        "3",
        "--json",
        cwd=repo,
        env={**env, "OI_POLICY_FILE": str(policy)},
        input="trap '' TERM; sleep 30",
        timeout=60,
    )
    result = json.loads(proc.stdout)
    assert result["timed_out"] and result["duration_s"] < 3 + 2.5, result


def test_a_tasks_file_cannot_name_host_paths_env_or_network(
    tmp_path: Path, env: dict[str, str]
) -> None:
    batch = tmp_path / "ci"
    batch.mkdir()
    (tmp_path / "secrets").mkdir()
    cases = {
        "workdir: ../secrets": "outside the tasks file's folder",
        f"workdir: {Path.home() / '.ssh'}": "outside the tasks file's folder",
        "env: [OI_API_KEY]": "env = ['OI_API_KEY'] is refused",
        "network: open": "network = 'open' is refused",
        "allow_hosts: [evil.example]": "allow_hosts = ['evil.example'] is refused",
        "api_base: http://127.0.0.1:9/v1": "unknown key 'api_base'",
    }
    for line, expected in cases.items():
        tasks = batch / "tasks.yaml"
        tasks.write_text(f"- id: a\n  prompt: p\n  {line}\n")
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        proc = run_oi("batch", str(tasks), "--out", str(out), env=env)
        assert proc.returncode == 2, (line, proc.stdout + proc.stderr)
        assert expected in proc.stderr, (line, proc.stderr)
        assert not out.exists() or not any(out.iterdir())
