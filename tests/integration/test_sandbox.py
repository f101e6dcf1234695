"""The sandbox against the real engine: languages, ownership, limits, results, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.errors import ImageMissingError, UnknownLanguageError
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.watchdog import MARGIN_S
from tests.fake_vllm import FakeVllm
from tests.sandbox_fixtures import OI, SandboxFactory, pid_containers, run_oi

PROGRAMS = {
    "python": "import os\nopen('out-python.txt', 'w').write('py')\nprint('hello from', 'python')",
    "javascript": (
        "require('fs').writeFileSync('out-javascript.txt', 'js');"
        "console.log('hello from', 'javascript')"
    ),
    "shell": "printf sh > out-shell.txt; echo hello from shell",
}


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_each_language_runs_and_writes_with_the_users_ownership(
    make_sandbox: SandboxFactory, workdir: Path, language: str
) -> None:
    os.chown(workdir, 4321, 4322)  # as if the workdir belonged to a normal user
    result = make_sandbox().run(language, PROGRAMS[language])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"hello from {language}\n"
    out = workdir / f"out-{language}.txt"
    assert out.exists()
    st = out.stat()
    expected_uid = 4321 if os.getuid() == 0 else os.getuid()
    assert st.st_uid == expected_uid
    assert not result.timed_out and not result.oom_killed
    assert len(result.code_sha256) == 64 and result.image_id.startswith("sha256:")


LOCAL_SERVER = {
    # A block that starts a server and calls it by name, as models write it.
    "python": (
        "import http.server, threading, urllib.request\n"
        "server = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=server.serve_forever, daemon=True).start()\n"
        "url = f'http://localhost:{server.server_port}/'\n"
        "print('status', urllib.request.urlopen(url, timeout=10).status)\n"
    ),
    "sh": "getent hosts localhost | head -n 1 | awk '{print \"status\", ($1 ~ /^(127|::1)/) ? 200 : 0}'",
    "js": (
        "const http = require('http');\n"
        "const server = http.createServer((q, r) => r.end('ok')).listen(0, () => {\n"
        "  http.get(`http://localhost:${server.address().port}/`, (r) => {\n"
        "    console.log('status', r.statusCode); server.close(); });\n"
        "});\n"
    ),
}


@pytest.mark.parametrize("language", sorted(LOCAL_SERVER))
def test_localhost_resolves_with_no_network(make_sandbox: SandboxFactory, language: str) -> None:
    result = make_sandbox().run(language, LOCAL_SERVER[language])
    assert "status 200" in result.stdout, result


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_ls_l_and_stat_work_under_both_runtimes(
    make_sandbox: SandboxFactory, workdir: Path, isolation: str
) -> None:
    (workdir / "data.csv").write_text("a,b\n1,2\n")
    result = make_sandbox(isolation=isolation).run(
        "sh", "ls -l /workspace && stat -c '%s %n' data.csv && ls -la /tmp | head -2"
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("total ")
    assert lines[1].startswith("-rw-") and lines[1].endswith(" data.csv")
    assert lines[2] == "8 data.csv"
    assert lines[3].startswith("total ")


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_a_block_may_use_nearly_all_its_pids_as_processes(
    make_sandbox: SandboxFactory, isolation: str
) -> None:
    """Under gVisor every process also costs host tasks (ptrace stubs): the host limit must leave
    room for them, or gVisor's kernel dies mid-block."""
    result = make_sandbox(isolation=isolation, pids=256, timeout=60).run(
        "bash", "for i in $(seq 200); do sleep 2 & done; wait; echo all done"
    )
    assert (result.exit_code, result.stdout) == (0, "all done\n"), result.stderr


def test_output_streams_live_and_exit_code_is_reported(make_sandbox: SandboxFactory) -> None:
    seen: list[tuple[str, bytes, float]] = []
    code = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('late', file=sys.stderr)\nsys.exit(7)"
    result = make_sandbox().run(
        "py", code, on_output=lambda s, d: seen.append((s, d, time.monotonic()))
    )
    assert result.exit_code == 7
    assert result.stdout == "first\n" and result.stderr == "late\n"
    streams = [s for s, _, _ in seen]
    assert streams[0] == "stdout" and "stderr" in streams
    # The first line reached us well before the block ended: it was streamed, not buffered.
    first_at = seen[0][2]
    last_at = seen[-1][2]
    assert last_at - first_at > 1.0


