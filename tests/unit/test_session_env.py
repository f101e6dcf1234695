"""A session's environment on the host (sandbox/session_env.py), its mount and variables
(spec.py), and what the model is told (prompts.py): tables and a tmp folder, no engine."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.fsafe import remove_tree
from orchestrator.languages import Language
from orchestrator.llm.prompts import PromptContext, build_system_prompt, format_result_for_model
from orchestrator.sandbox.bootstrap import ENV_DIR
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.session_env import (
    env_key,
    env_size,
    env_snapshot,
    prepare_env_dir,
    state_key,
    sweep_envs,
)
from orchestrator.sandbox.spec import Identity, build_spec, state_dir_in_sandbox
from orchestrator.sandbox.workdir_quota import WorkdirOverrun
from tests.deep import DEPTH, nest, shallow_stack


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
    env = spec_env(tmp_path, state_key="ab" * 32)
    assert env["OI_ENV"] == ENV_DIR and env["OI_STATE_KEY"] == "ab" * 32
    assert env["OI_STATE_DIR"] == state_dir_in_sandbox("S")
    assert env["OI_STATE_DIR"].startswith(f"{ENV_DIR}/state/")
    assert state_dir_in_sandbox("S") != state_dir_in_sandbox("T")  # each session its own
    assert env["__bind__"] == "rw"
    assert "PATH" not in env  # put first only once the program runs (nothing before approval)
    for off in (spec_env(tmp_path, python_state=False, state_key="ab" * 32), spec_env(tmp_path)):
        assert "OI_STATE_DIR" not in off and "OI_STATE_KEY" not in off  # no key: no state


def test_state_keys_are_per_session_stable_and_need_the_users_secret(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    first = state_key(envs, "s1")
    assert state_key(envs, "s1") == first  # a resumed session gets its key back
    assert state_key(envs, "s2") != first
    assert len(bytes.fromhex(first)) == 32
    secret = envs / "state.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(envs.stat().st_mode) == 0o700
    assert state_key(tmp_path / "other-envs", "s1") != first  # another secret, another key


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


@pytest.mark.parametrize(
    ("stopped", "expected"),
    [
        (
            True,
            "stopped: the session environment limit of 8 MiB (installed packages, Python "
            "state) was reached (it holds 9 MiB); the block was killed. Uninstall packages you "
            "do not need, or install fewer.",
        ),
        (
            False,
            "exit code 0; the session environment limit of 8 MiB (installed packages, Python "
            "state) was passed (it holds 9 MiB). Uninstall packages you do not need.",
        ),
    ],
)
def test_an_environment_past_its_limit_is_named_in_the_result(stopped: bool, expected: str) -> None:
    overrun = WorkdirOverrun("bytes", 8 << 20, 9 << 20, 3, stopped, "environment")
    text = format_result_for_model(exit_code=0, stdout="ok", workdir_overrun=overrun)
    assert text.splitlines()[0] == expected


def test_the_environment_is_counted_through_folders_a_block_locked_and_any_depth(
    tmp_path: Path,
) -> None:
    """Its bound counts what hides below chmod 000 or deeper than PATH_MAX (oi opens its own
    environment's folders back up), and no link is followed."""
    env = tmp_path / "env"
    (env / "locked").mkdir(parents=True)
    (env / "locked" / "blob").write_bytes(os.urandom(300_000))
    (env / "locked").chmod(0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(500_000))
    (env / "link").symlink_to(outside)
    fd = nest(env, mode=0o700)
    with os.fdopen(os.open("deep", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "wb") as f:
        f.write(os.urandom(400_000))
    os.close(fd)
    try:
        with shallow_stack():
            snapshot = env_snapshot(env)
        assert 700_000 <= snapshot.usage.bytes < 1_150_000 + DEPTH * 8192
        assert snapshot.usage.files == 1 + 1 + 1 + DEPTH + 1  # locked, blob, link, d..., deep
        assert not snapshot.unreadable
    finally:
        remove_tree(env)


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


def test_python_blocks_take_pth_paths_but_never_run_pth_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sandbox's oi_state does with the environment's site-packages: the paths a
    .pth file names go on sys.path (editable installs work), its `import` lines never run
    (``site.addsitedir`` would run them in the approved program, before its first line)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "sandbox-images" / "python" / "oi_state.py"
    spec = importlib.util.spec_from_file_location("oi_state_pth_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    site = tmp_path / "site-packages"
    (site / "src").mkdir(parents=True)
    marker = tmp_path / "ran"
    (site / "a_editable.pth").write_text("# a comment\nsrc\nmissing-folder\n")
    (site / "zz_attack.pth").write_text(
        f"import os; open({str(marker)!r}, 'w').write('x')\n"
        f"\timport os; open({str(marker)!r}, 'w').write('y')\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    module.add_site_packages(str(site))
    assert sys.path[-2:] == [str(site), str(site / "src")]
    assert not marker.exists()
    assert str(site / "missing-folder") not in sys.path
