"""Named profiles: ``[profiles.NAME]`` tables of the user config chosen with ``--profile``,
``OI_PROFILE`` or the config's own ``profile = NAME``: in the precedence chain between the user
config and the project file, with sources, and under the admin policy like any value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError, PolicyError
from orchestrator.loading import load
from orchestrator.policy import Policy, parse_policy
from orchestrator.trust import TrustStore

GiB = 1024**3

CONFIG = """
memory = "1g"
instructions = "base advice"

[profiles.data]
memory = "3g"
timeout = 300
max_output = 4096
instructions = "Prefer pandas for data tasks; read big CSV files in chunks."

[profiles.web]
network = "allowlist"
allow_hosts = ["pypi"]
model = "Qwen/Qwen3-4B-Instruct-2507"
instructions = "Use requests; install missing packages with pip."
max_model_requests = 2
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OI_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    monkeypatch.setenv("OI_CONFIG_FILE", str(config))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def policy(text: str) -> Policy:
    rules = parse_policy(text, Path("/etc/oi/policy.toml"))
    return Policy({key: [rule] for key, rule in rules.items()})


def loaded(policy_: Policy | None = None, **flags: Any) -> Any:
    return load(flags, policy=policy_ or Policy())


def test_a_profile_sits_above_the_user_config_with_its_own_source(home: Path) -> None:
    result = loaded(profile="data")
    assert result.settings.memory == 3 * GiB and result.settings.timeout == 300
    config = os.environ["OI_CONFIG_FILE"]
    assert str(result.source_of("memory")) == f"profile data ({config} [profiles.data])"
    assert str(result.source_of("profile")) == "flag command line"
    [piece] = result.instructions.pieces  # the profile's replace the config's
    assert piece.text.startswith("Prefer pandas") and piece.source.startswith("profile data")
    # without a profile, the config's own values
    plain = loaded()
    assert plain.settings.memory == GiB and plain.instructions.pieces[0].text == "base advice"


def test_the_project_env_and_flags_still_win_over_a_profile(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "oi.toml").write_text('memory = "2g"\n')  # narrows the profile's 3g
    monkeypatch.setenv("OI_TIMEOUT", "100")
    result = loaded(profile="data", max_output=1000)
    assert result.settings.memory == 2 * GiB
    assert (result.settings.timeout, result.settings.max_output) == (100, 1000)


def test_a_project_file_may_only_narrow_what_the_profile_allows(home: Path) -> None:
    (home / "oi.toml").write_text('allow_hosts = ["pypi.org"]\n')
    assert loaded(profile="web").settings.allow_hosts == ["pypi.org"]
    (home / "oi.toml").write_text('allow_hosts = ["evil.example"]\n')
    with pytest.raises(ConfigError, match="is refused"):
        loaded(profile="web")
    (home / "oi.toml").write_text("max_model_requests = 8\n")
    with pytest.raises(ConfigError, match="max_model_requests = 8 is refused"):
        loaded(profile="web")
    (home / "oi.toml").write_text("max_model_requests = 1\n")
    assert loaded(profile="web").settings.max_model_requests == 1


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('max_memory = "2g"', 'line 1: max_memory = "2g"'),
        ("max_model_requests = 1", "line 1: max_model_requests = 1"),
        ('allowed_networks = ["none"]', "--network allowlist is not allowed"),
    ],
)
def test_a_profile_cannot_widen_beyond_the_policy(home: Path, rule: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        loaded(policy(rule), profile="data" if "memory" in rule else "web")


def test_values_nobody_asked_for_are_lowered_to_the_policys_cap(home: Path) -> None:
    assert loaded(policy("max_model_requests = 2")).settings.max_model_requests == 2


def test_the_profile_is_chosen_by_flag_then_env_then_the_config(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Path(os.environ["OI_CONFIG_FILE"])
    config.write_text('profile = "data"\n' + CONFIG)
    assert loaded().settings.memory == 3 * GiB
    monkeypatch.setenv("OI_PROFILE", "web")
    assert loaded().settings.network == "allowlist"
    assert loaded(profile="data").settings.network == "none"


@pytest.mark.parametrize(
    ("project", "message"),
    [
        ('profile = "web"', "profile is refused here"),
        ('[profiles.x]\nnetwork = "open"', "profiles is refused here"),
    ],
)
def test_a_project_file_cannot_choose_or_define_profiles(
    home: Path, project: str, message: str
) -> None:
    path = home / "oi.toml"
    path.write_text(project + "\n")
    with pytest.raises(ConfigError, match=message):
        loaded()
    TrustStore.default().trust(path)  # not even a trusted one: profiles are the user's
    with pytest.raises(ConfigError, match=message):
        loaded()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[profiles.bad]\nmemroy = "1g"', "unknown key 'memroy'; did you mean 'memory'"),
        ('[profiles.bad]\negress_ranges = ["10.0.0.0/8"]', "only by the admin policy"),
        ('[profiles.bad]\nprofile = "web"', "profile is refused here"),
        ('[profiles]\nbad = "text"', "profiles must be tables"),
    ],
)
def test_a_bad_profile_is_named(home: Path, table: str, message: str) -> None:
    Path(os.environ["OI_CONFIG_FILE"]).write_text(table + "\n")
    with pytest.raises(ConfigError, match=message):
        loaded(profile="bad")


def test_an_unknown_profile_lists_the_ones_there_are(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"profile 'gpu' is not in .*profiles there: data, web"):
        loaded(profile="gpu")
