"""Presets widen the allowlist, so their hosts come only from the admin's table, oi's own and
the system's package configuration - never from the user's environment or a project's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.presets import expand_hosts, preset_hosts


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake system root with package configuration that names mirrors."""
    (tmp_path / "etc/xdg/pip").mkdir(parents=True)
    (tmp_path / "etc/pip.conf").write_text(
        "[global]\nindex-url = https://pypi.mirror.example/simple\n"
        "extra-index-url = file:///opt/pypi/simple https://extra.example/simple\n"
    )
    (tmp_path / "etc/npmrc").write_text("registry=https://npm.mirror.example/\n")
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(
        "URIs: http://apt.mirror.example/debian\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pypi", {"pypi.org", "files.pythonhosted.org", "pypi.mirror.example", "extra.example"}),
        ("PyPI", {"pypi.org", "files.pythonhosted.org", "pypi.mirror.example", "extra.example"}),
        ("npm", {"registry.npmjs.org", "npm.mirror.example"}),
        ("debian", {"deb.debian.org", "security.debian.org", "apt.mirror.example"}),
    ],
)
def test_presets_are_builtin_plus_system_configuration(
    root: Path, name: str, expected: set[str]
) -> None:
    assert set(preset_hosts(name, root=root) or ()) == expected


def test_a_policy_table_replaces_a_preset(root: Path) -> None:
    table = {"pypi": ("pypi.internal",)}
    assert expand_hosts(["pypi", "example.org"], table, root) == ("example.org", "pypi.internal")
    assert "registry.npmjs.org" in expand_hosts(["npm"], table, root)  # others unchanged


def test_an_empty_policy_preset_is_an_error(root: Path) -> None:
    with pytest.raises(ConfigError, match="names no hosts"):
        expand_hosts(["pypi"], {"pypi": ()}, root)


def test_the_users_environment_and_project_dotfiles_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holes of the old expansion: PIP_INDEX_URL and a project's .npmrc named hosts."""
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    project = tmp_path / "repo"
    project.mkdir()
    (project / ".npmrc").write_text("registry=https://evil.example/\n")
    (project / "pip.conf").write_text("[global]\nindex-url = https://evil.example/simple\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("PIP_INDEX_URL", "https://evil.example/simple")
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "https://evil.example/")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(project / "pip.conf"))
    hosts = expand_hosts(["pypi", "npm", "debian"], None, empty_root)
    assert "evil.example" not in hosts
    assert set(hosts) == {
        "pypi.org",
        "files.pythonhosted.org",
        "registry.npmjs.org",
        "deb.debian.org",
        "security.debian.org",
    }
    assert os.environ["PIP_INDEX_URL"]  # the variable was there all along


def test_hosts_are_normalised_sorted_and_ip_literals_refused(root: Path) -> None:
    assert expand_hosts(["B.example", "a.example.", "b.example"], None, root) == (
        "a.example",
        "b.example",
    )
    with pytest.raises(ConfigError, match="IP addresses are not allowed"):
        expand_hosts(["169.254.169.254"], None, root)
