from pathlib import Path

import pytest

from orchestrator.errors import PolicyError
from orchestrator.policy import SYSTEM_ONLY, Policy, apply_policy, describe, parse_policy
from orchestrator.settings import Settings

POLICY = """\
# shared server policy
max_memory = "2g"
max_cpus = 2
max_pids = 128
max_timeout = 300
allowed_networks = ["none", "allowlist"]
allowed_hosts = ["example.org"]
required_isolation = "gvisor"
max_concurrent_per_user = 2
max_concurrent_total = 8
allow_extra_mounts = false
audit_log = "/var/log/oi/audit.jsonl"
"""


def policy(text: str = POLICY, path: str = "/etc/oi/policy.toml") -> Policy:
    return Policy({k: [r] for k, r in parse_policy(text, Path(path)).items()})


def settings(tmp_path: Path, **given: object) -> Settings:
    return Settings(workdir=tmp_path, **given)  # type: ignore[arg-type]


def test_defaults_above_the_caps_are_lowered_silently(tmp_path: Path) -> None:
    s = apply_policy(settings(tmp_path), policy('max_memory = "512m"\nmax_timeout = 30\n'))
    assert s.memory == 512 * 1024**2 and s.timeout == 30


def test_required_isolation_applies_by_default(tmp_path: Path) -> None:
    assert apply_policy(settings(tmp_path), policy()).isolation == "gvisor"


def test_audit_log_comes_from_the_policy(tmp_path: Path) -> None:
    assert str(apply_policy(settings(tmp_path), policy()).audit_log) == "/var/log/oi/audit.jsonl"


@pytest.mark.parametrize(
    ("given", "message", "line"),
    [
        ({"memory": "4g"}, "--memory 4 GiB is more than the admin policy allows", 2),
        ({"cpus": 4}, "--cpus 4 CPUs is more than", 3),
        ({"pids": 1000}, "--pids 1000 pids is more than", 4),
        ({"timeout": 3600}, "--timeout 3600 s is more than", 5),
        ({"network": "open"}, "--network open is not allowed", 6),
        ({"network": "allowlist", "allow_hosts": ["evil.example"]}, "--allow-host evil.example", 7),
        ({"isolation": "runc"}, "--isolation runc is not allowed", 8),
        ({"mounts": ["/data"]}, "--mount is not allowed", 11),
    ],
)
def test_asking_for_more_is_refused_naming_the_line(
    tmp_path: Path, given: dict, message: str, line: int
) -> None:
    with pytest.raises(PolicyError) as info:
        apply_policy(settings(tmp_path, **given), policy())
    text = str(info.value)
    assert message in text
    assert f"/etc/oi/policy.toml line {line}:" in text


def test_asking_for_less_is_fine(tmp_path: Path) -> None:
    s = apply_policy(
        settings(
            tmp_path, memory="256m", cpus=0.5, network="allowlist", allow_hosts=["example.org"]
        ),
        policy(),
    )
    assert s.memory == 256 * 1024**2 and s.cpus == 0.5 and s.network == "allowlist"


def test_two_files_the_stricter_wins(tmp_path: Path) -> None:
    system = parse_policy(
        'max_memory = "2g"\nallowed_networks = ["none", "open"]\n', Path("/etc/oi/policy.toml")
    )
    extra = parse_policy(
        'max_memory = "4g"\nallowed_networks = ["none"]\n', Path("/tmp/extra.toml")
    )
    merged = Policy({k: [r for r in (system.get(k), extra.get(k)) if r] for k in {*system, *extra}})
    s = apply_policy(settings(tmp_path), merged)
    assert s.memory == 1024**3  # the default 1g is below both caps
    with pytest.raises(PolicyError, match="line 1"):
        apply_policy(settings(tmp_path, memory="3g"), merged)
    with pytest.raises(PolicyError, match="network open"):
        apply_policy(settings(tmp_path, network="open"), merged)


def test_unknown_key_and_bad_toml_are_errors() -> None:
    with pytest.raises(PolicyError, match="unknown key 'max_memroy'; did you mean 'max_memory'"):
        parse_policy('max_memroy = "1g"\n', Path("p.toml"))
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("max_memory = \n", Path("p.toml"))


def test_concurrency_caps_and_describe() -> None:
    assert policy().concurrency_caps() == (2, 8)
    assert Policy().concurrency_caps() == (None, None)
    lines = describe(policy())
    assert any("max_memory" in line and "line 2" in line for line in lines)
    assert "no admin policy" in describe(Policy())[0]


