"""A session's environment on the host (sandbox/session_env.py), its mount and variables
(spec.py), and what the model is told (prompts.py): tables and a tmp folder, no engine."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.languages import Language
from orchestrator.llm.prompts import PromptContext, build_system_prompt, format_result_for_model
from orchestrator.sandbox.bootstrap import ENV_DIR
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.session_env import (
    env_key,
    env_size,
    prepare_env_dir,
    sweep_envs,
)
from orchestrator.sandbox.spec import Identity, build_spec


@pytest.mark.parametrize(
    ("scope", "expected"),
    [("off", None), ("session", "session-S1"), ("workdir", "workdir-")],
)
def test_env_key(scope: str, expected: str | None, tmp_path: Path) -> None:
    key = env_key(scope, "S1", tmp_path, 1000)  # type: ignore[arg-type]
    if expected is None:
        assert key is None
    else:
        assert key is not None and key.startswith(expected)


def test_a_workdir_env_is_one_per_folder_and_user(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    same = env_key("workdir", "S1", tmp_path / "a", 1000)
    assert same == env_key("workdir", "S2", tmp_path / "link", 1000)  # the same folder
    assert same != env_key("workdir", "S1", tmp_path / "b", 1000)
    assert same != env_key("workdir", "S1", tmp_path / "a", 1001)  # never another user's


def test_prepare_makes_a_private_folder_of_the_blocks_uid(tmp_path: Path) -> None:
    path = tmp_path / "envs" / "session-x"
    prepare_env_dir(path, os.getuid(), os.getgid())
    info = path.lstat()
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert stat.S_IMODE(path.parent.lstat().st_mode) == 0o700
    assert (tmp_path / "envs" / "session-x.used").is_file()  # outside the mounted folder
    prepare_env_dir(path, os.getuid(), os.getgid())  # again: fine


def test_prepare_refuses_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "envs").mkdir(mode=0o700)
    (tmp_path / "envs" / "session-x").symlink_to(target)
    with pytest.raises(ConfigError, match="a symlink"):
        prepare_env_dir(tmp_path / "envs" / "session-x", os.getuid(), os.getgid())


def test_size_counts_what_is_there_and_follows_no_link(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "venv" / "lib").mkdir(parents=True)
    (env / "venv" / "lib" / "pkg.py").write_bytes(b"x" * 100_000)
    outside = tmp_path / "big"
    outside.write_bytes(b"y" * 1_000_000)
    (env / "escape").symlink_to(outside)
    (env / "loop").symlink_to(env)
    size = env_size(env)
    assert 100_000 <= size < 1_000_000


def test_sweep_removes_only_environments_unused_for_long(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    for name in ("old", "new"):
        prepare_env_dir(envs / name, os.getuid(), os.getgid())
        (envs / name / "file").write_text("x")
    day = 86400
    old_stamp = envs / "old.used"
    os.utime(old_stamp, (time.time() - 20 * day, time.time() - 20 * day))
    assert sweep_envs(envs, keep_days=14) == ["old"]
    assert sorted(p.name for p in envs.iterdir()) == ["new", "new.used"]


def spec_env(tmp_path: Path, **config: object) -> dict[str, str]:
    cfg = SandboxConfig(workdir=tmp_path, env_dir=tmp_path / "env", **config)  # type: ignore[arg-type]
    spec = build_spec(Language.PYTHON, "img", cfg, Identity(1000, 1000, 1000, 1, "1"), "S", {})
    return {
        **spec.environment,
        "__bind__": spec.host_config["binds"][str(tmp_path / "env")]["mode"],
    }


def test_the_environment_is_mounted_with_its_variables(tmp_path: Path) -> None:
    env = spec_env(tmp_path)
    assert env["OI_ENV"] == ENV_DIR and env["OI_STATE_DIR"] == f"{ENV_DIR}/state"
    assert env["__bind__"] == "rw"
    assert "PATH" not in env  # put first only once the program runs (nothing before approval)
    assert "OI_STATE_DIR" not in spec_env(tmp_path, python_state=False)


def test_a_full_environment_is_mounted_read_only(tmp_path: Path) -> None:
    cfg = SandboxConfig(workdir=tmp_path, env_dir=tmp_path / "env")
    spec = build_spec(
        Language.SHELL, "img", cfg, Identity(1, 1, 1, 1, "1"), "S", {}, env_writable=False
    )
    assert spec.host_config["binds"][str(tmp_path / "env")]["mode"] == "ro"


@pytest.mark.parametrize(
    ("state", "installs", "says", "not_says"),
    [
        (True, True, ["are back in the next Python block", "stay for the session"], ["gone"]),
        (False, True, ["are NOT kept", "stay for the session"], ["are back"]),
        (False, False, ["gone after each block"], ["remembers"]),
    ],
)
def test_the_model_is_told_exactly_what_survives(
    state: bool, installs: bool, says: list[str], not_says: list[str]
) -> None:
    prompt = build_system_prompt(
        PromptContext(
            workdir_host="/w",
            languages=[("python", "")],
            network="none",
            python_state=state,
            keeps_installs=installs,
        )
    )
    for words in says:
        assert words in prompt
    for words in not_says:
        assert words not in prompt


def test_a_full_environment_is_named_in_the_result() -> None:
    text = format_result_for_model(exit_code=0, stdout="ok", env_note="it is read-only now")
    assert text.startswith("exit code 0; note: it is read-only now")


def test_the_image_module_and_the_wrappers_agree_on_the_environment() -> None:
    """sandbox-images/python/oi_state.py (the Python wrapper's) and bootstrap.py (the bash
    wrappers') set the same variables and pip shims; the module is read here as text by the
    import machinery only, never used on the host."""
    import importlib.util

    from orchestrator.sandbox import bootstrap

    path = Path(__file__).resolve().parents[2] / "sandbox-images" / "python" / "oi_state.py"
    spec = importlib.util.spec_from_file_location("oi_state_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ENV_VARIABLES == bootstrap.ENV_VARIABLES
    assert module.PIP_SHIM == bootstrap.PIP_SHIM
