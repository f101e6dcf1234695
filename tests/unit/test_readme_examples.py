"""The README's example profiles load as documented (so the documentation cannot rot)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestrator.loading import load
from orchestrator.policy import Policy

README = Path(__file__).resolve().parents[2] / "README.md"


def profiles_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- profiles example")
    match = re.search(r"```toml\n(.*?)```", text[marker:], re.DOTALL)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("data", {"network": "none", "timeout": 300.0, "max_output": 4096}),
        ("web", {"network": "allowlist", "max_model_requests": 2, "toolbox": "full"}),
    ],
)
def test_the_readme_profiles_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str, expected: dict[str, object]
) -> None:
    for name in list(os.environ):
        if name.startswith("OI_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config.toml"
    config.write_text(profiles_example())
    monkeypatch.setenv("OI_CONFIG_FILE", str(config))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    loaded = load({"profile": profile}, policy=Policy())
    for key, value in expected.items():
        assert getattr(loaded.settings, key) == value
    [piece] = loaded.instructions.pieces  # the profile's replace the config's
    assert piece.source.startswith(f"profile {profile}")
    assert ("pandas" if profile == "data" else "pip") in piece.text
