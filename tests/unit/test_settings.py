"""Settings: precedence, where each value comes from, and the trust model (a project file may
only narrow what the user allows, unless the user trusted that exact file)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError, PolicyError
from orchestrator.loading import load
from orchestrator.policy import KNOWN_KEYS, Policy, apply_policy, parse_policy
from orchestrator.replay import LIMIT_KEYS, NOT_REPLAYED
from orchestrator.settings import FIELDS, Settings, field_meta
from orchestrator.trust import TrustStore

GiB = 1024**3


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated user: config file, trust store, no OI_* variables, cwd = a project."""
    for name in list(os.environ):
        if name.startswith("OI_"):
            monkeypatch.delenv(name)
    user = tmp_path / "user.toml"
    user.write_text('memory = "3g"\ntimeout = 30\ncpus = 3\npids = 33\n')
    monkeypatch.setenv("OI_CONFIG_FILE", str(user))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def loaded(**flags: Any) -> Any:
    return load(flags, policy=Policy())


def test_each_layer_overrides_the_one_below(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "oi.toml").write_text("timeout = 20\ncpus = 2\npids = 22\n")
    monkeypatch.setenv("OI_CPUS", "5")
    monkeypatch.setenv("OI_PIDS", "55")
    result = loaded(pids=66)
    settings = result.settings
    assert settings.memory == 3 * GiB  # only the user config sets it
    assert settings.timeout == 20  # ./oi.toml narrows the user config
    assert settings.cpus == 5  # the environment beats both files
    assert settings.pids == 66  # a flag beats everything
    assert settings.workdir == home.resolve()
    sources = {key: str(result.source_of(key)) for key in ("memory", "timeout", "cpus", "pids")}
    assert sources["memory"].startswith("user config ")
    assert sources["timeout"] == f"project {home / 'oi.toml'}"
    assert sources["cpus"] == "env OI_*" and sources["pids"] == "flag command line"
    assert str(result.source_of("model")) == "default"