def test_program_is_exactly_the_bytes_sent(make_sandbox: SandboxFactory) -> None:
    code = "cat /tmp/main.sh | sha256sum\n# trailing comment with unicode: \u00e9\u4e2d\n"
    result = make_sandbox().run("bash", code)
    import hashlib

    assert result.stdout.split()[0] == hashlib.sha256(code.encode()).hexdigest()
    assert result.code_sha256 == hashlib.sha256(code.encode()).hexdigest()


def test_timeout_kills_and_is_reported(make_sandbox: SandboxFactory) -> None:
    started = time.monotonic()
    result = make_sandbox(timeout=2, kill_grace=1).run("sh", "echo start; sleep 1000")
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.shell_exit_code == 124
    assert result.stdout == "start\n"
    assert elapsed < 2 + 1 + 10


def test_process_ignoring_sigterm_is_killed(make_sandbox: SandboxFactory) -> None:
    code = "trap '' TERM; echo armed; while :; do sleep 1; done"
    result = make_sandbox(timeout=2, kill_grace=1).run("sh", code)
    assert result.timed_out and result.shell_exit_code == 124


def test_memory_bomb_is_reported_as_oom(make_sandbox: SandboxFactory) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    result = make_sandbox(memory="200m", timeout=60).run("python", code)
    assert result.oom_killed, result
    assert result.shell_exit_code == 137
    assert not result.timed_out


