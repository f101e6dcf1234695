"""End to end: `oi run` through the CLI, the fake vLLM over real HTTP, the real Docker engine."""

from __future__ import annotations

import csv
import json
import os
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fake_vllm import FakeVllm, Reply, ToolCallSpec, context_overflow, prompt_too_long
from tests.sandbox_fixtures import run_oi


def fence(language: str, code: str) -> str:
    return f"Here is the code.\n\n```{language}\n{code}\n```\n"


@pytest.fixture
def agent_env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


def oi_run(workdir: Path, env: dict[str, str], *args: str, stdin: str = "") -> Any:
    return run_oi("run", *args, "--workdir", str(workdir), env=env, input=stdin)


def last_user_content(request: dict[str, Any]) -> str:
    return str(request["messages"][-1]["content"])


def sessions_of(env: dict[str, str]) -> list[Path]:
    return sorted((Path(env["XDG_DATA_HOME"]) / "oi" / "sessions").glob("*.jsonl"))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


CSV_CLEAN = """
import pandas as pd
import matplotlib.pyplot as plt

totals = None
for chunk in pd.read_csv("sales.csv", chunksize=3):
    chunk["date"] = pd.to_datetime(chunk["date"], errors="coerce")
    chunk["revenue"] = pd.to_numeric(chunk["revenue"], errors="coerce")
    chunk = chunk.dropna(subset=["date", "revenue"])
    chunk = chunk[chunk["revenue"] >= 0]
    monthly = chunk.groupby(chunk["date"].dt.to_period("M"))["revenue"].sum()
    totals = monthly if totals is None else totals.add(monthly, fill_value=0)
totals = totals.sort_index()
totals.to_csv("monthly_revenue.csv", header=["revenue"], index_label="month")
ax = totals.plot(kind="line", title="Monthly revenue")
plt.savefig("monthly_revenue.png")
print(totals.to_string())
""".strip()


