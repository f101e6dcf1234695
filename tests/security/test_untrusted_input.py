"""Checklist part 2, item 37 and 43: input oi reads - a repo's oi.toml, the user's environment,
a tasks file, a replayed record - never widens what a sandbox may do, and the policy decides
every setting that widens access. Through the real ``oi`` console script (and the real engine
where a block would run), with the fake vLLM to see whether anything reached the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import RuntimeMissingError
from orchestrator.sandbox.config import DEFAULTS
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


def exec_sh(
    code: str, *args: str, repo: Path, env: dict[str, str], policy: Path | None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``oi exec sh`` of ``code`` under the test's policy file (as OI_POLICY_FILE), if any."""
    chosen = {"OI_POLICY_FILE": str(policy)} if policy is not None else {}
    return run_oi(
        "exec",
        "sh",
        "-",
        *args,
        cwd=repo,
        env={**env, **chosen, **extra},
        input=code,
        timeout=90,
    )


def test_a_ca_bundle_is_a_mount_the_policy_restricts(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The review's case: ``--ca-bundle /etc/shadow`` was mounted (into the allowlist proxy,
    and image builds) while the policy said ``allow_extra_mounts = false``. Only the system's
    bundles may be named then, also through a link that looks like a bundle."""
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_extra_mounts = false\n")
    (repo / "ca.pem").symlink_to("/etc/shadow")
    for bundle in ("/etc/shadow", "ca.pem"):
        proc = exec_sh("echo ran", "--ca-bundle", bundle, repo=repo, env=env, policy=policy)
        assert proc.returncode == 2, (bundle, proc.stdout + proc.stderr)
        assert f"--ca-bundle {bundle} is not allowed by the admin policy" in proc.stderr
        assert f"{policy} line 1: allow_extra_mounts = false" in proc.stderr
        assert "ran" not in proc.stdout  # refused before any sandbox (or proxy) started
    system = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(system).is_file():
        pytest.skip(f"positive control needs the system bundle {system}")
    control = exec_sh("echo ran", "--ca-bundle", system, repo=repo, env=env, policy=policy)
    assert control.returncode == 0 and control.stdout == "ran\n", control.stderr


def test_open_files_and_file_size_caps_reach_the_sandbox(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """``max_nofile`` and ``max_file_size`` lower the defaults nobody asked for (the block's
    own ulimits show it, and a bigger file is cut), and refuse a value asked above them."""
    policy = tmp_path / "policy.toml"
    policy.write_text('max_nofile = 64\nmax_file_size = "1m"\n')
    code = "ulimit -n; ulimit -f\nhead -c 2097152 /dev/zero > big 2>/dev/null; wc -c < big\n"
    proc = exec_sh(code, repo=repo, env=env, policy=policy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nofile, fsize_kib, written = proc.stdout.split()
    assert nofile == "64", f"the block may open {nofile} files past max_nofile = 64"
    assert fsize_kib == "1024", f"the block's file size limit is {fsize_kib} KiB, cap is 1 MiB"
    assert int(written) <= 1024**2, f"a {written}-byte file was written past max_file_size"
    uncapped = exec_sh(code, repo=repo, env=env, policy=None)
    assert uncapped.stdout.split() == [str(DEFAULTS.nofile), "1048576", "2097152"], (
        f"control: without the policy the defaults apply: {uncapped.stdout + uncapped.stderr}"
    )

    for variable, value, line in (
        ("OI_NOFILE", "4096", "line 1: max_nofile = 64"),
        ("OI_MAX_FILE_SIZE", "2m", 'line 2: max_file_size = "1m"'),
    ):
        asked = exec_sh("echo ran", repo=repo, env=env, policy=policy, **{variable: value})
        assert asked.returncode == 2, (variable, asked.stdout + asked.stderr)
        assert "is more than the admin policy allows" in asked.stderr and line in asked.stderr
        assert "ran" not in asked.stdout


def test_the_pool_size_cap_refuses_more_prestarted_containers(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """``max_pool_size`` bounds the containers kept ready per shape: more is refused (the
    default, 1, is the least there is, so nothing is ever lowered silently)."""
    policy = tmp_path / "policy.toml"
    policy.write_text("max_pool_size = 1\n")
    asked = exec_sh("echo ran", repo=repo, env=env, policy=policy, OI_POOL_SIZE="8")
    assert asked.returncode == 2, asked.stdout + asked.stderr
    assert "--pool-size 8 containers is more than the admin policy allows" in asked.stderr
    assert f"{policy} line 1: max_pool_size = 1" in asked.stderr
    control = exec_sh("echo ran", repo=repo, env=env, policy=policy, OI_POOL_SIZE="1")
    assert control.returncode == 0 and control.stdout == "ran\n", control.stderr
