"""Planning a batch (reads settings, policy and --out; no Docker): per-task settings are
layered over the batch's through ``loading.load``: an untrusted tasks file may only narrow the
command line, a trusted one may set what the user may; the admin policy caps both."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.batch import TaskResult, TaskSpec, parse_tasks, plan_tasks
from orchestrator.errors import ConfigError, PolicyError

SOURCE = "tasks.yaml"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user config, no OI_* variables; a policy file of our own."""
    for name in list(os.environ):
        if name.startswith("OI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OI_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text('max_memory = "1g"\nmax_timeout = 120\n')
    monkeypatch.setenv("OI_POLICY_FILE", str(policy))
    return policy


def plan(text: str, tmp_path: Path, flags: dict[str, Any] | None = None, **kw: Any) -> list[Any]:
    specs = parse_tasks(text, SOURCE, base_dir=tmp_path)
    options: dict[str, Any] = {
        "flags": flags or {},
        "out_dir": tmp_path / "out",
        "default_budget_s": 300.0,
        "resume": False,
        "source": SOURCE,
        "owner_reference": tmp_path,
        **kw,
    }
    return plan_tasks(specs, **options)


def test_task_settings_layer_over_the_batch_flags(tmp_path: Path) -> None:
    text = """
- id: a
  prompt: p
  timeout: 10
  memory: 512m
  budget: 30
- id: b
  prompt: q
  allow_hosts: [pypi]
"""
    flags = {"timeout": 30, "model": "m/x", "memory": None, "allow_hosts": ["pypi", "npm"]}
    a, b = plan(text, tmp_path, flags=flags)
    assert a.settings.timeout == 10 and a.settings.memory == 512 * 1024**2
    assert a.settings.model == "m/x"  # from the batch's flags
    assert a.settings.auto_run is True
    assert a.settings.workdir == (tmp_path / "out" / "a" / "workdir").resolve()
    assert a.settings.request_timeout == 30 and a.budget_s == 30
    assert b.settings.timeout == 30 and b.budget_s == 300
    assert a.settings.allow_hosts == ["pypi", "npm"]  # not narrowed by task a
    assert b.settings.network == "allowlist" and b.settings.allow_hosts == ["pypi"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [("memory: 4g", "tasks.yaml:1 (task 'big')"), ("timeout: 600", "tasks.yaml:1 (task 'big')")],
)
def test_the_policy_caps_what_a_task_asks(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:  # even a trusted tasks file
        plan(f"- id: big\n  prompt: p\n  {override}\n", tmp_path, trusted=True)
    assert expected in str(info.value) and "policy.toml" in str(info.value)


@pytest.mark.parametrize(
    ("flags", "task"),
    [
        ({"memory": "512m"}, "memory: 900m"),
        ({"timeout": 30}, "timeout: 60"),
        ({}, "network: open"),
        ({"network": "allowlist", "allow_hosts": ["pypi"]}, "network: open"),
        ({"network": "allowlist", "allow_hosts": ["pypi"]}, "allow_hosts: [evil.example]"),
        ({}, "allow_hosts: [pypi]"),
        ({"env": ["HF_TOKEN"]}, "env: [OI_API_KEY]"),
        ({}, "env: [HOME]"),
        ({"isolation": "gvisor"}, "isolation: runc"),
        ({}, "pids: 100000"),
        ({}, "max_file_size: 100g"),
    ],
)
def test_an_untrusted_task_cannot_widen_the_command_line(
    tmp_path: Path, flags: dict[str, Any], task: str
) -> None:
    key = task.split(":", maxsplit=1)[0]
    with pytest.raises(ConfigError, match=rf"tasks.yaml:1 \(task 'a'\): {key} = .* is refused"):
        plan(f"- id: a\n  prompt: p\n  {task}\n", tmp_path, flags=flags)
    # the same task in a tasks file the user trusted (oi trust) may
    if "100" not in task:
        assert plan(f"- id: a\n  prompt: p\n  {task}\n", tmp_path, flags=flags, trusted=True)


@pytest.mark.parametrize(
    "key", ["api_base", "api_key", "ca_bundle", "auto_run", "data_dir", "egress_ranges"]
)
def test_a_task_cannot_set_user_keys_at_all(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        plan(f"- id: a\n  prompt: p\n  {key}: x\n", tmp_path, trusted=True)


@pytest.mark.parametrize("where", ["..", "../elsewhere", "/etc", "sub/../../up"])
def test_a_task_workdir_stays_inside_the_tasks_files_folder(tmp_path: Path, where: str) -> None:
    base = tmp_path / "batch"
    base.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (base / "sub").mkdir()
    specs = parse_tasks(f"- id: a\n  prompt: p\n  workdir: {where}\n", SOURCE, base_dir=base)
    with pytest.raises(ConfigError, match="outside the tasks file's folder"):
        plan_tasks(
            specs,
            flags={},
            out_dir=tmp_path / "out",
            default_budget_s=60,
            resume=False,
            source=str(base / SOURCE),
            owner_reference=base,
        )


def test_a_task_workdir_symlinked_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "batch"
    base.mkdir()
    (base / "ssh").symlink_to(Path.home() / ".ssh")
    specs = parse_tasks("- id: a\n  prompt: p\n  workdir: ssh\n", SOURCE, base_dir=base)
    with pytest.raises(ConfigError, match="outside the tasks file's folder"):
        plan_tasks(
            specs,
            flags={},
            out_dir=tmp_path / "out",
            default_budget_s=60,
            resume=False,
            source=str(base / SOURCE),
            owner_reference=base,
        )


def test_invalid_task_settings_name_the_task(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"tasks.yaml:3 \(task 'b'\): network: 'everywhere' is not"
    ):
        plan("- id: a\n  prompt: p\n- id: b\n  prompt: q\n  network: everywhere\n", tmp_path)


@pytest.mark.timeout(10)
def test_a_template_with_a_fifo_is_refused_before_anything_runs(tmp_path: Path) -> None:
    template = tmp_path / "tpl"
    template.mkdir()
    os.mkfifo(template / "pipe")
    with pytest.raises(ConfigError, match=r"tasks.yaml:1 \(task 'a'\): .*a FIFO"):
        plan("- id: a\n  prompt: p\n  workdir: tpl\n", tmp_path)


def test_resume_keeps_unchanged_passed_and_failed_results(tmp_path: Path) -> None:
    text = "\n".join(
        f"- id: {name}\n  prompt: {name}" for name in ("ok", "bad", "err", "new", "changed")
    )
    specs = {s.id: s for s in parse_tasks(text, SOURCE, base_dir=tmp_path)}
    stored = {
        "ok": TaskResult("ok", "passed", "x", digest=specs["ok"].digest()),
        "bad": TaskResult("bad", "failed", "x", digest=specs["bad"].digest()),
        "err": TaskResult("err", "error", "x", digest=specs["err"].digest()),
        "changed": TaskResult(
            "changed", "passed", "x", digest=TaskSpec("changed", "old", 1).digest()
        ),
    }
    for name, result in stored.items():
        folder = tmp_path / "out" / name
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result.to_dict()))
    planned = {p.spec.id: p for p in plan(text, tmp_path, resume=True)}
    assert planned["ok"].kept is not None and planned["ok"].kept.resumed
    assert planned["bad"].kept is not None and planned["bad"].kept.outcome == "failed"
    assert planned["err"].kept is None  # infrastructure errors run again
    assert planned["new"].kept is None
    assert planned["changed"].kept is None  # the task changed since its result
    assert all(p.kept is None for p in plan(text, tmp_path, resume=False))


@pytest.mark.parametrize("budget", ["301", "100h"])
def test_an_untrusted_task_budget_cannot_outlast_the_command_lines(
    tmp_path: Path, budget: str
) -> None:
    text = f"- id: slow\n  prompt: p\n  budget: {budget}\n"
    with pytest.raises(ConfigError) as info:
        plan(text, tmp_path)
    assert "task 'slow'" in str(info.value) and "--budget 300 s" in str(info.value)
    (trusted,) = plan(text, tmp_path, trusted=True)  # the user's own file may
    assert trusted.budget_s > 300
    (shorter,) = plan("- id: quick\n  prompt: p\n  budget: 299\n", tmp_path)
    assert shorter.budget_s == 299
