"""The pool against the real engine: pre-started containers are handed out once, give the same
results as fresh ones (and as the plain bootstrap), time out from the moment the block is sent,
drain when idle, and leave nothing behind on close(), Ctrl-C or (with `oi gc`) SIGKILL."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import docker
import pytest

from orchestrator.languages import Language
from orchestrator.sandbox.bootstrap import plain_command
from orchestrator.sandbox.container import DirectLauncher, LiveContainer
from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.spec import ContainerSpec, current_identity
from tests.sandbox_fixtures import (
    REPO,
    SandboxFactory,
    catalog,
    make_config,
    pid_containers,
    run_oi,
    session_containers,
)

# Programs whose results must not depend on how the container was started.
PROGRAMS = {
    "python": [
        "import sys\nprint('out'); print('err', file=sys.stderr); sys.exit(3)",
        "import sys, os\nprint(__name__, __file__, sys.argv, sys.path[0], __loader__.name)\n"
        "print(sorted(k for k in globals() if k.startswith('__')))\n"
        "print(repr(sys.stdin.read()), os.getcwd())",
        "def f():\n    raise ValueError('boom')\nf()",
        "x = (",  # a syntax error
        "import sys\nsys.exit('bye')",
        "import atexit, threading, time\natexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "f = open('/tmp/unclosed', 'w'); f.write('kept')\nprint('main done')",
        "raise KeyboardInterrupt",
        "import subprocess\nsubprocess.Popen(['sleep', '60'])\nprint('left a child')",
        "# coding: latin-1\nprint('caf\xe9')",
        # the program runs in the workdir, imports from its own folder, writes no bytecode
        "import os, sys\nopen('rel.txt', 'w').write('x')\n"
        "print(os.getcwd(), os.path.exists('/workspace/rel.txt'), sys.path[0], sys.path.count(''))\n"
        "open('/tmp/helper.py', 'w').write('VALUE = 42')\nimport helper\n"
        "print(helper.VALUE, sys.dont_write_bytecode, os.path.exists('/tmp/__pycache__'))",
        # spawned children (started with the interpreter's flags) find the program again
        "import multiprocessing as mp\nif __name__ == '__main__':\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n        print(pool.map(abs, [-3]))",
    ],
    "javascript": [
        "console.log('out'); console.error('err'); process.exit(4)",
        "console.log(require.main === module, __filename, process.argv.slice(1))",
        "throw new Error('boom')",
        "process.stdin.on('data', d => console.log('got', d)); "
        "process.stdin.on('end', () => console.log('stdin ended'))",
        # a preload that starts Node early must not leak into workers or forked children
        "const { Worker } = require('worker_threads');\n"
        "const w = new Worker(\"require('worker_threads').parentPort.postMessage('worker ok')\","
        " { eval: true });\n"
        "w.on('message', m => console.log(m)); w.on('error', e => console.log('worker', e));\n"
        "require('fs').writeFileSync('/tmp/child.js', 'console.log(process.execArgv)');\n"
        "w.on('exit', () => require('child_process').fork('/tmp/child.js')"
        ".on('exit', c => console.log('fork exit', c)));",
        "setTimeout(() => { console.log('timer'); process.exitCode = 6; }, 50)",
        # the program runs in the workdir; modules resolve from its own folder
        "const fs = require('fs'); fs.writeFileSync('rel.txt', 'x');\n"
        "console.log(process.cwd(), process.env.PWD, fs.existsSync('/workspace/rel.txt'),"
        " require('path').resolve('a'), module.paths);\n"
        "fs.writeFileSync('/tmp/h.mjs', 'export default 42');\n"
        "import('./h.mjs').then(m => console.log(m.default));",
    ],
    "shell": [
        "echo out; echo err >&2; exit 5",
        'echo "$0" "$#"; cat; echo "stdin done"',
        "sleep 60 & echo backgrounded",
        "kill -TERM $$",
        'echo "$PWD" "$(pwd)" "${OLDPWD-unset}"; touch rel.txt && ls /workspace/rel.txt',
    ],
}


class PlainLauncher(DirectLauncher):
    """Starts containers with the classic bootstrap (`cat > /tmp/main.x && exec ...`)."""

    def launch(self, spec: ContainerSpec) -> LiveContainer:
        return super().launch(dataclasses.replace(spec, command=plain_command(spec.language)))


def comparable(result: object) -> tuple[object, ...]:
    return tuple(getattr(result, name) for name in ("exit_code", "stdout", "stderr", "timed_out"))


def warm_and_wait(sandbox: Sandbox, language: Language | str) -> set[str]:
    lang = Language(language) if isinstance(language, str) else language
    sandbox.warm(lang)
    assert sandbox.pool is not None
    spec = sandbox.spec_for(lang)
    assert sandbox.pool.wait_ready(spec, 60)
    return sandbox.pool.ready_ids(spec)


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_pooled_results_equal_fresh_and_plain_bootstrap_results(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, language: str
) -> None:
    pooled = make_sandbox(pool=True, timeout=20)
    fresh = make_sandbox(pool=False, timeout=20)
    plain_config = make_config(workdir=pooled.config.workdir, pool=False, timeout=20)
    plain = Sandbox(
        docker_client,
        plain_config,
        catalog(docker_client, plain_config),
        prepare_host(current_identity(plain_config.workdir), plain_config),
        session_id=pooled.session_id,
        launcher=PlainLauncher(docker_client.api),
    )
    try:
        for code in PROGRAMS[language]:
            pre_started = warm_and_wait(pooled, language)
            from_pool = pooled.run(language, code)
            assert from_pool.container_id in pre_started
            expected = comparable(plain.run(language, code))
            assert comparable(from_pool) == expected, code
            assert comparable(fresh.run(language, code)) == expected, code
    finally:
        plain.close()


# Interpreter settings read at start (bootstrap.py): with them, the interpreter starts with the
# program instead of waiting for it; its results must be the plain ones too.
LATE_SETTINGS = {
    "python": {"PYTHONHASHSEED": "0"},
    "javascript": {"NODE_OPTIONS": "--max-old-space-size=200"},
}


@pytest.mark.parametrize("language", sorted(LATE_SETTINGS))
def test_interpreters_started_with_their_program_give_the_plain_results(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, language: str
) -> None:
    env, host_env = sorted(LATE_SETTINGS[language]), LATE_SETTINGS[language]
    pooled = make_sandbox(pool=True, timeout=20, env=env, host_env=host_env)
    plain_config = make_config(workdir=pooled.config.workdir, pool=False, timeout=20, env=env)
    plain = Sandbox(
        docker_client,
        plain_config,
        catalog(docker_client, plain_config),
        prepare_host(current_identity(plain_config.workdir), plain_config),
        session_id=pooled.session_id,
        host_env=host_env,
        launcher=PlainLauncher(docker_client.api),
    )
    try:
        for code in PROGRAMS[language][:4]:
            pre_started = warm_and_wait(pooled, language)
            from_pool = pooled.run(language, code)
            assert from_pool.container_id in pre_started
            assert comparable(from_pool) == comparable(plain.run(language, code)), code
        # ... and it was the late start: no isolated interpreter, no preload (early: 1 and 2)
        check = {
            "python": "import sys; print(sys.flags.isolated)",
            "javascript": "console.log(Object.keys(require.cache).length)",
        }[language]
        warm_and_wait(pooled, language)
        assert (
            pooled.run(language, check).stdout == {"python": "0\n", "javascript": "1\n"}[language]
        )
        early = make_sandbox(pool=True)
        warm_and_wait(early, language)
        assert early.run(language, check).stdout == {"python": "1\n", "javascript": "2\n"}[language]
    finally:
        plain.close()


def test_a_used_container_is_never_handed_out_again(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(pool=True)
    seen: list[str] = []
    for n in range(4):
        pre_started = warm_and_wait(sandbox, "shell")
        assert not pre_started & set(seen)  # the pool holds no container that already ran
        code = "ls /tmp; echo left > /tmp/left-by-block"
        result = sandbox.run("shell", code)
        assert result.container_id in pre_started
        assert "left-by-block" not in result.stdout, n  # /tmp of the previous block is gone
        seen.append(result.container_id)
    assert len(set(seen)) == 4


def test_concurrent_blocks_share_a_sandbox_safely(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(pool=True, pool_size=2)
    warm_and_wait(sandbox, "python")
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def block(n: int) -> None:
        result = sandbox.run("python", f"print({n} * 2)")
        with lock:
            results.append((result.stdout, result.container_id))

    threads = [threading.Thread(target=block, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(out for out, _ in results) == sorted(f"{n * 2}\n" for n in range(4))
    assert len({container for _, container in results}) == 4


def test_the_timeout_clock_starts_when_the_block_is_sent(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(pool=True, timeout=2, kill_grace=0)
    pre_started = warm_and_wait(sandbox, "shell")
    time.sleep(2.5)  # the container has waited longer than the timeout
    result = sandbox.run("shell", "sleep 1.2; echo finished")
    assert result.container_id in pre_started
    assert not result.timed_out and result.stdout == "finished\n"
    pre_started = warm_and_wait(sandbox, "shell")
    result = sandbox.run("shell", "echo started; sleep 30")  # and it still applies
    assert result.container_id in pre_started
    assert result.timed_out and result.stdout == "started\n" and result.duration_s < 10


def test_a_pooled_container_killed_while_waiting_is_not_used(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient
) -> None:
    sandbox = make_sandbox(pool=True)
    (victim,) = warm_and_wait(sandbox, "python")
    docker_client.api.kill(victim)
    docker_client.api.wait(victim, timeout=30)
    result = sandbox.run("python", "print('ran')")
    assert result.container_id != victim
    assert result.exit_code == 0 and result.stdout == "ran\n"


def test_a_node_that_cannot_start_fails_its_block_at_once(make_sandbox: SandboxFactory) -> None:
    """Node starts before its block; if it dies first, the wrapper must not greet (or the pool
    would wait for a greeting until its start timeout, 60 s): the block fails with Node's words.
    Too few open files make the early Node abort (libuv cannot make its loop), not bash."""
    sandbox = make_sandbox(pool=True, nofile=12)
    sandbox.warm(Language.JAVASCRIPT)
    started = time.monotonic()
    result = sandbox.run("javascript", "console.log('ran')")
    assert time.monotonic() - started < 30
    assert result.exit_code == 125 and "ran" not in result.stdout
    assert "uv_loop_init" in result.stderr


def test_node_options_start_node_with_its_program(make_sandbox: SandboxFactory) -> None:
    """NODE_OPTIONS are read at start and may name workdir files, so with them Node starts only
    with the program (as `node /tmp/main.js` in /workspace) and reports a bad one at once."""
    sandbox = make_sandbox(
        pool=True, env=["NODE_OPTIONS"], host_env={"NODE_OPTIONS": "--no-such-flag"}
    )
    sandbox.warm(Language.JAVASCRIPT)
    started = time.monotonic()
    result = sandbox.run("javascript", "console.log('ran')")
    assert time.monotonic() - started < 30
    assert result.exit_code == 9 and "ran" not in result.stdout
    assert "--no-such-flag is not allowed in NODE_OPTIONS" in result.stderr
    sandbox = make_sandbox(
        pool=True, env=["NODE_OPTIONS"], host_env={"NODE_OPTIONS": "--max-old-space-size=200"}
    )
    warm_and_wait(sandbox, "javascript")
    code = "console.log(process.execArgv, process.env.NODE_OPTIONS, process.cwd(), __filename)"
    result = sandbox.run("javascript", code)
    assert (result.exit_code, result.stdout) == (
        0,
        "[] --max-old-space-size=200 /workspace /tmp/main.js\n",
    )


def test_oom_in_a_pooled_container_is_reported(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(pool=True, memory="128m")
    warm_and_wait(sandbox, "python")
    result = sandbox.run("python", "x = bytearray(1024 ** 3)\nprint('no')")
    assert result.oom_killed or "MemoryError" in result.stderr
    assert "no" not in result.stdout


def test_an_idle_pool_drains(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str
) -> None:
    sandbox = make_sandbox(pool=True, pool_idle=1.0, pool_size=2)
    assert len(warm_and_wait(sandbox, "shell")) == 2
    assert len(session_containers(docker_client, session_id)) == 2
    deadline = time.monotonic() + 15
    while session_containers(docker_client, session_id):
        assert time.monotonic() < deadline, "the idle pool was not drained"
        time.sleep(0.2)
    assert sandbox.pool is not None and sandbox.pool.stats().total == 0
    assert sandbox.run("shell", "echo still works").stdout == "still works\n"


def test_close_removes_everything_and_the_sandbox_stays_usable(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str
) -> None:
    sandbox = make_sandbox(pool=True, pool_size=2)
    for language in ("python", "javascript", "shell"):
        sandbox.warm(language)
    sandbox.run("shell", "true")  # one used container is being removed in the background
    assert len(session_containers(docker_client, session_id)) >= 6
    sandbox.close()
    assert session_containers(docker_client, session_id) == []
    sandbox.close()  # idempotent
    warm_and_wait(sandbox, "python")
    assert sandbox.run("python", "print('again')").stdout == "again\n"
    sandbox.close()
    assert session_containers(docker_client, session_id) == []


def test_no_pool_means_no_pre_started_containers(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str
) -> None:
    sandbox = make_sandbox(pool=False)
    sandbox.warm("python")
    assert sandbox.pool is None
    assert session_containers(docker_client, session_id) == []
    assert sandbox.run("python", "print(1)").stdout == "1\n"


# --- the process dies -------------------------------------------------------------------------

WARM_AND_WAIT = """
import time
from pathlib import Path
from orchestrator.languages import Language
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.config import SandboxConfig
sandbox = Sandbox.from_config(SandboxConfig(workdir=Path({workdir!r}), pool_size=2))
for language in (Language.PYTHON, Language.SHELL):
    sandbox.warm(language)
    assert sandbox.pool.wait_ready(sandbox.spec_for(language), 60)
