from pathlib import Path

import pytest

from orchestrator.errors import PolicyError
from orchestrator.policy import Policy, apply_policy, concurrency_caps, describe, parse_policy
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
    with pytest.raises(PolicyError, match="unknown key 'max_memroy'"):
        parse_policy('max_memroy = "1g"\n', Path("p.toml"))
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("max_memory = \n", Path("p.toml"))


def test_concurrency_caps_and_describe() -> None:
    assert concurrency_caps(policy()) == (2, 8)
    assert concurrency_caps(Policy()) == (None, None)
    lines = describe(policy())
    assert any("max_memory" in line and "line 2" in line for line in lines)
    assert "no admin policy" in describe(Policy())[0]
