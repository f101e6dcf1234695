"""A second outside review: oi attacked as a hostile model (its blocks), a hostile repository
or tasks file, and a second local user, against what changed most recently (the session's
environment at /oi/env, the uid-2000000000 workdir grant, private run folders, batch checks).

Each test asserts the safe behaviour and fails while the hole is open; each has a positive
control, so it could pass. Everything runs against the real engine (or the real ``oi``
console script with the fake vLLM as the model), leaves nothing behind, and sends traffic only
to loopback and to containers it starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.sandbox.host import prepare_host
from orchestrator.sandbox.runner import Sandbox
from orchestrator.sandbox.session_env import env_size, sweep_envs
from orchestrator.sandbox.spec import current_identity
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI, SandboxFactory, catalog, make_config, throwaway_user

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")
MiB = 1 << 20


def rm_rf(path: Path) -> None:
    """Remove what a test made, however deep a block nested it (shutil.rmtree recurses)."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture
def envs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "envs"
    yield path
    rm_rf(path)


def with_env(make_sandbox: SandboxFactory, env: Path, **settings: Any) -> Sandbox:
    sandbox_only = {"env_dir": env, **settings.pop("sandbox_only", {})}
    return make_sandbox(sandbox_only=sandbox_only, **settings)


def du(path: Path) -> int:
    """Bytes allocated below ``path`` as root sees them (``du``), links not followed."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


# --- 1. the session's environment is a second, unwatched disk ------------------------------


FILL_ENV = (
    "mkdir -p /oi/env/junk && for i in $(seq 1 12); do "
    "head -c 16777216 /dev/zero > /oi/env/junk/f$i || break; done; du -sm /oi/env/junk"
)
FILL_WORKDIR = FILL_ENV.replace("/oi/env/", "/workspace/")


def test_a_block_cannot_write_past_env_max_bytes_while_it_runs(
    make_sandbox: SandboxFactory, envs: Path, workdir: Path
) -> None:
    """``env_max_bytes`` (capped by the admin's ``max_env_bytes``) is measured only after a
    block: while it runs, /oi/env is a host folder with no bound at all but the disk. The
    workdir quota exists because one unwatched block wrote 54 GiB in its 60 s; the same block
    writing to /oi/env instead is not watched (nor counted by the workdir quota). Here a block
    under an 8 MiB environment bound (and an 8 MiB workdir bound) writes 192 MiB into
    /oi/env and finishes normally. Safe: stopped near the bound, as the workdir quota stops
    the same writes to /workspace (the positive control)."""
    bound = 8 * MiB
    box = with_env(
        make_sandbox,
        envs / "session-fill",
        workdir_max_bytes="8m",
        sandbox_only={"env_max_bytes": bound},
        pool=False,
        timeout=60,
    )
    control = box.run("sh", FILL_WORKDIR)
    assert control.workdir_overrun is not None, control  # the workdir quota stops it
    assert du(workdir) < 8 * MiB + 64 * MiB

    result = box.run("sh", FILL_ENV)
    held = du(envs / "session-fill")
    assert held <= bound + 64 * MiB, (
        f"a block under env_max_bytes = 8 MiB left {held >> 20} MiB in its session "
        f"environment and was not stopped (exit {result.exit_code}, overrun "
        f"{result.workdir_overrun}): the environment is an unbounded disk while a block runs"
    )


# --- 2. a deep folder a block leaves breaks oi's own walks ---------------------------------

DEEP = 1500  # folders inside each other; Python's recursion limit is 1000


def nest(where: str, depth: int = DEEP) -> str:
    """A Python block that nests ``depth`` folders below ``where`` (by descriptor: no long
    path needed) and leaves a file at the bottom."""
    return (
        "import os\n"
        f"fd = os.open({where!r}, os.O_RDONLY)\n"
        f"for _ in range({depth}):\n"
        "    os.mkdir('d', 0o755, dir_fd=fd)\n"
        "    child = os.open('d', os.O_RDONLY, dir_fd=fd)\n"
        "    os.close(fd)\n"
        "    fd = child\n"
        "os.close(os.open('bottom', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))\n"
        "print('nested')\n"
    )


def test_oi_gc_removes_an_environment_however_deep_a_block_nested_it(
    make_sandbox: SandboxFactory, envs: Path
) -> None:
    """``oi gc`` removes environments unused for 14 days with ``fsafe.remove_tree``
    (``shutil.rmtree``, recursive on Python 3.11): a block that nests 1500 folders in /oi/env
    makes it raise RecursionError, which ``sweep_envs`` does not catch. ``oi gc`` then crashes
    with a traceback, and that environment (and every one after it) is never removed: a
    block makes its disk use permanent. Safe: the environment is removed (positive control: a
    shallow one next to it is)."""
    deep, shallow = envs / "session-deep", envs / "session-shallow"
    box = with_env(make_sandbox, deep, pool=False)
    made = box.run("python", nest("/oi/env"))
    assert "nested" in made.stdout, made
    box.close()
    other = with_env(make_sandbox, shallow, pool=False)
    assert other.run("sh", "mkdir -p /oi/env/a/b && echo ok").exit_code == 0
    other.close()
    try:
        removed = sweep_envs(envs, keep_days=0)
    except RecursionError:
        removed = None
    assert removed is not None, "oi gc crashed (RecursionError) on an environment a block nested"
    assert not deep.exists() and not shallow.exists(), removed


@NEEDS_ROOT
def test_a_deep_folder_in_roots_workdir_does_not_stop_the_next_session(
    make_sandbox: SandboxFactory, workdir: Path
) -> None:
    """As root in a root-owned workdir, every session first grants the workdir to the
    sandbox's group (``grant.grant_workdir``), walking it recursively. One block that nests
    1500 folders makes every later session in that folder die before its first block with
    RecursionError (a traceback, not an oi error). Safe: the next session starts (positive
    control: the block ran as the dedicated uid, so the grant was needed)."""
    assert workdir.stat().st_uid == 0
    box = make_sandbox(pool=False)
    assert box.identity.grant, "the test needs blocks of root in root's folder"
    made = box.run("python", nest("/workspace"))
    assert "nested" in made.stdout, made
    box.close()
    try:
        try:
            prepare_host(current_identity(workdir), box.config)
            error = None
        except RecursionError as exc:
            error = exc
        assert error is None, "the next session in this workdir cannot start: RecursionError"
    finally:
        rm_rf(workdir / "d")


# --- 3. what a block leaves in the environment runs, unseen, in later blocks ----------------

CANARY = "sk-canary-0a7f-only-for-session-two"
STOLEN = "stolen.txt"
# Block 1 (hostile, in session one: no secret, nothing to take) leaves code where session two's
# Python blocks run it before their approved program: a .pth file in the environment's venv
# (processed by site.addsitedir when the wrapper enters the environment), or a pickled
# Python state whose loading runs code.
PLANT_PTH = (
    "import os, sys\n"
    "site = f'/oi/env/venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages'\n"
    "os.makedirs(site, exist_ok=True)\n"
    "open(site + '/zz_oi_attack.pth', 'w').write(\n"
    f"    \"import os; open('/workspace/{STOLEN}', 'w').write(os.environ.get('OI_CANARY_TOKEN', ''))\\n\"\n"
    ")\n"
    "print('planted')\n"
)
PLANT_STATE = (
    "import os, pickle\n"
    "class Trap:\n"
    "    def __reduce__(self):\n"
    f"        code = \"open('/workspace/{STOLEN}', 'w').write(__import__('os').environ.get('OI_CANARY_TOKEN', ''))\"\n"
    "        return (exec, (code,))\n"
    "os.makedirs('/oi/env/state', exist_ok=True)\n"
    "state = {'v': 1, 'modules': {}, 'values': {'x': pickle.dumps(Trap())}}\n"
    "open('/oi/env/state/python.state.new', 'wb').write(pickle.dumps(state))\n"
    "os.replace('/oi/env/state/python.state.new', '/oi/env/state/python.state')\n"
    "os._exit(0)  # skip the wrapper's own save of this block's state\n"
)
BENIGN = "print('hello from the approved block')"


def fenced(language: str, code: str) -> Reply:
    return Reply(text=f"Here it is.\n\n```{language}\n{code}\n```\n")


def model_env(fake: FakeVllm, base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OI_")}
    env.update(
        OI_API_BASE=fake.base_url,
        XDG_DATA_HOME=str(base / "data"),
        XDG_CONFIG_HOME=str(base / "config"),
        OI_CONFIG_FILE=str(base / "no-config.toml"),
        **extra,
    )
    return env


def oi(*args: str, env: dict[str, str], stdin: str = "", cwd: Path | None = None) -> Any:
    return subprocess.run(
        [OI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
        cwd=cwd, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("plant", [PLANT_PTH, PLANT_STATE], ids=["pth", "python-state"])
def test_a_block_of_one_session_runs_nothing_unseen_in_the_next(
    fake_vllm: FakeVllm, tmp_path: Path, workdir: Path, plant: str
) -> None:
    """What runs is byte for byte what you approved, says the README. With ``--session-env workdir`` (one
    environment per folder, across sessions), a block of one session - a task in a hostile
    repository, no secret in reach - leaves a .pth file in the environment's venv, or a
    pickled Python state that runs code as it loads. Days later the user runs another task
    in that folder, passes a secret (``--env OI_CANARY_TOKEN``), reads the proposed block
    (``print('hello ...')``) and approves it: the planted code runs first, in that approved
    block's process, with the secret, and writes it into the workdir (with a network it would
    send it). Safe: a new session runs only what its person approved (the positive control:
    the approved block did run)."""
    env = model_env(fake_vllm, tmp_path)
    fake_vllm.script(fenced("python", plant), Reply(text="Done."))
    first = oi("run", "tidy the repo", "--session-env", "workdir", "--workdir", str(workdir),
               env=env, stdin="y\n")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert not (workdir / STOLEN).exists()

    fake_vllm.script(fenced("python", BENIGN), Reply(text="Done."))
    second = oi(
        "run", "say hello", "--session-env", "workdir", "--workdir", str(workdir),
        "--env", "OI_CANARY_TOKEN",
        env={**env, "OI_CANARY_TOKEN": CANARY}, stdin="y\n",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    result = json.dumps(fake_vllm.chat_requests[-1]["messages"][-1])
    assert "hello from the approved block" in result, result  # the approved block ran
    stolen = (workdir / STOLEN).read_text() if (workdir / STOLEN).exists() else ""
    assert CANARY not in stolen, (
        "code a block of an earlier session left in the environment ran inside the approved "
        f"block of a later one and took its secret: {stolen!r}"
    )


# --- 4. a batch task's check runs with the programs its model planted ----------------------

FORGE_GREP = (
    "mkdir -p /oi/env/venv/bin && printf '#!/bin/sh\\nexit 0\\n' > /oi/env/venv/bin/grep "
    "&& chmod 755 /oi/env/venv/bin/grep && echo 'I could not work it out.'"
)
HONEST = "echo 'I could not work it out.'"


def test_a_batch_check_is_not_judged_by_programs_the_model_planted(
    fake_vllm: FakeVllm, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """``oi batch`` decides pass/fail by each task's ``check``, run "in a sandbox on the
    task's workdir afterwards" - but in the task's own sandbox, with the session environment
    the model's blocks wrote first on PATH. A model that cannot do the task replaces ``grep``
    (or ``python3``, ``tar``, ``diff``, ``jq``...) in /oi/env/venv/bin with ``exit 0``, and
    every check built from those programs passes: CI reports green for work never done. Safe:
    the check runs with the image's programs, so the task fails (positive control: the same
    task whose model plants nothing fails)."""
    tasks = tmp_path / "tasks" / "tasks.yaml"
    tasks.parent.mkdir()
    tasks.write_text(
        "tasks:\n"
        "  - id: forged\n"
        "    prompt: 'forged: write 42 into answer.txt'\n"
        "    check: grep -qx 42 answer.txt\n"
        "  - id: honest\n"
        "    prompt: 'honest: write 42 into answer.txt'\n"
        "    check: grep -qx 42 answer.txt\n"
    )

    def reply(body: dict[str, Any]) -> Reply:
        task = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if any(m["role"] == "assistant" for m in body["messages"]):
            return Reply(text="Done.")
        return fenced("sh", FORGE_GREP if task.startswith("forged") else HONEST)

    fake_vllm.script(*[reply] * 10)
    out = tmp_path / "out"
    env = model_env(fake_vllm, tmp_path)
    proc = subprocess.Popen(
        [OI, "batch", str(tasks), "--out", str(out), "--concurrency", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        for container in docker_client.api.containers(
            all=True, filters={"label": f"oi.pid={proc.pid}"}
        ):
            docker_client.api.remove_container(container["Id"], force=True)
    outcomes = {
        task: json.loads((out / task / "result.json").read_text())["outcome"]
        for task in ("forged", "honest")
    }
    assert outcomes["honest"] == "failed", (outcomes, stdout, stderr)  # positive control
    assert outcomes["forged"] == "failed", (
        f"the model forged its own check: {outcomes} (it replaced grep in its session "
        "environment, which the check ran with)"
    )


# --- 5. a folder a block makes unreadable hides the environment from its bound --------------


@pytest.fixture
def local_user() -> Iterator[tuple[str, int, int]]:
    """A throwaway local account (removed afterwards)."""
    with throwaway_user("oiatk") as entry:
        yield entry.pw_name, entry.pw_uid, entry.pw_gid


MEASURE = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from orchestrator.sandbox.session_env import env_size
print(env_size(Path(sys.argv[2])))
"""


