"""Planning a batch (reads settings, policy and --out; no Docker): per-task settings are
layered over the batch's through load_settings, so the admin policy caps them."""

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
    a, b = plan(text, tmp_path, flags={"timeout": 30, "model": "m/x", "memory": None})
    assert a.settings.timeout == 10 and a.settings.memory == 512 * 1024**2
    assert a.settings.model == "m/x"  # from the batch's flags
    assert a.settings.auto_run is True
    assert a.settings.workdir == (tmp_path / "out" / "a" / "workdir").resolve()
    assert a.settings.request_timeout == 30 and a.budget_s == 30
    assert b.settings.timeout == 30 and b.budget_s == 300
    assert b.settings.network == "allowlist" and b.settings.allow_hosts == ["pypi"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [("memory: 4g", "tasks.yaml:1 (task 'big')"), ("timeout: 600", "tasks.yaml:1 (task 'big')")],
)
def test_the_policy_caps_what_a_task_asks(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        plan(f"- id: big\n  prompt: p\n  {override}\n", tmp_path)
    assert expected in str(info.value) and "policy.toml" in str(info.value)


def test_invalid_task_settings_name_the_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks.yaml:3 \(task 'b'\): invalid settings: network"):
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
