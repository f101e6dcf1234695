"""Settings precedence: flags > OI_* environment > ./oi.toml > the user config file."""

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings


@pytest.fixture
def layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    user = tmp_path / "user.toml"
    user.write_text('memory = "3g"\ntimeout = 30\ncpus = 3\npids = 33\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "oi.toml").write_text("timeout = 40\ncpus = 4\npids = 44\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("OI_CONFIG_FILE", str(user))
    monkeypatch.setenv("OI_CPUS", "5")
    monkeypatch.setenv("OI_PIDS", "55")
    monkeypatch.delenv("OI_POLICY_FILE", raising=False)
    return project


def test_each_layer_overrides_the_one_below(layered: Path) -> None:
    settings = load_settings(pids=66)
    assert settings.memory == 3 * 1024**3  # only the user config sets it
    assert settings.timeout == 40  # ./oi.toml beats the user config
    assert settings.cpus == 5  # the environment beats both files
    assert settings.pids == 66  # a flag beats everything
    assert settings.workdir == layered.resolve()


def test_flags_given_as_none_do_not_override(layered: Path) -> None:
    assert load_settings(pids=None).pids == 55


def test_bad_values_name_the_key_and_the_sources(
    layered: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OI_MEMORY", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "memory" in str(info.value) and "oi.toml" in str(info.value)


def test_unknown_config_key_is_an_error(layered: Path) -> None:
    (layered / "oi.toml").write_text("memroy = '1g'\n")
    with pytest.raises(ConfigError, match="memroy"):
        load_settings()