@NEEDS_ROOT
def test_a_folder_a_block_makes_unreadable_still_counts_against_env_max_bytes(
    docker_client: docker.DockerClient, local_user: tuple[str, int, int], session_id: str
) -> None:
    """After each block oi measures the environment (``env_size``) to turn it read-only past
    ``env_max_bytes``. oi as a normal user measures as that user, the same uid its blocks run
    as: a block that writes into a folder and then makes it ``chmod 000`` hides all of it
    (``env_size`` counts an unreadable folder as nothing), so the environment never turns
    read-only and grows without bound, block after block. (The workdir quota falls back to
    its upper bound for such a folder; this does not.) Safe: the hidden bytes count, as they
    do when root measures (the positive control)."""
    _name, uid, gid = local_user
    scratch = Path(tempfile.mkdtemp(prefix="oi-attack2-", dir="/var/tmp"))
    try:
        scratch.chmod(0o755)
        work = scratch / "work"
        work.mkdir()
        os.chown(work, uid, gid)  # the user's folder: root's oi runs its blocks as the user
        env = scratch / "envs" / "session-hide"
        config = dataclasses.replace(make_config(workdir=work, pool=False), env_dir=env)
        identity = prepare_host(current_identity(work), config)
        assert identity.uid == uid
        box = Sandbox(docker_client, config, catalog(docker_client, config), identity,
                      session_id=session_id)  # fmt: skip
        try:
            hid = box.run(
                "sh",
                "mkdir /oi/env/hide && head -c 8000000 /dev/urandom > /oi/env/hide/blob "
                "&& chmod 000 /oi/env/hide && echo hidden",
            )
        finally:
            box.close()
        assert "hidden" in hid.stdout, hid
        assert env_size(env) >= 8_000_000  # positive control: root sees through chmod 000

        package = scratch / "pkg" / "orchestrator"
        # The package, readable by the user (the pyenv Python's site-packages is not).
        shutil.copytree(Path(__file__).resolve().parents[2] / "orchestrator", package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        subprocess.run(["chmod", "-R", "a+rX", str(scratch / "pkg")], check=True)
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(scratch / "envs")], check=True)
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        measured = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", python, "-c",
             MEASURE, str(scratch / "pkg"), str(env)],
            capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        seen = int(measured.stdout.strip())
        assert seen >= 8_000_000, (
            f"oi as the user measures its environment at {seen} bytes: the 8 MB a block put "
            "under a chmod-000 folder are not counted against env_max_bytes"
        )
    finally:
        rm_rf(scratch)


