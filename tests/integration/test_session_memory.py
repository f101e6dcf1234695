"""A session remembers (sandbox/session_env.py): Python state, installed packages and a full
toolbox across its throwaway containers - through `oi run` with the fake vLLM and the real
engine, with the model doing what Qwen3-4B does (small dependent steps, pip and npm installs,
python3 from shell).

The pip test is offline: a package index the test starts as a container (its own files, a
wheel built here) on the proxies' network, named as the allowed host; its private address is
permitted by a system policy given to oi in a private mount namespace (only /etc/oi/policy.toml
may grant egress ranges).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.sandbox.network import OUTBOUND_NETWORK
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI, catalog, run_oi


def env_for(fake: FakeVllm, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OI_API_BASE": fake.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        **extra,
    }


def block(language: str, code: str) -> Reply:
    return Reply(text=f"Next step.\n\n```{language}\n{code}\n```\n")


def told(fake: FakeVllm, answer: int) -> str:
    """What the model was told about a block: the last message of request ``answer``."""
    return str(fake.chat_requests[answer]["messages"][-1]["content"])


def oi_run(workdir: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return run_oi("run", "do it", "-y", "--workdir", str(workdir), *flags, env=env)


def test_python_variables_functions_and_imports_carry_to_the_next_block(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(
        block(
            "python",
            "import statistics\nimport pandas as pd\ndata = [1, 2, 3, 4]\n"
            "def double(x):\n    return 2 * x\nclass Box:\n    size = 7\n"
            "frame = pd.DataFrame({'a': data})\nprint('saved')",
        ),
        block(
            "python",
            "print(statistics.mean(data), double(21), Box.size, int(frame['a'].sum()), pd.__name__)",
        ),
        Reply(text="done"),
    )
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "2.5 42 7 10 pandas" in told(fake_vllm, 2), told(fake_vllm, 2)
    system = str(fake_vllm.chat_requests[0]["messages"][0]["content"])
    assert "are back in the next Python block" in system  # the model is told exactly that


def test_what_cannot_be_kept_is_named_and_no_state_turns_it_off(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(
        block(
            "python",
            "import threading\nfh = open('/tmp/log.txt', 'w')\n"
            "worker = threading.Thread(target=print)\ngen = (i for i in range(3))\nkept = 5",
        ),
        block("python", "print(kept, 'fh' in globals())"),
        Reply(text="done"),
    )
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    first = told(fake_vllm, 1)
    assert "not kept: fh (open file), worker (thread), gen (generator)" in first, first
    assert "5 False" in told(fake_vllm, 2)

    fake_vllm.script(
        block("python", "kept = 5"), block("python", "print(kept)"), Reply(text="done")
    )
    off = oi_run(workdir, env_for(fake_vllm, tmp_path), "--no-state")
    assert off.returncode == 0, off.stderr
    assert "NameError: name 'kept' is not defined" in told(fake_vllm, 5)
    system = str(fake_vllm.chat_requests[3]["messages"][0]["content"])
    assert "Python variables and imports are NOT kept" in system


def test_a_shell_block_runs_the_python_and_node_an_earlier_block_wrote_for(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(
        block("python", "open('report.py', 'w').write('import pandas\\nprint(\"py\", 6*7)\\n')"),
        block("sh", "python3 report.py && node -e 'console.log(\"js\", 6*7)' && git --version"),
        Reply(text="done"),
    )
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = told(fake_vllm, 2)
    assert "py 42" in result and "js 42" in result and "git version" in result, result


def npm_probe(workdir: Path) -> tuple[Reply, Reply]:
    """Offline npm: a package in the workdir; (a block that packs it and installs the tarball
    with ``npm install -g``, a JavaScript block that requires it and prints ``value 42``)."""
    package = workdir / "probe"
    package.mkdir()
    (package / "package.json").write_text(
        json.dumps({"name": "oi-probe", "version": "1.0.0", "main": "index.js"})
    )
    (package / "index.js").write_text("module.exports = { value: 42 };\n")
    install = block(
        "sh",
        "cd probe && npm pack --silent >/dev/null && cd .. && "
        "npm install -g --offline --no-audit --no-fund ./probe/oi-probe-1.0.0.tgz "
        "&& echo installed",
    )
    return install, block("javascript", "console.log('value', require('oi-probe').value)")


def test_npm_install_g_then_require_in_a_javascript_block(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    """Offline: the package is a tarball a block packs from the workdir."""
    install, use = npm_probe(workdir)
    fake_vllm.script(install, use, Reply(text="done"))
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "installed" in told(fake_vllm, 1), told(fake_vllm, 1)
    assert "value 42" in told(fake_vllm, 2), told(fake_vllm, 2)


# --- pip through the allowlist, offline --------------------------------------------------------


def build_wheel(name: str, version: str, source: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel (PEP 427) holding ``<name>/__init__.py``."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: oi-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


@pytest.fixture
def package_index(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """A simple package index container on the proxies' network: (host name, its subnet)."""
    api = docker_client.api
    if not api.networks(names=[OUTBOUND_NETWORK]):
        api.create_network(
            OUTBOUND_NETWORK, driver="bridge", labels={"oi.managed": "1", "oi.role": "egress"}
        )
    root = Path(tempfile.mkdtemp(prefix="oi-index-", dir="/var/tmp"))
    root.chmod(0o755)
    wheel, data = build_wheel("oi-probe-pkg", "1.0", "VALUE = 42\n")
    (root / "simple" / "oi-probe-pkg").mkdir(parents=True)
    (root / "simple" / "oi-probe-pkg" / wheel).write_bytes(data)
    (root / "simple" / "oi-probe-pkg" / "index.html").write_text(
        f'<html><body><a href="{wheel}">{wheel}</a></body></html>\n'
    )
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"oi-index-{uuid.uuid4().hex[:8]}"
    image = catalog(docker_client).resolve_name("python").tag
    created = api.create_container(
        image,
        ["python3", "-m", "http.server", "80", "--directory", "/srv"],
        name=name,
        user="0:0",
        labels={"oi.test": "1"},
        host_config=api.create_host_config(
            network_mode=OUTBOUND_NETWORK, read_only=True, binds={str(root): {"bind": "/srv"}}
        ),
    )
    try:
        api.start(created["Id"])
        subnet = api.inspect_network(OUTBOUND_NETWORK)["IPAM"]["Config"][0]["Subnet"]
        yield name, subnet
    finally:
        api.remove_container(created["Id"], force=True)
        shutil.rmtree(root, ignore_errors=True)