def test_fork_bomb_is_contained_and_the_next_block_works(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(pids=64, timeout=5, kill_grace=1)
    result = sandbox.run("bash", ":(){ :|:& };:\nsleep 2\necho survived")
    assert result.timed_out or result.exit_code != 0 or "survived" in result.stdout
    after = sandbox.run("bash", "echo fine")
    assert after.exit_code == 0 and after.stdout == "fine\n"


def test_output_is_capped_head_and_tail(make_sandbox: SandboxFactory) -> None:
    code = "for i in range(100000): print(f'line {i}')"
    result = make_sandbox(max_output=1000).run("python", code)
    assert result.exit_code == 0
    assert result.stdout.startswith("line 0\n")
    assert result.stdout.rstrip().endswith("line 99999")
    assert "bytes cut by oi" in result.stdout
    assert result.stdout_cut == result.stdout_bytes - 1000
    assert result.truncated


def test_output_flood_does_not_grow_oi_memory(workdir: Path, session_id: str) -> None:
    """A block printing ~1.5 GB: oi reads it all (or kills it) with bounded memory."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from orchestrator.sandbox.config import SandboxConfig
        from orchestrator.sandbox.host import prepare_host
        from orchestrator.sandbox.runner import Sandbox
        from orchestrator.sandbox.docker import connect
        from orchestrator.sandbox.images import ImageCatalog
        from orchestrator.sandbox.spec import current_identity
        s = SandboxConfig(workdir=Path({str(workdir)!r}), timeout=60, max_output=4096)
        c = connect()
        sb = Sandbox(c, s, ImageCatalog(c), prepare_host(current_identity(s.workdir), s), session_id={session_id!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = sb.run("sh", "yes 0123456789012345678901234567890123456789 | head -c 1500000000")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(r.exit_code, r.stdout_bytes, r.stdout_cut, before, after, r.timed_out)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=True
    )
    exit_code, total, cut, before_kb, after_kb, timed_out = proc.stdout.split()
    assert int(total) > 100_000_000, proc.stdout  # really flooded (killed or finished)
    assert int(cut) == int(total) - 4096
    assert int(after_kb) - int(before_kb) < 50_000, proc.stdout  # < 50 MB growth for >100 MB out
    assert timed_out == "True" or int(exit_code) == 0


def test_no_host_environment_reaches_the_sandbox(make_sandbox: SandboxFactory) -> None:
    host_env = {"OI_API_KEY": "canary-7f3a", "AWS_SECRET_ACCESS_KEY": "canary-9b2c", "KEEP": "v"}
    sandbox = make_sandbox(host_env=host_env, env=["KEEP"])
    result = sandbox.run("sh", "cat /proc/1/environ | tr '\\0' '\\n'; echo ---; env")
    assert "canary" not in result.stdout
    assert "KEEP=v" in result.stdout


def test_unknown_language_is_refused(make_sandbox: SandboxFactory) -> None:
    with pytest.raises(UnknownLanguageError):
        make_sandbox().run("ruby", "puts 1")


def test_missing_image_is_a_clear_error(make_sandbox: SandboxFactory) -> None:
    with pytest.raises(ImageMissingError, match="oi images build"):
        make_sandbox(image_prefix="oi-test-absent").run("python", "print(1)")


def test_tmp_does_not_survive_between_blocks(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox()
    sandbox.run("sh", "echo secret > /tmp/left-behind")
    result = sandbox.run("sh", "ls /tmp")
    assert "left-behind" not in result.stdout


# --- through the CLI ---------------------------------------------------------------------------


def test_cli_exec_passes_output_and_exit_code(workdir: Path) -> None:
    proc = run_oi(
        "exec",
        "python",
        "-",
        "--workdir",
        str(workdir),
        input="import sys; print('out'); print('err', file=sys.stderr); sys.exit(5)",
    )
    assert proc.returncode == 5
    assert proc.stdout == "out\n" and proc.stderr == "err\n"


def test_cli_exec_json_and_timeout_exit_code(workdir: Path, tmp_path: Path) -> None:
    program = tmp_path / "slow.sh"
    program.write_text("echo tick; sleep 30\n")
    proc = run_oi("exec", "sh", str(program), "--timeout", "1", "--workdir", str(workdir), "--json")
    assert proc.returncode == 124
    result = json.loads(proc.stdout)
    assert result["timed_out"] is True and result["stdout"] == "tick\n"


def test_cli_unknown_language_is_usage_error(workdir: Path) -> None:
    proc = run_oi("exec", "cobol", "-", "--workdir", str(workdir), input="x")
    assert proc.returncode == 2
    assert "unknown language 'cobol'" in proc.stderr and "python" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_engine_down_is_one_line(workdir: Path, tmp_path: Path) -> None:
    proc = run_oi(
        "exec",
        "sh",
        "-",
        "--workdir",
        str(workdir),
        input="true",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert proc.returncode == 1
    assert "no Docker engine answers" in proc.stderr and "no-docker.sock" in proc.stderr
    assert "Traceback" not in proc.stderr


def _wait_for_container(docker_client, pid: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in pid_containers(docker_client, pid) if c["State"] == "running"]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no running container of pid {pid}")


def _oi_exec_sleeping(docker_client, workdir: Path) -> subprocess.Popen[str]:
    """`oi exec` running `sleep 600`, once its container runs."""
    proc = subprocess.Popen(
        [OI, "exec", "sh", "-", "--workdir", str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("sleep 600\n")
    proc.stdin.close()
    _wait_for_container(docker_client, proc.pid)
    return proc


def test_ctrl_c_mid_block_removes_the_container(docker_client, workdir: Path) -> None:
    proc = _oi_exec_sleeping(docker_client, workdir)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert pid_containers(docker_client, proc.pid) == []


def watchdog_of(pid: int) -> int:
    """The pid of the watchdog an oi process started (sandbox/watchdog.py)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"orchestrator.sandbox.watchdog" in argv and str(pid).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"oi process {pid} has no watchdog")