@pytest.mark.parametrize(
    ("text", "given", "message"),
    [
        ('max_tmp_size = "64m"', {"tmp_size": "1g"}, "--tmp-size 1 GiB is more than"),
        ('max_file_size = "10m"', {"max_file_size": "1g"}, "--max-file-size 1 GiB is more"),
        ("max_nofile = 64", {"nofile": 4096}, "--nofile 4096 open files is more than"),
        ("max_pool_size = 1", {"pool_size": 4}, "--pool-size 4 containers is more than"),
        ("max_timeout = 5", {"timeout": 5, "kill_grace": 20}, "kill_grace 20 s after a 5 s"),
    ],
)
def test_every_widening_limit_is_capped(
    tmp_path: Path, text: str, given: dict, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        apply_policy(settings(tmp_path, **given), policy(text + "\n"))


def test_the_grace_after_the_timeout_counts_against_max_timeout(tmp_path: Path) -> None:
    """A block trapping SIGTERM runs until the SIGKILL: timeout + kill_grace is the bound."""
    s = apply_policy(settings(tmp_path, timeout=5), policy("max_timeout = 5\n"), {"timeout"})
    assert s.timeout == 5 and s.kill_grace == 0
    s = apply_policy(settings(tmp_path, timeout=3), policy("max_timeout = 5\n"), {"timeout"})
    assert s.kill_grace == 1  # within the bound: unchanged
    s = apply_policy(settings(tmp_path), policy("max_timeout = 30\n"), set())
    assert s.timeout + s.kill_grace <= 30


def test_the_admins_values_are_fixed(tmp_path: Path) -> None:
    text = (
        'gvisor_runtime = "runsc-strict"\ngvisor_network_runtime = "runsc-net"\n'
        'egress_ranges = ["10.9.0.0/16"]\nimage_prefix = "corp-oi"\n'
    )
    s = apply_policy(settings(tmp_path), policy(text))
    assert (s.gvisor_runtime, s.gvisor_network_runtime) == ("runsc-strict", "runsc-net")
    assert s.egress_ranges == ["10.9.0.0/16"] and s.image_prefix == "corp-oi"


@pytest.mark.parametrize("key", SYSTEM_ONLY)
def test_a_policy_named_by_the_environment_cannot_grant(key: str) -> None:
    """OI_POLICY_FILE may only add restrictions: keys that grant are the system file's."""
    values = {
        "presets": "presets = { pypi = ['evil.example'] }",
        "egress_ranges": "egress_ranges = ['169.254.0.0/16']",
        "gvisor_runtime": "gvisor_runtime = 'runc'",
        "gvisor_network_runtime": "gvisor_network_runtime = 'runc'",
        "image_prefix": "image_prefix = 'mine'",
    }
    with pytest.raises(PolicyError, match=r"only /etc/oi/policy\.toml may"):
        parse_policy(values[key] + "\n", Path("/tmp/mine.toml"), system=False)
    assert parse_policy(values[key] + "\n", Path("/etc/oi/policy.toml"))


def test_a_ca_bundle_is_a_mount_under_a_policy_without_extra_mounts(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("x")
    with pytest.raises(PolicyError, match="--ca-bundle"):
        apply_policy(settings(tmp_path, ca_bundle=bundle), policy("allow_extra_mounts = false\n"))
    with pytest.raises(PolicyError, match="--ca-bundle /etc/shadow"):
        apply_policy(
            settings(tmp_path, ca_bundle="/etc/shadow"), policy("allow_extra_mounts = false\n")
        )
    listed = policy(f'allowed_ca_bundles = ["{bundle}"]\n')
    assert apply_policy(settings(tmp_path, ca_bundle=bundle), listed).ca_bundle == bundle
    # without any such rule the user's own bundle is theirs to mount
    assert apply_policy(settings(tmp_path, ca_bundle=bundle), policy("max_cpus = 2\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('max_cpus = "lots"', "max_cpus"),
        ('max_memory = "huge"', "max_memory"),
        ('allowed_networks = ["internet"]', "allowed_networks"),
        ('required_isolation = "kvm"', "required_isolation"),
        ('egress_ranges = ["not-a-range"]', "not an address range"),
        ("max_pids = 0", "max_pids"),
    ],
)
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text + "\n", Path("/etc/oi/policy.toml"))