def run_with_policy(policy: str, args: list[str], env: dict[str, str], scratch: Path) -> Any:
    """``oi ARGS`` with /etc/oi/policy.toml = ``policy`` in a private mount namespace."""
    layer = Path(tempfile.mkdtemp(prefix="oi-etc-", dir="/var/tmp"))
    try:
        (layer / "upper" / "oi").mkdir(parents=True)
        (layer / "work").mkdir()
        (layer / "upper" / "oi" / "policy.toml").write_text(policy)
        setup = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={layer}/upper,"
            f"workdir={layer}/work /etc"
        )
        script = f"set -e; {setup}; exec {shlex.quote(OI)} " + " ".join(map(shlex.quote, args))
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env={**os.environ, **env},
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        shutil.rmtree(layer, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_pip_install_in_a_shell_block_then_import_in_a_python_block(
    fake_vllm: FakeVllm, tmp_path: Path, package_index: tuple[str, str]
) -> None:
    host, subnet = package_index
    scratch = Path(tempfile.mkdtemp(prefix="oi-pip-", dir="/var/tmp"))
    try:
        workdir = scratch / "work"
        workdir.mkdir()
        index = f"http://{host}/simple/"
        fake_vllm.script(
            block(
                "sh",
                f"pip install --index-url {index} --trusted-host {host} oi-probe-pkg 2>&1 "
                "| tail -n 2",
            ),
            block("python", "import oi_probe_pkg\nprint('imported', oi_probe_pkg.VALUE)"),
            block(
                "sh", "python3 -c 'import oi_probe_pkg; print(\"from shell\", oi_probe_pkg.VALUE)'"
            ),
            Reply(text="done"),
        )
        env = env_for(fake_vllm, tmp_path)
        args = ["run", "install it", "-y", "--workdir", str(workdir), "--allow-host", host]
        proc = run_with_policy(f'egress_ranges = ["{subnet}"]\n', args, env, scratch)
        assert proc.returncode == 0, proc.stderr
        assert "Successfully installed oi-probe-pkg-1.0" in told(fake_vllm, 1), told(fake_vllm, 1)
        assert "imported 42" in told(fake_vllm, 2), told(fake_vllm, 2)
        assert "from shell 42" in told(fake_vllm, 3), told(fake_vllm, 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_without_network_the_model_is_told_installing_is_impossible(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    fake_vllm.script(Reply(text="done"))
    proc = oi_run(workdir, env_for(fake_vllm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    system = str(fake_vllm.chat_requests[0]["messages"][0]["content"])
    assert "You cannot download or install anything" in system


# --- across runs: a resumed chat, a folder's environment, batch tasks ---------------------------


def test_chat_resume_gets_the_python_state_of_the_session_back(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    env = env_for(fake_vllm, tmp_path)
    fake_vllm.script(block("python", "x = 41\nprint('set', x)"), Reply(text="x is set"))
    first = oi_run(workdir, env)
    assert first.returncode == 0, first.stderr
    assert "set 41" in told(fake_vllm, 1), told(fake_vllm, 1)
    (record,) = (tmp_path / "data" / "oi" / "sessions").glob("*.jsonl")

    fake_vllm.script(block("python", "print(x + 1)"), Reply(text="it is 42"))
    # Without a terminal, chat reads one message per line; EOF leaves.
    chat = run_oi(
        "chat", "--resume", record.stem, "-y", "--workdir", str(workdir),
        env=env, input="now add one to x\n",
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert str(fake_vllm.chat_requests[2]["messages"][-1]["content"]) == "now add one to x"
    result = told(fake_vllm, 3)
    assert "42" in result and "NameError" not in result, result


def test_session_env_workdir_keeps_installs_for_the_next_run_in_the_folder(
    workdir: Path, fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    env = env_for(fake_vllm, tmp_path)
    install, use = npm_probe(workdir)
    fake_vllm.script(install, Reply(text="installed"))
    first = oi_run(workdir, env, "--session-env", "workdir", "--no-pool")
    assert first.returncode == 0, first.stderr
    assert "installed" in told(fake_vllm, 1), told(fake_vllm, 1)

    fake_vllm.script(use, Reply(text="done"))
    second = oi_run(workdir, env, "--session-env", "workdir", "--no-pool")  # same folder
    assert second.returncode == 0, second.stderr
    assert "value 42" in told(fake_vllm, 3), told(fake_vllm, 3)

    # control: with an environment per session (the default) the next run starts without it
    fake_vllm.script(use, Reply(text="done"))
    third = oi_run(workdir, env, "--no-pool")
    assert third.returncode == 0, third.stderr
    assert "Cannot find module 'oi-probe'" in told(fake_vllm, 5), told(fake_vllm, 5)


def test_batch_tasks_start_with_a_clean_python_state(fake_vllm: FakeVllm, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        """
tasks:
  - id: first
    prompt: "first: set a global"
    check: grep -qx 41 seen.txt
  - id: second
    prompt: "second: look for it"
    check: grep -qx absent seen.txt
"""
    )
    steps = {
        "first": [
            block("python", "leak = 41"),
            block("python", "open('seen.txt', 'w').write(str(leak))"),  # kept within a task
            Reply(text="done"),
        ],
        "second": [
            block("python", "open('seen.txt', 'w').write('present' if 'leak' in globals() "
                            "else 'absent')"),
            Reply(text="done"),
        ],
    }  # fmt: skip

    def reply(body: dict[str, Any]) -> Reply:
        task = next(str(m["content"]) for m in body["messages"] if m["role"] == "user")
        script = steps[task.split(":", 1)[0]]
        return script[sum(1 for m in body["messages"] if m["role"] == "assistant")]

    fake_vllm.script(*[reply] * 5)
    out = tmp_path / "out"
    proc = run_oi(
        "batch", str(tasks), "--out", str(out), "--concurrency", "1", "--no-pool",
        env=env_for(fake_vllm, tmp_path),
    )  # fmt: skip
    seen = {task: (out / task / "workdir" / "seen.txt") for task in steps}
    written = {task: path.read_text() if path.is_file() else None for task, path in seen.items()}
    assert written == {"first": "41", "second": "absent"}, (written, proc.stdout, proc.stderr)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