def test_flags_given_as_none_do_not_override(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OI_PIDS", "55")
    assert loaded(pids=None).settings.pids == 55


def test_bad_values_name_the_key_and_where_it_came_from(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OI_MEMORY", "lots")
    with pytest.raises(ConfigError, match="OI_MEMORY: cannot read size 'lots'"):
        loaded()
    monkeypatch.delenv("OI_MEMORY")
    with pytest.raises(ConfigError, match="--pids: 0 is too small: it must be more than 0"):
        loaded(pids=0)


def test_unknown_config_key_is_an_error(home: Path) -> None:
    (home / "oi.toml").write_text("memroy = '1g'\n")
    with pytest.raises(ConfigError, match="unknown key 'memroy'; did you mean 'memory'"):
        loaded()


HOSTILE_PROJECT_FILES = [
    # the cases of the adversarial review
    ("auto_run = true", "auto_run"),
    ('network = "open"', "network"),
    ('env = ["OI_API_KEY"]', "env"),
    ('workdir = ".."', "workdir"),
    ('mounts = ["/var/lib"]', "mounts"),
    ('ca_bundle = "/etc/shadow"', "ca_bundle"),
    ('api_base = "http://evil.example/v1"', "api_base"),
    # variants
    ('api_key = "mine"', "api_key"),
    ('network = "allowlist"\nallow_hosts = ["evil.example"]', "network"),
    ('allow_hosts = ["evil.example"]', "allow_hosts"),
    ('memory = "64g"', "memory"),
    ("pids = 100000", "pids"),
    ("timeout = 1e6", "timeout"),
    ("kill_grace = 3600", "kill_grace"),
    ("max_file_size = '100g'", "max_file_size"),
    ("nofile = 1048576", "nofile"),
    ("tmp_size = '64g'", "tmp_size"),
    ("pool_size = 64", "pool_size"),
    ('data_dir = "/tmp/shared"', "data_dir"),
    ('audit_log = "/home/victim/.bashrc"', "audit_log"),
    ('image_prefix = "evil"', "image_prefix"),
    ('base_image = "evil:latest"', "base_image"),
]


@pytest.mark.parametrize(("text", "key"), HOSTILE_PROJECT_FILES)
def test_a_project_file_cannot_widen_or_redirect(home: Path, text: str, key: str) -> None:
    (home / "oi.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        loaded()
    message = str(info.value)
    assert f"{home / 'oi.toml'}: {key} = " in message and "is refused" in message
    assert f"oi trust {home / 'oi.toml'}" in message


@pytest.mark.parametrize(
    "text",
    ['egress_ranges = ["169.254.0.0/16"]', 'gvisor_runtime = "runc"'],
)
def test_admin_keys_are_refused_from_every_user_source(
    home: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    key = text.split(" ", maxsplit=1)[0]
    (home / "oi.toml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"{key} can be set only by the admin policy"):
        loaded()
    (home / "oi.toml").unlink()
    Path(os.environ["OI_CONFIG_FILE"]).write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"{key} can be set only by the admin policy"):
        loaded()
    Path(os.environ["OI_CONFIG_FILE"]).write_text("")
    value = text.split(" = ")[1].strip("'\"")
    monkeypatch.setenv(f"OI_{key.upper()}", value if key != "egress_ranges" else '["10.0.0.0/8"]')
    with pytest.raises(ConfigError, match=f"OI_{key.upper()}: {key} can be set only"):
        loaded()


@pytest.mark.parametrize(
    ("user", "project", "expected"),
    [
        ("", 'memory = "512m"', {"memory": 512 * 1024**2}),
        ("", "timeout = 10\ncpus = 0.5\npids = 16", {"timeout": 10, "cpus": 0.5, "pids": 16}),
        ('network = "open"', 'network = "none"', {"network": "none"}),
        ('network = "open"', 'allow_hosts = ["pypi.org"]', {"network": "allowlist"}),
        ('allow_hosts = ["a.example", "b.example"]', 'allow_hosts = ["a.example"]', {}),
        ("auto_run = true", "auto_run = false", {"auto_run": False}),
        ("", 'isolation = "gvisor"', {"isolation": "gvisor"}),
        ('env = ["HF_TOKEN", "X"]', 'env = ["HF_TOKEN"]', {"env": ["HF_TOKEN"]}),
        ("", 'model = "other"\ntemperature = 0.2\nmax_turns = 3', {"model": "other"}),
        ("", "pool = false", {"pool": False}),
    ],
)
def test_a_project_file_may_narrow_and_set_harmless_keys(
    home: Path, user: str, project: str, expected: dict[str, Any]
) -> None:
    Path(os.environ["OI_CONFIG_FILE"]).write_text(user + "\n")
    (home / "oi.toml").write_text(project + "\n")
    settings = loaded().settings
    for key, value in expected.items():
        assert getattr(settings, key) == value


def test_a_trusted_file_may_set_what_the_user_may_until_it_changes(home: Path) -> None:
    project = home / "oi.toml"
    project.write_text('network = "open"\nmemory = "4g"\nenv = ["HF_TOKEN"]\n')
    with pytest.raises(ConfigError, match="is refused"):
        loaded()
    TrustStore.default().trust(project)
    settings = loaded().settings
    assert (settings.network, settings.memory, settings.env) == ("open", 4 * GiB, ["HF_TOKEN"])
    project.write_text('network = "open"\nmemory = "4g"\nenv = ["OI_API_KEY"]\n')
    with pytest.raises(ConfigError, match="changed since you trusted it"):
        loaded()
    assert TrustStore.default().revoke(project)


def test_a_trust_store_others_could_write_is_ignored(home: Path) -> None:
    project = home / "oi.toml"
    project.write_text('network = "open"\n')
    store = TrustStore.default()
    store.trust(project)
    assert loaded().settings.network == "open"
    store.path.chmod(0o666)  # another local user could have put any file in it
    with pytest.raises(ConfigError, match="is refused"):
        loaded()
    store.path.chmod(0o600)
    store.path.parent.chmod(0o777)
    with pytest.raises(ConfigError, match="is refused"):
        loaded()
    store.path.parent.chmod(0o700)
    assert loaded().settings.network == "open"


def test_a_symlinked_trust_store_is_not_followed(home: Path, tmp_path: Path) -> None:
    project = home / "oi.toml"
    project.write_text('network = "open"\n')
    forged = tmp_path / "forged.json"
    digest = hashlib.sha256(project.read_bytes()).hexdigest()
    forged.write_text(json.dumps({"files": {str(project): {"sha256": digest}}}))
    store = TrustStore.default()
    store.path.parent.mkdir(parents=True, mode=0o700)
    store.path.symlink_to(forged)
    with pytest.raises(ConfigError, match="is refused"):
        loaded()


def test_named_hosts_imply_the_allowlist_over_a_lower_none(home: Path) -> None:
    Path(os.environ["OI_CONFIG_FILE"]).write_text('network = "none"\n')
    assert loaded(allow_hosts=["pypi"]).settings.network == "allowlist"
    with pytest.raises(ConfigError, match="network is none"):
        loaded(allow_hosts=["pypi"], network="none")


def test_presets_expand_for_the_sandbox_from_the_policy_table(home: Path) -> None:
    policy = Policy(
        {
            k: [r]
            for k, r in parse_policy(
                'presets = { pypi = ["pypi.internal"] }\n', Path("/etc/oi/policy.toml")
            ).items()
        }
    )
    result = load({"allow_hosts": ["pypi"]}, policy=policy)
    assert result.sandbox_config().allow_hosts == ("pypi.internal",)


def test_the_policy_applies_once_and_is_named_as_the_source(home: Path) -> None:
    policy = Policy(
        {
            k: [r]
            for k, r in parse_policy('max_memory = "2g"\n', Path("/etc/oi/policy.toml")).items()
        }
    )
    Path(os.environ["OI_CONFIG_FILE"]).write_text("")
    result = load({}, policy=policy)
    assert result.settings.memory == 1 * GiB
    with pytest.raises(PolicyError, match="line 1"):
        load({"memory": "3g"}, policy=policy)
    small = Policy(
        {
            k: [r]
            for k, r in parse_policy('max_memory = "512m"\n', Path("/etc/oi/policy.toml")).items()
        }
    )
    capped = load({}, policy=small)
    assert capped.settings.memory == 512 * 1024**2
    assert str(capped.source_of("memory")).startswith("policy /etc/oi/policy.toml line 1")


# --- a decision for every setting ---------------------------------------------------------------


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_has_a_trust_level_and_a_policy_decision(name: str) -> None:
    """A new setting without a decision fails here: capped, fixed, a set, or harmless (why);
    and a decision the policy does not enforce fails too (``apply_policy`` is run with it)."""
    trust, decision = field_meta(name)
    assert trust in ("any", "narrow", "user", "admin")
    kind, _, rest = decision.partition(" ")
    if kind == "harmless:":
        assert len(rest) > 10, f"{name}: say why it is harmless"
    else:
        assert kind in ("cap", "fixed", "set"), f"{name}: unknown decision {decision!r}"
        assert rest.split()[0] in KNOWN_KEYS, f"{name}: {rest!r} is not a policy key"
    if trust == "any":
        assert kind == "harmless:", f"{name}: a key any project may set must be harmless"
    keys = [word for word in rest.split() if word in KNOWN_KEYS]
    if kind == "cap":
        assert_capped(name, keys[0])
    elif kind == "fixed":
        assert_fixed(name, keys[0])
    elif kind == "set":
        for key in keys:  # "set allowed_hosts and allowed_tcp_ports": each one decides
            assert_set_enforced(name, key)


def policy_of(text: str) -> Policy:
    rules = parse_policy(text, Path("/etc/oi/policy.toml"))
    return Policy({key: [rule] for key, rule in rules.items()})


CAP_PLUS: dict[str, str] = {"kill_grace": "timeout"}
"""A cap on a sum: the policy key bounds this setting plus that one."""


def assert_capped(name: str, key: str) -> None:
    """``cap KEY``: a value asked above the cap is refused naming the policy line, and a value
    nobody asked for is lowered to fit."""
    default = getattr(Settings(), name)
    assert isinstance(default, int | float) and default > 0, f"{name}: cap of a non-number?"
    other = getattr(Settings(), CAP_PLUS[name]) if name in CAP_PLUS else 0
    cap, high = other + 2 * default, 4 * default
    policy = policy_of(f"{key} = {cap!r}\n")
    asked = Settings.model_validate({name: high})
    refusal = refusal_of(
        asked,
        policy,
        f"{name} is marked 'cap {key}'",
        "NUMBER_CAPS, or a check such as _cap_kill_grace",
    )
    assert f"line 1: {key} = " in refusal and "more than the admin policy allows" in refusal
    lowered = apply_policy(asked, policy, explicit=set())
    assert other + getattr(lowered, name) <= cap, (
        f"{name} is marked 'cap {key}' but the policy does not lower it: add it to "
        "NUMBER_CAPS in orchestrator/policy.py (or enforce it there)"
    )


FIXED_SAMPLES: dict[str, Any] = {
    "egress_ranges": ["10.9.0.0/16"],
    "gvisor_runtime": "runsc-corp",
    "gvisor_network_runtime": "runsc-corp-net",
    "audit_log": "/var/log/oi/audit.jsonl",
    "image_prefix": "corp/oi-sandbox",
}
"""A value of each policy key that fixes a setting (admin only: system file)."""


def assert_fixed(name: str, key: str) -> None:
    """``fixed KEY``: the policy's value replaces whatever the user set."""
    assert key in FIXED_SAMPLES, f"{name}: add a sample value of {key} to FIXED_SAMPLES"
    sample = FIXED_SAMPLES[key]
    policy = policy_of(f"{key} = {json.dumps(sample)}\n")
    fixed = apply_policy(Settings(), policy, explicit={name})
    shown = json.dumps(getattr(fixed, name), default=str)
    assert shown == json.dumps(sample), (
        f"{name} is marked 'fixed {key}' but the policy's {key} does not set it: "
        "enforce it in apply_policy (orchestrator/policy.py)"
    )
    assert shown != json.dumps(getattr(Settings(), name), default=str)


SET_CASES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("env", "allow_env"): ("allow_env = false", {"env": ["HOME"]}),
    ("network", "allowed_networks"): ('allowed_networks = ["none"]', {"network": "open"}),
    ("allow_hosts", "allowed_hosts"): (
        'allowed_hosts = ["a.example"]',
        {"allow_hosts": ["b.example"]},
    ),
    ("allow_hosts", "allowed_tcp_ports"): (
        "allowed_tcp_ports = [443]",
        {"allow_hosts": ["db.example:5432"]},
    ),
    ("ca_bundle", "allowed_ca_bundles"): (
        'allowed_ca_bundles = ["/etc/ssl/certs/ca-certificates.crt"]',
        {"ca_bundle": "/etc/shadow"},
    ),
    ("mounts", "allow_extra_mounts"): ("allow_extra_mounts = false", {"mounts": ["/srv"]}),
    ("isolation", "required_isolation"): ('required_isolation = "gvisor"', {"isolation": "runc"}),
    ("toolbox", "allowed_toolboxes"): ('allowed_toolboxes = ["standard"]', {"toolbox": "full"}),
}
"""(setting, policy key) -> (a policy line, settings that line must refuse)."""


def assert_set_enforced(name: str, key: str) -> None:
    """``set KEY``: what the policy's set (or permission) leaves out is refused, naming the
    line; the same settings under a policy without that key pass (the refusal is KEY's)."""
    assert (name, key) in SET_CASES, f"{name}: add a case for {key} to SET_CASES"
    line, values = SET_CASES[(name, key)]
    asked = Settings.model_validate(values)
    apply_policy(asked, policy_of("max_pids = 100000\n"))  # control: nothing else refuses
    refusal = refusal_of(
        asked, policy_of(line + "\n"), f"{name} is marked 'set {key}'", "_apply_sets"
    )
    assert f"line 1: {key} = " in refusal and "not allowed by the admin policy" in refusal


def refusal_of(settings: Settings, policy: Policy, marked: str, where: str) -> str:
    """The message of the ``PolicyError`` the policy must raise for these settings."""
    try:
        apply_policy(settings, policy)
    except PolicyError as exc:
        return str(exc)
    pytest.fail(
        f"{marked} but the policy does not refuse {sorted(settings.model_fields_set)}: "
        f"enforce it in orchestrator/policy.py ({where})"
    )


def test_replay_reuses_every_capped_limit_of_a_record() -> None:
    """``replay.LIMIT_KEYS`` (what a record may narrow) are the settings the policy caps, less
    the ones ``NOT_REPLAYED`` explains: a new limit cannot be forgotten by replay."""
    capped = {name for name in FIELDS if field_meta(name)[1].startswith("cap ")}
    assert set(NOT_REPLAYED) <= capped, "NOT_REPLAYED names a key that is not a capped limit"
    assert set(LIMIT_KEYS) == capped - set(NOT_REPLAYED)
    assert all(field_meta(name)[0] == "narrow" for name in LIMIT_KEYS)
    sandbox_limits = {"memory", "cpus", "pids", "timeout", "kill_grace", "nofile", "tmp_size"}
    assert sandbox_limits | {"max_file_size", "max_output", "workdir_max_bytes"} <= set(LIMIT_KEYS)


def test_every_policy_key_is_used() -> None:
    decided = {field_meta(name)[1].split()[1] for name in FIELDS if " " in field_meta(name)[1]}
    others = {"max_concurrent_per_user", "max_concurrent_total", "allow_extra_mounts", "presets"}
    others |= {"allowed_ca_bundles", "allowed_tcp_ports"}
    assert set(KNOWN_KEYS) <= decided | others


def test_settings_itself_reads_no_source(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ``load`` reads files and the environment, so it knows each value's trust."""
    monkeypatch.setenv("OI_NETWORK", "open")
    (home / "oi.toml").write_text('network = "open"\n')
    assert Settings().network == "none"