# --- 6. a squatted /tmp/oi-UID stops a user's oi (everyone's, behind the sudo rule) ----------

RUN_DIR_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from orchestrator.errors import OiError
from orchestrator.paths import run_dir
try:
    print("RUN_DIR", run_dir())
except OiError as exc:
    print("REFUSED", exc)
"""


@NEEDS_ROOT
def test_another_user_cannot_stop_oi_by_squatting_its_run_folder(
    local_user: tuple[str, int, int],
) -> None:
    """Without ``$XDG_RUNTIME_DIR`` (cron, ``su``, CI, and the admin guide's own ``sudo -u
    oi-runner oi`` rule: sudo drops it) oi's run folder is ``/tmp/oi-UID``. Any local user can
    make that folder first; oi then refuses to run at all ("belongs to uid ..."), and the
    victim cannot remove it from the sticky /tmp. Behind the sudo rule one user thereby stops
    oi for every user of the host. Safe: oi finds a private run folder anyway (its home is
    nobody else's to plant in). Positive control: without the squatter the folder is used."""
    victim_name, victim_uid, victim_gid = local_user
    attacker = "oiatk" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", attacker],
                   check=True, capture_output=True)  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="oi-attack2-", dir="/var/tmp"))
    try:
        scratch.chmod(0o755)
        package = scratch / "pkg" / "orchestrator"
        package.mkdir(parents=True)
        for module in ("__init__.py", "errors.py", "fsafe.py", "paths.py"):
            shutil.copy(Path(__file__).resolve().parents[2] / "orchestrator" / module,
                        package / module)  # fmt: skip
        subprocess.run(["chmod", "-R", "a+rX", str(scratch / "pkg")], check=True)
        tmp = scratch / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        home = scratch / "home"
        home.mkdir(mode=0o700)
        os.chown(home, victim_uid, victim_gid)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp)}
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

        def victim_run_dir() -> str:
            return subprocess.run(
                ["setpriv", f"--reuid={victim_uid}", f"--regid={victim_gid}", "--clear-groups",
                 python, "-c", RUN_DIR_PROBE, str(scratch / "pkg")],
                capture_output=True, text=True, check=True, env=env,
            ).stdout  # fmt: skip

        control = victim_run_dir()
        assert f"RUN_DIR {tmp / f'oi-{victim_uid}'}" in control, control
        shutil.rmtree(tmp / f"oi-{victim_uid}")
        attacker_entry = pwd.getpwnam(attacker)
        subprocess.run(
            ["setpriv", f"--reuid={attacker_entry.pw_uid}", f"--regid={attacker_entry.pw_gid}",
             "--clear-groups", "mkdir", "-m", "700", str(tmp / f"oi-{victim_uid}")],
            check=True,
        )  # fmt: skip
        squatted = victim_run_dir()
        assert "RUN_DIR" in squatted, (
            f"another local user made {tmp}/oi-{victim_uid} and {victim_name}'s oi cannot "
            f"run: {squatted.strip()}"
        )
        used = Path(squatted.split("RUN_DIR", 1)[1].strip())
        assert used.stat().st_uid == victim_uid and stat.S_IMODE(used.stat().st_mode) == 0o700
    finally:
        rm_rf(scratch)
        subprocess.run(["userdel", attacker], check=False, capture_output=True)