def test_sigkill_mid_block_the_watchdog_removes_the_container(docker_client, workdir: Path) -> None:
    """No other oi runs, nobody calls `oi gc`: the killed oi's watchdog removes its container
    at once (its pipe closed), far within the block's 60 s timeout."""
    proc = _oi_exec_sleeping(docker_client, workdir)
    watchdog = watchdog_of(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while pid_containers(docker_client, proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_containers(docker_client, proc.pid) == []
    for _ in range(50):  # and then the watchdog ends
        if not Path(f"/proc/{watchdog}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{watchdog}").exists()


def test_a_block_outlives_neither_its_timeout_nor_a_frozen_oi(docker_client, workdir: Path) -> None:
    """oi frozen (SIGSTOP: it can enforce nothing) during a `while true` block with a 3 s
    timeout: the watchdog removes the container at timeout + kill grace + its margin."""
    proc = subprocess.Popen(
        [OI, "exec", "sh", "-", "--workdir", str(workdir), "--timeout", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("while true; do :; done\n")
    proc.stdin.close()
    _wait_for_container(docker_client, proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGSTOP)
    try:
        while pid_containers(docker_client, proc.pid) and time.monotonic() - started < 30:
            time.sleep(0.2)
        gone_after = time.monotonic() - started
        assert pid_containers(docker_client, proc.pid) == []
        assert gone_after < 3 + 1 + MARGIN_S + 3, gone_after  # + the engine's own removal
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=30)


def _kill_oi_and_its_watchdog(proc: subprocess.Popen[str]) -> None:
    os.kill(watchdog_of(proc.pid), signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=10)


def test_sigkill_of_oi_and_its_watchdog_leaves_an_orphan_that_gc_removes(
    docker_client, workdir: Path
) -> None:
    proc = _oi_exec_sleeping(docker_client, workdir)
    _kill_oi_and_its_watchdog(proc)
    assert len(pid_containers(docker_client, proc.pid)) == 1  # the orphan is there...
    gc = run_oi("gc")
    assert gc.returncode == 0, gc.stderr
    assert pid_containers(docker_client, proc.pid) == []  # ...and gc removed it


def test_every_oi_start_sweeps_orphans(docker_client, workdir: Path) -> None:
    proc = _oi_exec_sleeping(docker_client, workdir)
    _kill_oi_and_its_watchdog(proc)
    assert len(pid_containers(docker_client, proc.pid)) == 1
    again = run_oi("exec", "sh", "-", "--workdir", str(workdir), input="true")
    assert again.returncode == 0
    assert pid_containers(docker_client, proc.pid) == []


def test_doctor_reports_a_ready_sandbox() -> None:
    with FakeVllm() as fake:
        proc = run_oi("doctor", "--api-base", fake.base_url)
    assert proc.returncode == 0, proc.stderr
    assert "Docker engine" in proc.stderr and "the sandbox is ready" in proc.stderr


def test_images_list_shows_present_images() -> None:
    proc = run_oi("images", "list")
    assert proc.returncode == 0
    for name in ("python", "node", "shell"):
        assert name in proc.stdout
    assert "present" in proc.stdout


def test_sandbox_from_config_refuses_home(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.sandbox.config import SandboxConfig

    with pytest.raises(ConfigError, match="home"):
        Sandbox.from_config(SandboxConfig(workdir=Path.home()))


def test_the_shell_sandbox_has_the_toolbox_and_the_pythons_libraries(
    make_sandbox: SandboxFactory, workdir: Path
) -> None:
    """Models call `python3 script.py`, `node x.js`, git, sqlite3, unzip from shell blocks."""
    (workdir / "script.py").write_text(
        "import pandas, sklearn, bs4\nprint('py', pandas.__name__)\n"
    )
    (workdir / "x.js").write_text("console.log('js', 1 + 1)\n")
    code = (
        "set -e\npython3 script.py\nnode x.js\nnpm --version >/dev/null && echo npm\n"
        "git --version | cut -d' ' -f1\nsqlite3 :memory: 'select 6*7'\n"
        "echo hi > a.txt && zip -q a.zip a.txt && unzip -l a.zip | grep -c a.txt\n"
        "echo '2^10' | bc\nxz --version | head -1 | cut -d' ' -f1\nfile a.txt | cut -d: -f2\n"
        "make --version | head -1 | cut -d' ' -f1-2\nless --version | head -1 | cut -d' ' -f1\n"
    )
    result = make_sandbox(timeout=60).run("sh", code)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split()
    for expected in ("py", "pandas", "js", "2", "npm", "git", "42", "1", "1024", "xz", "GNU"):
        assert expected in lines, (expected, result.stdout)


def test_the_python_sandbox_has_what_a_code_interpreter_is_expected_to_have(
    make_sandbox: SandboxFactory,
) -> None:
    code = (
        "import requests, bs4, lxml, scipy, sklearn, openpyxl, PIL, seaborn, sympy, yaml, tabulate\n"
        "print(bs4.BeautifulSoup('<p>ok</p>', 'lxml').p.text, sympy.sqrt(16))\n"
    )
    result = make_sandbox(timeout=60).run("python", code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["ok", "4"]
