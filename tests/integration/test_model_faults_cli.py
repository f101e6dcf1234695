"""End to end: `oi run` against a model server that hangs, garbles, cuts, or drops a brace.

What a person sees: one line naming the setting to change, no traceback, within the bound;
and the turn vLLM's hermes parser used to spoil (vLLM issue 22885) now runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.fake_vllm import MALFORMED_CHUNKS, FakeVllm, Reply, ToolCallSpec
from tests.sandbox_fixtures import run_oi


def env_for(fake: FakeVllm, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OI_API_BASE": fake.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        **extra,
    }


def oi_run(workdir: Path, env: dict[str, str], *args: str) -> Any:
    return run_oi("run", *args, "--workdir", str(workdir), env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_a_silent_server_is_one_line_naming_the_setting(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(Reply(text="hi", hang_before_headers=True))
    env = env_for(fake_vllm, tmp_path, OI_FIRST_TOKEN_TIMEOUT="0.5")
    started = time.monotonic()
    proc = oi_run(workdir, env, "anything", "-y")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "OI_FIRST_TOKEN_TIMEOUT" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
    assert elapsed < 15  # the CLI's start-up and the sandbox check, plus 0.5 s (was 1,201 s)
    assert len(fake_vllm.chat_requests) == 1


def test_a_malformed_chunk_is_one_line(workdir: Path, fake_vllm: FakeVllm, tmp_path: Path) -> None:
    fake_vllm.script(Reply(text="hi", malformed_chunk=MALFORMED_CHUNKS["a JSON array"]))
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path), "anything", "-y")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
    assert "a JSON array instead of a chunk" in proc.stderr


def test_a_cut_reply_is_asked_again_and_the_run_goes_on(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    code = "echo made > made.txt"
    fake_vllm.script(
        Reply(text="Running it now, " * 5, chunk_size=8, drop_after_chunks=4),
        Reply(text=f"```sh\n{code}\n```"),
        Reply(text="Done."),
    )
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path), "make a file", "-y")
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "made.txt").read_text() == "made\n"
    assert len(fake_vllm.chat_requests) == 3


def test_a_tool_call_missing_its_closing_brace_runs(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    broken = '{"language": "bash", "code": "echo fixed > fixed.txt"'  # hermes dropped the }
    fake_vllm.script(
        Reply(tool_calls=[ToolCallSpec("execute", broken, id="chatcmpl-tool-1")]),
        Reply(text="Done."),
    )
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path), "write it", "-y", "--tool-mode", "tools")
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "fixed.txt").read_text() == "fixed\n"
    last = fake_vllm.chat_requests[1]["messages"]
    assert last[-1]["role"] == "tool" and "exit code 0" in last[-1]["content"]
    assert last[-2]["tool_calls"][0]["function"]["arguments"] == broken + "}"