def test_csv_workload_cleans_aggregates_and_plots(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    rows = [
        ("2026-01-05", "100.5"),
        ("2026-01-20", "49.5"),
        ("not a date", "10"),
        ("2026-02-01", ""),
        ("2026-02-11", "200"),
        ("2026-02-28", "-5"),
        ("2026-03-03", "abc"),
        ("2026-03-15", "300"),
        ("2026-03-31", "0.25"),
    ]
    with open(workdir / "sales.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["date", "revenue"])
        writer.writerows(rows)
    os.chown(workdir, 1000, 1000)
    (workdir / "sales.csv").chmod(0o644)

    def after_run(request: dict[str, Any]) -> Reply:
        result = last_user_content(request)
        assert "exit code 0" in result, result
        return Reply(text="Done: monthly_revenue.csv and monthly_revenue.png are in your folder.")

    fake_vllm.script(Reply(text=fence("python", CSV_CLEAN)), after_run)
    proc = oi_run(workdir, agent_env, "clean sales.csv and plot monthly revenue", "-y")
    assert proc.returncode == 0, proc.stderr
    with open(workdir / "monthly_revenue.csv") as fh:
        monthly = {row["month"]: float(row["revenue"]) for row in csv.DictReader(fh)}
    assert monthly == {"2026-01": 150.0, "2026-02": 200.0, "2026-03": 300.25}
    png = workdir / "monthly_revenue.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_uid == 1000  # the user's file, not root's
    assert "2026-03" in proc.stdout  # block output streamed to the terminal


def test_recent_logs_are_archived_by_a_shell_block(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    logs = workdir / "logs"
    logs.mkdir()
    for name in ("app.log", "db.log"):
        (logs / name).write_text(f"{name} recent\n")
    old = logs / "old.log"
    old.write_text("old\n")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    (logs / "notes.txt").write_text("not a log\n")
    script = (
        "mkdir -p backup\n"
        "find . -path ./backup -prune -o -name '*.log' -mtime -1 -print0 "
        "| tar --null -czf backup/logs.tar.gz -T -\n"
        "tar -tzf backup/logs.tar.gz"
    )
    fake_vllm.script(Reply(text=fence("bash", script)), Reply(text="Archived the recent logs."))
    proc = oi_run(workdir, agent_env, "back up .log files changed in the last 24 h", "-y")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(workdir / "backup" / "logs.tar.gz") as tar:
        names = sorted(Path(n).name for n in tar.getnames())
    assert names == ["app.log", "db.log"]


def test_cross_language_pipeline_in_tools_mode(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    steps = [
        (
            "python",
            "import json\njson.dump({'values': [3, 1, 4, 1, 5, 9, 2, 6]}, open('data.json', 'w'))\nprint('wrote data.json')",
        ),
        (
            "javascript",
            "const fs = require('fs');\nconst v = JSON.parse(fs.readFileSync('data.json')).values;\nconst mean = v.reduce((a, b) => a + b, 0) / v.length;\nfs.writeFileSync('stats.json', JSON.stringify({n: v.length, mean, max: Math.max(...v)}));\nconsole.log('mean', mean);",
        ),
        (
            "shell",
            'echo "report: n=$(jq .n stats.json) mean=$(jq .mean stats.json) max=$(jq .max stats.json)"',
        ),
    ]
    ids = [f"chatcmpl-tool-{i}" for i in range(3)]

    def step(index: int):
        def reply(request: dict[str, Any]) -> Reply:
            if index > 0:
                last = request["messages"][-1]
                assert last["role"] == "tool" and last["tool_call_id"] == ids[index - 1]
                assert "exit code 0" in last["content"]
            language, code = steps[index]
            return Reply(
                tool_calls=[
                    ToolCallSpec("execute", {"language": language, "code": code}, id=ids[index])
                ]
            )

        return reply

    def final(request: dict[str, Any]) -> Reply:
        last = request["messages"][-1]
        assert last["role"] == "tool" and "report: n=8 mean=3.875 max=9" in last["content"]
        return Reply(text="The mean is 3.875.")

    fake_vllm.script(step(0), step(1), step(2), final)
    proc = oi_run(workdir, agent_env, "pipeline", "-y", "--tool-mode", "tools")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((workdir / "stats.json").read_text()) == {"n": 8, "mean": 3.875, "max": 9}
    first = fake_vllm.chat_requests[0]
    assert first["tools"][0]["function"]["name"] == "execute"
    assert first["top_k"] == 20 and first["stream"] is True


def test_traceback_reaches_the_model_which_fixes_the_code(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    def fix(request: dict[str, Any]) -> Reply:
        result = last_user_content(request)
        assert "exit code 1" in result and "NameError" in result and "Traceback" in result
        return Reply(text=fence("python", "print(sum([1, 2, 3]))"))

    def done(request: dict[str, Any]) -> Reply:
        assert "exit code 0" in last_user_content(request) and "6" in last_user_content(request)
        return Reply(text="The sum is 6.")

    fake_vllm.script(Reply(text=fence("python", "print(totl([1, 2, 3]))")), fix, done)
    proc = oi_run(workdir, agent_env, "sum 1..3", "-y")
    assert proc.returncode == 0, proc.stderr
    assert fake_vllm.pending_replies == 0


def test_declined_block_is_reported_and_not_run(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    def after(request: dict[str, Any]) -> Reply:
        assert "declined by the user" in last_user_content(request)
        return Reply(text="OK, I will not do that.")

    fake_vllm.script(Reply(text=fence("sh", "touch should-not-exist")), after)
    proc = oi_run(workdir, agent_env, "make a file", stdin="n\n")
    assert proc.returncode == 0, proc.stderr
    assert not (workdir / "should-not-exist").exists()
    assert "Run it?" in proc.stderr


def test_eof_on_stdin_stops_and_runs_nothing(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    """Nobody is left to answer: oi stops (exit 3), so a CI job that forgot -y is not green."""
    fake_vllm.script(Reply(text=fence("sh", "touch nope")), Reply(text="Fine."))
    proc = oi_run(workdir, agent_env, "make a file", stdin="")
    assert proc.returncode == 3, proc.stderr
    assert not (workdir / "nope").exists()
    assert "the input ended" in proc.stderr and "-y runs blocks without asking" in proc.stderr
    assert len(fake_vllm.chat_requests) == 1  # the model is not asked to go on


def test_always_then_runs_without_asking(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(
        Reply(text=fence("sh", "touch one")),
        Reply(text=fence("sh", "touch two")),
        Reply(text="Done."),
    )
    proc = oi_run(workdir, agent_env, "two files", stdin="a\n")
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "one").exists() and (workdir / "two").exists()
    assert proc.stderr.count("Run it?") == 1


def test_quit_stops_with_exit_3(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(Reply(text=fence("sh", "touch x")))
    proc = oi_run(workdir, agent_env, "x", stdin="q\n")
    assert proc.returncode == 3
    assert not (workdir / "x").exists()


def test_max_turns_stops_with_exit_3(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(*[Reply(text=fence("sh", f"echo {i}")) for i in range(5)])
    proc = oi_run(workdir, agent_env, "forever", "-y", "--max-turns", "2")
    assert proc.returncode == 3
    assert "max_turns" in proc.stderr
    assert len(fake_vllm.chat_requests) == 2


def test_loop_guard_stops_the_same_failure(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(*[Reply(text=fence("sh", "echo broken >&2; exit 1")) for _ in range(6)])
    proc = oi_run(workdir, agent_env, "loop", "-y")
    assert proc.returncode == 3
    assert "loop_guard" in proc.stderr
    assert len(fake_vllm.chat_requests) == 3


def test_endpoint_down_is_one_line(workdir: Path, agent_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**agent_env, "OI_API_BASE": f"http://127.0.0.1:{port}/v1"}
    proc = oi_run(workdir, env, "anything", "-y")
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1


def test_model_not_found(workdir: Path, agent_env: dict[str, str]) -> None:
    proc = oi_run(workdir, agent_env, "anything", "-y", "--model", "no/such-model")
    assert proc.returncode == 1
    assert "no/such-model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("shape", ["flat", "nested"])
@pytest.mark.parametrize("error", [context_overflow, prompt_too_long])
def test_context_overflow_shrinks_and_retries_once(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str], shape: str, error: Any
) -> None:
    from dataclasses import replace

    big = fence("sh", "head -c 3000 /dev/zero | tr '\\0' x")
    fake_vllm.script(
        Reply(text=big),
        Reply(text=big + " "),
        Reply(text=big + "  "),
        Reply(error=replace(error(), shape=shape)),
        Reply(text="Answer."),
    )
    proc = oi_run(workdir, agent_env, "hello", "-y", "--max-output", "4000")
    assert proc.returncode == 0, proc.stderr
    assert "too long" in proc.stderr
    before, after = fake_vllm.chat_requests[-2:]  # the refused request and the retry
    assert len(json.dumps(after["messages"])) < len(json.dumps(before["messages"]))
    assert "removed to fit the context window" in json.dumps(after["messages"])


def test_context_overflow_twice_is_an_error(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(Reply(error=context_overflow()), Reply(error=context_overflow()))
    proc = oi_run(workdir, agent_env, "hello", "-y")
    assert proc.returncode == 1
    assert "context" in proc.stderr


def test_long_outputs_are_trimmed_to_fit_a_small_context(
    workdir: Path, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    with FakeVllm(max_model_len=3000) as fake:
        env = {**agent_env, "OI_API_BASE": fake.base_url}
        big = "head -c 6000 /dev/zero | tr '\\0' x"
        fake.script(
            *[Reply(text=fence("sh", big + f" # {i}")) for i in range(4)], Reply(text="Done.")
        )
        proc = oi_run(workdir, env, "lots of output", "-y", "--max-output", "4000")
        assert proc.returncode == 0, proc.stderr
        assert "to fit the context" in proc.stderr
        last = fake.chat_requests[-1]
        assert sum(len(json.dumps(m)) for m in last["messages"]) < 3000 * 4


@pytest.mark.parametrize("max_model_len", [4096, 2048])
def test_three_200_kb_outputs_at_a_small_context_finish(
    workdir: Path, agent_env: dict[str, str], max_model_len: int
) -> None:
    """The seed's recommended context (vLLM --max-model-len 4096, or 2048): one block printing
    about 8 KB used to end the run. Now every request fits, the run finishes, and the model
    learns where the whole output is."""
    with FakeVllm(max_model_len=max_model_len) as fake:
        env = {**agent_env, "OI_API_BASE": fake.base_url}
        rows = "seq -f 'row %06g xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' 1 5000"  # ~200 KB
        fake.script(
            *[Reply(text=fence("sh", rows + f" # {i}")) for i in range(3)], Reply(text="Done.")
        )
        proc = oi_run(workdir, env, "print the rows", "-y")
        assert proc.returncode == 0, proc.stderr
        assert len(fake.chat_requests) == 4  # no request was refused as too long
        for request in fake.chat_requests:
            assert sum(len(json.dumps(m)) for m in request["messages"]) < max_model_len * 4
        last = last_user_content(fake.chat_requests[-1])
        assert "row 000001" in last and "row 005000" in last and "cut" in last
        kept = sorted((workdir / ".oi" / "output").iterdir())
        assert len(kept) == 3 and "row 005000" in kept[-1].read_text()
        assert f"/workspace/.oi/output/{kept[-1].name}" in last
        assert (workdir / ".oi" / ".gitignore").read_text() == "*\n"


def test_auto_mode_falls_back_to_markdown_when_tools_are_refused(
    workdir: Path, agent_env: dict[str, str]
) -> None:
    with FakeVllm(enable_auto_tool_choice=False) as fake:
        env = {**agent_env, "OI_API_BASE": fake.base_url}
        fake.script(Reply(text=fence("python", "print('md')")), Reply(text="Done."))
        proc = oi_run(workdir, env, "x", "-y")
        assert proc.returncode == 0, proc.stderr
        assert "markdown" in proc.stderr
        bodies = [r for r in fake.chat_requests]
        assert "tools" not in bodies[-1]
        assert "fenced code block" in bodies[-1]["messages"][0]["content"]


def test_tool_call_written_as_text_is_run(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    call = '<tool_call>\n{"name": "execute", "arguments": {"language": "python", "code": "open(\'t.txt\', \'w\').write(\'ok\')"}}\n</tool_call>'
    fake_vllm.script(Reply(text=call), Reply(text="Done."))
    proc = oi_run(workdir, agent_env, "x", "-y")
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "t.txt").read_text() == "ok"


def test_json_events_and_the_session_record(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    code = "echo hi"
    fake_vllm.script(
        Reply(text=fence("sh", code), usage=(50, 10)), Reply(text="Done.", usage=(70, 5))
    )
    proc = oi_run(workdir, agent_env, "say hi", "-y", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    for kind in ("model_text", "code_proposed", "decision", "output", "result", "usage", "end"):
        assert kind in kinds, kind
    assert kinds[-1] == "end" and events[-1]["status"] == "finished"
    proposed = next(e for e in events if e["event"] == "code_proposed")
    import hashlib

    assert proposed["sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert proposed["sandbox"]["network"] == "none"
    (path,) = sessions_of(agent_env)
    recorded = records(path)
    types = {r["type"] for r in recorded}
    assert {"session", "message", "event"} <= types
    assert "api_key" not in json.dumps(recorded[0])
    result = next(r for r in recorded if r.get("event") == "result")
    assert result["sha256"] == proposed["sha256"] and result["exit_code"] == 0
    usage = [r for r in recorded if r.get("event") == "usage"]
    assert usage[-1]["total_prompt_tokens"] == 120
    listing = run_oi("sessions", "list", env=agent_env)
    assert path.stem in listing.stdout and "finished" in listing.stdout
    shown = run_oi("sessions", "show", path.stem[:12], env=agent_env)
    assert shown.returncode == 0 and "echo hi" in shown.stdout


def test_edited_block_runs_exactly_the_approved_bytes(
    workdir: Path, tmp_path: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    editor = tmp_path / "editor.sh"
    # The "editor" rewrites the block, then keeps scribbling on the file after it returns.
    editor.write_text(
        "#!/bin/sh\nprintf 'sha256sum /tmp/main.sh\\n' > \"$1\"\n"
        "( sleep 0.3; echo 'rm -rf /workspace/*' > \"$1\" ) &\n"
    )
    editor.chmod(0o755)
    fake_vllm.script(Reply(text=fence("sh", "echo original")), Reply(text="Done."))
    proc = oi_run(workdir, {**agent_env, "EDITOR": str(editor)}, "x", "--json", stdin="e\ny\n")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    edited = next(e for e in events if e["event"] == "decision" and e["decision"] == "edited")
    ran = next(e for e in events if e["event"] == "decision" and e["decision"] == "run")
    result = next(e for e in events if e["event"] == "result")
    assert ran["sha256"] == edited["sha256"] == result["sha256"]
    # What ran inside the container hashes to the approved hash.
    assert result["result"]["stdout"].split()[0] == ran["sha256"]


def test_doctor_checks_the_model_endpoint(agent_env: dict[str, str]) -> None:
    with FakeVllm() as fake:
        fake.script(Reply(text="OK"))
        proc = run_oi("doctor", env={**agent_env, "OI_API_BASE": fake.base_url})
        assert proc.returncode == 0, proc.stderr
        assert "tool calling on" in proc.stderr and "context 32768 tokens" in proc.stderr
    with FakeVllm(enable_auto_tool_choice=False) as fake:
        proc = run_oi("doctor", env={**agent_env, "OI_API_BASE": fake.base_url})
        assert "tool calling off" in proc.stderr and "--enable-auto-tool-choice" in proc.stderr
    proc = run_oi("doctor", env={**agent_env, "OI_API_BASE": "http://127.0.0.1:9/v1"})
    assert "cannot reach the model server" in proc.stderr
    assert proc.returncode == 1  # `oi doctor && oi run ...` must not go on
    assert "the sandbox is ready (oi exec works), but oi run" in proc.stderr


def test_chat_resume_continues_a_recorded_session(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    fake_vllm.script(Reply(text=fence("sh", "echo 41 > answer.txt")), Reply(text="Wrote 41."))
    first = oi_run(workdir, agent_env, "write 41 to answer.txt", "-y")
    assert first.returncode == 0, first.stderr
    (path,) = sessions_of(agent_env)

    def continued(request: dict[str, Any]) -> Reply:
        contents = [str(m.get("content")) for m in request["messages"]]
        assert contents[1] == "write 41 to answer.txt"  # the old conversation came back
        assert "Wrote 41." in contents
        assert contents[-1] == "now say hello"
        return Reply(text="Hello again.")

    fake_vllm.script(continued)
    # Without a terminal, chat reads one message per line; EOF leaves.
    proc = run_oi(
        "chat",
        "--resume",
        path.stem[:15],
        "--workdir",
        str(workdir),
        env=agent_env,
        input="%tokens\nnow say hello\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Hello again." in proc.stdout
    assert fake_vllm.pending_replies == 0
    assert sessions_of(agent_env) == [path]  # appended to the same record
    assert "now say hello" in path.read_text()