# --- 7. the watchdog is imported from the working directory ---------------------------------

WATCHDOG_TROJAN = (
    "import os\n"
    "open({marker!r}, 'w').write(f'uid={{os.getuid()}} key={{os.environ.get(\"OI_API_KEY\")}}')\n"
)


def plant_package(root: Path, marker: Path) -> None:
    """``orchestrator/sandbox/watchdog.py`` below ``root``: what ``python -m
    orchestrator.sandbox.watchdog`` imports when ``root`` is its working directory."""
    package = root / "orchestrator" / "sandbox"
    package.mkdir(parents=True)
    (root / "orchestrator" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "watchdog.py").write_text(WATCHDOG_TROJAN.format(marker=str(marker)))


def test_a_repository_file_never_runs_on_the_host(
    tmp_path: Path, workdir: Path, docker_client: docker.DockerClient
) -> None:
    """oi starts its watchdog as ``sys.executable -m orchestrator.sandbox.watchdog`` in oi's
    own working directory - the workdir, a cloned repository - and ``python -m`` puts that
    directory first on ``sys.path``. A repository holding ``orchestrator/sandbox/watchdog.py``
    therefore runs its code on the host, outside every sandbox, as the user oi runs as (root
    in CI) with oi's environment (its API key), as soon as the first block starts. Safe:
    nothing of the workdir is imported on the host (positive control: the block ran)."""
    marker = tmp_path / "host-pwned"
    plant_package(workdir, marker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OI_")}
    env.update(OI_API_KEY="sk-canary-api-key", XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [OI, "exec", "sh"], cwd=workdir, env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate("echo the block ran\n", timeout=120)
    finally:
        for container in docker_client.api.containers(
            all=True, filters={"label": f"oi.pid={proc.pid}"}
        ):
            docker_client.api.remove_container(container["Id"], force=True)
    assert "the block ran" in out, (out, err)
    if not marker.exists():  # the watchdog may still be starting
        subprocess.run(["sleep", "1"], check=False)
    assert not marker.exists(), (
        "a file of the repository ran on the host as the watchdog: " + marker.read_text()
    )


def test_a_block_cannot_plant_code_that_a_later_oi_runs_on_the_host(
    fake_vllm: FakeVllm, tmp_path: Path, workdir: Path
) -> None:
    """The same import, reached from inside the sandbox: a block writes
    ``/workspace/orchestrator/sandbox/watchdog.py`` (the workdir is read-write, and as root it
    is granted to the block's uid). The next ``oi run`` in that folder imports it as its
    watchdog: the block's code leaves the sandbox and runs on the host as root. Safe: the
    second session's block runs and nothing of the first block runs on the host."""
    marker = tmp_path / "escaped"
    source = WATCHDOG_TROJAN.format(marker=str(marker))
    escape = (
        "import os\n"
        "os.makedirs('orchestrator/sandbox', exist_ok=True)\n"
        "for name in ('orchestrator/__init__.py', 'orchestrator/sandbox/__init__.py'):\n"
        "    open(name, 'w').close()\n"
        f"open('orchestrator/sandbox/watchdog.py', 'w').write({source!r})\n"
        "print('written')\n"
    )
    env = model_env(fake_vllm, tmp_path, OI_API_KEY="sk-canary-api-key")
    fake_vllm.script(fenced("python", escape), Reply(text="Done."))
    first = oi("run", "tidy up", "-y", env=env, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert (workdir / "orchestrator" / "sandbox" / "watchdog.py").exists()
    marker.unlink(missing_ok=True)  # only what the next oi does counts

    fake_vllm.script(fenced("python", BENIGN), Reply(text="Done."))
    second = oi("run", "say hello", env=env, cwd=workdir, stdin="y\n")
    assert second.returncode == 0, second.stderr
    result = json.dumps(fake_vllm.chat_requests[-1]["messages"][-1])
    assert "hello from the approved block" in result, result
    if not marker.exists():
        subprocess.run(["sleep", "1"], check=False)
    assert not marker.exists(), (
        "code a block wrote into the workdir ran on the host (as the watchdog of the next "
        "oi): " + marker.read_text()
    )


# --- 8. the admin guide's sudo rule makes every user one ------------------------------------


def test_behind_the_admin_guides_sudo_rule_users_do_not_share_sessions(
    fake_vllm: FakeVllm, tmp_path: Path
) -> None:
    """The admin guide: "Let them run oi through a sudo rule for a dedicated account that is
    in [the docker group], e.g. ``%oi-users ALL=(oi-runner) NOPASSWD: /usr/local/bin/oi``".
    Then every user's oi runs as ``oi-runner``, with one data dir: bob lists alice's sessions
    (their tasks), reads their records (every block's output) with ``oi sessions show``,
    resumes them with ``--resume`` (her workdir mounted read-write in his blocks, her
    environment and Python state restored), although checklist 27/46 promise that one user
    never reads another's workdir, environment or snapshots. sudo tells oi who called it
    (``SUDO_UID``/``SUDO_USER``, which the user cannot set through the rule); oi ignores it.
    Here both run as this test's uid with sudo's variables. Safe: bob does not see alice's
    session (positive control: alice does)."""
    base = tmp_path / "oi-runner"
    (base / "work").mkdir(parents=True)
    runner = model_env(fake_vllm, base)

    def as_caller(name: str, uid: int) -> dict[str, str]:
        return {**runner, "COLUMNS": "200", "SUDO_USER": name, "SUDO_UID": str(uid), "SUDO_GID": str(uid),
                "SUDO_COMMAND": "/usr/local/bin/oi"}  # fmt: skip

    fake_vllm.script(Reply(text="Your salary review notes are summarised."))
    task = "summarise alice-private-salary-review.txt"
    alice = oi("run", task, "--workdir", str(base / "work"), env=as_caller("alice", 5001))
    assert alice.returncode == 0, alice.stderr
    mine = oi("sessions", "list", env=as_caller("alice", 5001))
    assert "alice-private" in mine.stdout, mine.stdout  # positive control
    theirs = oi("sessions", "list", env=as_caller("bob", 5002))
    assert "alice-private" not in theirs.stdout, (
        "behind the sudo rule bob lists (and can show and resume) alice's session:\n"
        + theirs.stdout
    )


# --- 9. a block redirects a mount the user named to another host folder ----------------------

REDIRECT = "rm -rf /workspace/data && ln -s {target} /workspace/data && echo redirected"
WRITE_MOUNT = "echo from-the-sandbox > /mnt/data/planted && echo wrote"


@NEEDS_ROOT
def test_a_block_cannot_point_a_named_mount_at_another_host_folder(
    docker_client: docker.DockerClient, local_user: tuple[str, int, int]
) -> None:
    """The user mounts a folder of the project read-write (``--mount data:rw``, say in a
    profile; relative to the workdir). A block replaces ``data`` with a symlink to any folder
    of the user's (here: a stand-in for ``~/.local/bin``; anything but $HOME itself and
    ~/.ssh, ~/.aws, ~/.gnupg, ~/.docker, ~/.kube, ~/.config, ~/.azure is allowed). The next
    session resolves the symlink (``parse_mount`` calls ``resolve()``) and mounts *that*
    folder read-write: the block writes programs onto the user's PATH on the host. (Blocks
    run as the workdir's owner here, as for any non-root user; read-only mounts leak the same
    way.) Safe: the mount is refused, or is the folder the user named (positive control: with
    a real ``data`` folder the block writes there)."""
    _name, uid, gid = local_user
    scratch = Path(tempfile.mkdtemp(prefix="oi-attack2-", dir="/var/tmp"))
    sessions: list[Sandbox] = []
    try:
        scratch.chmod(0o755)
        work, victim = scratch / "work", scratch / "home-local-bin"
        for folder in (work, work / "data", victim):
            folder.mkdir()
            os.chown(folder, uid, gid)

        def session() -> Sandbox:
            config = make_config(workdir=work, pool=False, mounts=[f"{work}/data:/mnt/data:rw"])
            box = Sandbox.from_config(config, session_id="test-" + uuid.uuid4().hex[:10],
                                      client=docker_client)  # fmt: skip
            sessions.append(box)
            return box

        first = session()
        assert first.identity.uid == uid and not first.identity.grant
        assert "wrote" in first.run("sh", WRITE_MOUNT).stdout  # positive control
        assert (work / "data" / "planted").exists()
        assert "redirected" in first.run("sh", REDIRECT.format(target=victim)).stdout
        first.close()

        try:
            later = session().run("sh", WRITE_MOUNT)
        except Exception as refused:  # an oi error naming the link is a safe answer
            later = refused
        assert not (victim / "planted").exists(), (
            f"the next session mounted {victim} (where the block's symlink led) read-write in "
            f"place of {work}/data, and the block wrote into it: {later}"
        )
    finally:
        for box in sessions:
            box.close()
            for container in docker_client.api.containers(
                all=True, filters={"label": f"oi.session={box.session_id}"}
            ):
                docker_client.api.remove_container(container["Id"], force=True)
        rm_rf(scratch)


@NEEDS_ROOT
def test_roots_grant_never_reaches_past_a_link_in_a_mount_path(
    docker_client: docker.DockerClient,
) -> None:
    """As root in root's folder the workdir and ``--mount ...:rw`` folders are granted to the
    sandbox's group *before* the mounts are checked, and the grant opens the mount path with
    O_NOFOLLOW on its last component only. A block makes ``data`` (named in the user's
    ``--mount data/cache:rw``) a symlink to, here, a stand-in for ``/var``: the next session
    gives every file of ``/var/cache`` group 2000000000 and group write, then mounts it
    read-write (``/var`` is not among the refused system folders), and the block rewrites
    root's files there (``/var/cache/apt/archives/*.deb``, or ``/usr/local`` + ``bin``).
    Safe: nothing outside the named folder changes (positive control: the named folder is
    granted and written)."""
    scratch = Path(tempfile.mkdtemp(prefix="oi-attack2-", dir="/var/tmp"))
    sessions: list[Sandbox] = []
    try:
        scratch.chmod(0o755)
        work = scratch / "work"
        (work / "data" / "cache").mkdir(parents=True)
        var = scratch / "var"  # stands in for /var
        (var / "cache").mkdir(parents=True)
        secret = var / "cache" / "root-only.deb"
        secret.write_text("root's package\n")
        secret.chmod(0o600)

        def session() -> Sandbox:
            config = make_config(
                workdir=work, pool=False, mounts=[f"{work}/data/cache:/mnt/data:rw"]
            )
            box = Sandbox.from_config(config, session_id="test-" + uuid.uuid4().hex[:10],
                                      client=docker_client)  # fmt: skip
            sessions.append(box)
            return box

        first = session()
        assert first.identity.grant  # root, root's folder
        assert "wrote" in first.run("sh", WRITE_MOUNT).stdout  # positive control
        assert "redirected" in first.run("sh", REDIRECT.format(target=var)).stdout
        first.close()

        try:
            later: object = session().run("sh", WRITE_MOUNT + " && cat /mnt/data/root-only.deb")
        except Exception as refused:
            later = refused
        info = secret.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0o600), (
            f"root's file outside the workdir was granted to the sandbox: gid {info.st_gid}, "
            f"mode {oct(stat.S_IMODE(info.st_mode))}"
        )
        assert not (var / "cache" / "planted").exists(), f"the block wrote there: {later}"
    finally:
        for box in sessions:
            box.close()
            for container in docker_client.api.containers(
                all=True, filters={"label": f"oi.session={box.session_id}"}
            ):
                docker_client.api.remove_container(container["Id"], force=True)
        rm_rf(scratch)


# --- 10. root's grant changes files outside the workdir that share an inode with it ----------


@NEEDS_ROOT
def test_roots_grant_leaves_files_hard_linked_from_outside_alone(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """``git clone /some/local/repo work`` hard-links the clone's ``.git/objects`` to the
    source repository's (as ``cp -al`` and pnpm's global store do for their files). As root
    in that clone, the grant gives every regular file group 2000000000 and group write -
    also these shared inodes, so the source repository's objects (0444, root's, outside the
    workdir) become writable by every block, and a block rewrites them: the repository that
    root builds from elsewhere is changed. Safe: a file whose inode other paths share is left
    as it is (as setuid files are), so the block cannot write it (positive control: the
    block writes the clone's own new files)."""
    source, work = tmp_path / "source", tmp_path / "clone"
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(source)], check=True)
    (source / "build.sh").write_text("echo building\n")
    subprocess.run([*git, "-C", str(source), "add", "build.sh"], check=True)
    subprocess.run([*git, "-C", str(source), "commit", "-qm", "one"], check=True)
    subprocess.run(["git", "clone", "-q", str(source), str(work)], check=True)
    shared = [p for p in (source / ".git" / "objects").rglob("*") if p.is_file()]
    shared = [p for p in shared if p.stat().st_nlink > 1]
    assert shared, "git did not hard-link the clone's objects"
    before = {p: (p.read_bytes(), p.stat().st_gid, stat.S_IMODE(p.stat().st_mode)) for p in shared}

    box = make_sandbox(workdir=work, pool=False)
    assert box.identity.grant
    tamper = (
        "import glob, os\n"
        "hit = 0\n"
        "for path in glob.glob('.git/objects/??/*'):\n"
        "    try:\n"
        "        open(path, 'ab').write(b'tampered')\n"
        "        hit += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "open('new-file', 'w').write('mine')\n"
        "print('tampered', hit)\n"
    )
    result = box.run("python", tamper)
    assert (work / "new-file").read_text() == "mine", result  # positive control
    changed = [
        str(p.relative_to(source))
        for p, (data, gid, mode) in before.items()
        if (p.read_bytes(), p.stat().st_gid, stat.S_IMODE(p.stat().st_mode)) != (data, gid, mode)
    ]
    assert not changed, (
        f"files of {source} (outside the workdir) were granted to the sandbox and rewritten "
        f"by a block through the clone's hard links: {changed} ({result.stdout.strip()})"
    )