print("ready", flush=True)
{then}
"""


def start_warm_process(workdir: Path, then: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(WARM_AND_WAIT).format(workdir=str(workdir), then=then)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
    return proc


def test_sigkill_with_a_warm_pool_leaves_containers_that_gc_removes(
    docker_client: docker.DockerClient, workdir: Path
) -> None:
    proc = start_warm_process(workdir, "time.sleep(600)")
    assert len(pid_containers(docker_client, proc.pid)) == 4
    proc.kill()
    proc.wait(timeout=10)
    assert len(pid_containers(docker_client, proc.pid)) == 4  # orphans...
    gc = run_oi("gc")
    assert gc.returncode == 0, gc.stderr
    assert pid_containers(docker_client, proc.pid) == []  # ...that gc removed


def running_in(client: docker.DockerClient, pid: int, command: str) -> bool:
    """Whether ``command`` runs in a container of the process ``pid``."""
    for container in pid_containers(client, pid):
        try:
            top = client.api.top(container["Id"], ps_args="-eo pid,args")
        except docker.errors.APIError:  # not running (yet, or any more)
            continue
        if any(command in " ".join(row) for row in top.get("Processes") or []):
            return True
    return False


def test_ctrl_c_mid_block_with_a_warm_pool_leaves_nothing(
    docker_client: docker.DockerClient, workdir: Path
) -> None:
    proc = start_warm_process(workdir, "sandbox.run('shell', 'sleep 600')")
    deadline = time.monotonic() + 30
    while not running_in(docker_client, proc.pid, "sleep 600"):  # the block, in a warm one
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)  # its containers go with it
            proc.wait(timeout=60)
            pytest.fail("the block never started in a container of the pool")
        time.sleep(0.05)
    assert len(pid_containers(docker_client, proc.pid)) == 4
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert pid_containers(docker_client, proc.pid) == []
