"""An outside review: oi attacked as a malicious repository, tasks file, record, environment or
second local user, through the real ``oi`` console script (and the real engine where a block
runs). Each test here failed when it was written: it names a hole, and passes once it is fixed.

Some attacks need a path oi shares (or once shared) with every user (``/tmp``,
``/etc/oi/policy.toml``).
To plant things there without touching the host's copy (other oi processes use it), those
tests run oi in a private mount namespace (``unshare -m``) where a scratch folder is bind-mounted
over the path (or an overlay over ``/etc``). The Docker engine lives in the host's namespace, so
everything oi mounts into a sandbox is kept under ``/var/tmp``, which both namespaces see alike.
The second user is a throwaway account (``useradd``), removed afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import OI, run_oi, throwaway_user

SECRET = "sk-canary-5e1f-never-print-me"
# What a terminal acts on: OSC (sets the window title, or worse), BEL, and a bidi override that
# reorders what the reader sees.
HOSTILE_NAME = "repo\x1b]0;owned\x07\u202egnp.txt"
RAW_CONTROLS = ("\x1b", "\x07", "\u202e")
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, unshare, mount)")


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture
def other_user() -> Iterator[User]:
    """A throwaway second local user (the attacker on a shared host)."""
    with throwaway_user("oiatk") as entry:
        yield User(entry.pw_name, entry.pw_uid, entry.pw_gid)


def as_user(user: User, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command as the other user (no privileges, no groups)."""
    return subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        check=True,
        **kwargs,
    )


@pytest.fixture
def shared_scratch() -> Iterator[Path]:
    """A scratch folder under /var/tmp: seen alike by the Docker engine and by a private mount
    namespace that hides the host's /tmp; traversable by the other user."""
    path = Path(tempfile.mkdtemp(prefix="oi-attack-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def oi_env(base: Path, **extra: str) -> dict[str, str]:
    """An environment with the user's files under ``base`` and no OI_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OI_")}
    env.update(
        XDG_DATA_HOME=str(base / "data"),
        XDG_CONFIG_HOME=str(base / "config"),
        OI_CONFIG_FILE=str(base / "config" / "absent.toml"),
    )
    env.update(extra)
    return env


def run_oi_in_namespace(
    setup: str,
    *args: str,
    env: dict[str, str],
    cwd: Path,
    stdin: str = "",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``oi ARGS`` in a private mount namespace after the shell commands ``setup``."""
    script = f"set -e; {setup}; exec {shlex.quote(OI)} " + " ".join(shlex.quote(a) for a in args)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def private_victim(base: Path) -> Path:
    """A folder only its owner may use (think ~/.ssh, /root, /etc/sudoers.d), with a key in it."""
    victim = base / "victim"
    victim.mkdir()
    (victim / "id_ed25519").write_text("private key\n")
    victim.chmod(0o700)
    return victim


def assert_untouched(victim: Path) -> None:
    assert mode_of(victim) == 0o700, (
        f"oi changed the mode of {victim} to {oct(mode_of(victim))} through a planted symlink"
    )
    assert (victim / "id_ed25519").exists(), f"oi deleted {victim}/id_ed25519 through a symlink"


def raw_controls_in(text: str) -> list[str]:
    return [repr(c) for c in RAW_CONTROLS if c in text]


# --- 1. oi's run folder: never a shared one ---------------------------------------------------

QUOTA_POLICY = "max_concurrent_per_user = 2\nmax_concurrent_total = 8\n"  # oi then takes a lock


def _checkout_in_tmp() -> Path | None:
    """Where this checkout (and its venv, whose ``oi`` the tests run) is below /tmp, if it is:
    a clone in /tmp must stay visible under the private /tmp mounted over it."""
    checkout = Path(OI).resolve().parents[2]
    return checkout.relative_to("/tmp") if checkout.is_relative_to("/tmp") else None


def _private_tmp_setup(private_tmp: Path) -> str:
    """Shell lines mounting ``private_tmp`` over /tmp (the checkout bound back in, if it is
    below /tmp)."""
    inside = _checkout_in_tmp()
    if inside is None:
        return f"mount --bind {shlex.quote(str(private_tmp))} /tmp"
    checkout, again = Path("/tmp") / inside, private_tmp / inside
    return (
        f"mkdir -p {shlex.quote(str(again))} && "
        f"mount --bind {shlex.quote(str(checkout))} {shlex.quote(str(again))} && "
        f"mount --rbind {shlex.quote(str(private_tmp))} /tmp"
    )


@NEEDS_ROOT
@pytest.mark.parametrize("network", ["none", "allowlist"])
def test_links_planted_in_tmp_make_no_folder_world_writable(
    shared_scratch: Path, other_user: User, network: str
) -> None:
    """oi used to keep its locks and proxy leases in /tmp/oi-run (1777): another user who made
    /tmp/oi-run, or /tmp/oi-run/egress-<hash>, a symlink to a folder of yours got it chmod-ed
    to 1777 and its files deleted by your next oi run. (fs.protected_symlinks is 0 here, as on
    many hosts; oi must not rely on it.) Now root's oi keeps its locks in /run/oi (root's,
    0755) and nothing of an allowlist in any file: the links lead nowhere."""
    base = shared_scratch
    private_tmp = base / "tmp"
    private_tmp.mkdir()
    private_tmp.chmod(0o1777)
    work = base / "work"
    work.mkdir()
    victim = private_victim(base)
    policy = base / "policy.toml"
    policy.write_text(QUOTA_POLICY)
    for name in ("oi-run", "oi-0"):
        as_user(other_user, "ln", "-s", str(victim), str(private_tmp / name))
    as_user(other_user, "mkdir", "-p", str(private_tmp / "runs"))
    for name in ("egress-None", "quota.lock", "egress.lock"):
        as_user(other_user, "ln", "-s", str(victim), str(private_tmp / "runs" / name))
    setup, planted = _private_tmp_setup(private_tmp), ["oi-0", "oi-run", "runs"]
    args = ["exec", "sh"]
    if network == "allowlist":
        args += ["--allow-host", f"oi-attack-{uuid.uuid4().hex[:10]}.invalid"]  # never resolved
    env = oi_env(base, OI_POLICY_FILE=str(policy))
    proc = run_oi_in_namespace(setup, *args, env=env, cwd=work, stdin="echo ran\n")
    assert proc.returncode == 0 and "ran" in proc.stdout, proc.stderr
    assert_untouched(victim)
    planted += [_checkout_in_tmp().parts[0]] if _checkout_in_tmp() else []
    assert sorted(p.name for p in private_tmp.iterdir()) == sorted(planted), "oi used /tmp"
    run = Path("/run/oi")
    info = run.lstat()  # positive control: the quota lock is taken, in root's own folder
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and mode_of(run) == 0o755
    assert (run / "quota.lock").is_file() and mode_of(run / "quota.lock") == 0o600


VICTIM_RUN_DIR = """
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
def test_a_normal_users_run_folder_cannot_be_planted_by_another(
    shared_scratch: Path, other_user: User
) -> None:
    """A user without $XDG_RUNTIME_DIR gets /tmp/oi-UID, made 0700 and checked: another user
    who made that name first (a folder, or a symlink to the victim's files) is refused, never
    followed or chmod-ed."""
    victim_user = other_user
    attacker = User(*_throwaway_user())
    try:
        package = shared_scratch / "pkg" / "orchestrator"
        package.mkdir(parents=True)
        root = Path(__file__).resolve().parents[2] / "orchestrator"
        for name in ("__init__.py", "errors.py", "fsafe.py", "paths.py"):
            shutil.copy(root / name, package / name)
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        tmp = shared_scratch / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "TMPDIR": str(tmp)}
        run = [python, "-c", VICTIM_RUN_DIR, str(shared_scratch / "pkg")]

        control = as_user(victim_user, *run, env=env)
        expected = tmp / f"oi-{victim_user.uid}"
        assert f"RUN_DIR {expected}" in control.stdout, control.stdout + control.stderr
        info = expected.lstat()
        assert info.st_uid == victim_user.uid and mode_of(expected) == 0o700
        shutil.rmtree(expected)

        victim_files = shared_scratch / "victim-files"
        victim_files.mkdir(mode=0o700)
        os.chown(victim_files, victim_user.uid, victim_user.gid)
        as_user(attacker, "ln", "-s", str(victim_files), str(expected))
        planted = as_user(victim_user, *run, env=env)
        assert "REFUSED" in planted.stdout and str(expected) in planted.stdout, planted.stdout
        assert mode_of(victim_files) == 0o700
        Path(expected).unlink()
        as_user(attacker, "mkdir", "-m", "777", str(expected))
        squatted = as_user(victim_user, *run, env=env)
        assert "REFUSED" in squatted.stdout, squatted.stdout
    finally:
        subprocess.run(["userdel", attacker.name], check=False, capture_output=True)


def _throwaway_user() -> tuple[str, int, int]:
    name = "oiatk" + uuid.uuid4().hex[:8]
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(name)
    return name, entry.pw_uid, entry.pw_gid


LOCKER = """
import fcntl, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(90)
"""


@NEEDS_ROOT
@pytest.mark.parametrize("lock", ["egress.lock", "quota.lock"])
def test_another_users_lock_in_a_shared_folder_does_not_hang_oi(
    shared_scratch: Path, other_user: User, lock: str
) -> None:
    """/tmp/oi-run/egress.lock and quota.lock used to be shared, world-writable flock files:
    any local user who held one blocked every user's oi on the host forever (egress.lock even
    for `--network none`, quota.lock whenever the policy set a quota). Another user holds them
    now, in the old place: oi runs."""
    base = shared_scratch
    fake_run = base / "oi-run"
    fake_run.mkdir()
    fake_run.chmod(0o1777)
    work = base / "work"
    work.mkdir()
    policy = base / "policy.toml"
    policy.write_text(QUOTA_POLICY)
    if not Path("/tmp/oi-run").is_dir():  # the mount point
        Path("/tmp/oi-run").mkdir(mode=0o700)
    locker = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={other_user.uid}",
            f"--regid={other_user.gid}",
            "--clear-groups",
            sys.executable,
            "-c",
            LOCKER,
            str(fake_run / lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        setup = f"mount --bind {shlex.quote(str(fake_run))} /tmp/oi-run"
        env = oi_env(base, OI_POLICY_FILE=str(policy))
        try:
            proc = run_oi_in_namespace(
                setup, "exec", "sh", env=env, cwd=work, stdin="echo ran\n", timeout=20
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"another user holding /tmp/oi-run/{lock} kept oi waiting for 20 s")
        assert proc.returncode == 0 and "ran" in proc.stdout, (proc.stdout, proc.stderr)
    finally:
        locker.kill()
        locker.wait()


# --- 2. values that pass validation but widen -----------------------------------------------

CPU_QUOTA = "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us\n"


def cpu_quota_unlimited(output: str) -> bool:
    """cgroup v2 says 'max ...', v1 says -1, when a container has no CPU limit."""
    first = output.strip().split()[0]
    return first in {"max", "-1"}


@pytest.mark.parametrize(
    ("oi_toml", "flags", "policy"),
    [
        pytest.param("cpus = 1e-06\n", (), "", id="project-oi.toml"),
        pytest.param("", ("--cpus", "1e-9"), "max_cpus = 1\n", id="flag-under-policy-max_cpus"),
    ],
)
def test_a_tiny_cpu_value_is_not_unlimited_cpu(
    tmp_path: Path, workdir: Path, oi_toml: str, flags: tuple[str, ...], policy: str
) -> None:
    """`cpus` below 1e-5 passes as 'lower than yours' (and under the policy's max_cpus), but
    Docker rounds the CFS quota to 0, which means no CPU limit at all. A cloned repo's oi.toml
    (or a tasks file, or a replayed record) lifts the CPU limit without trust."""
    control = run_oi("exec", "sh", "--workdir", str(workdir), env=oi_env(tmp_path), input=CPU_QUOTA)
    assert control.returncode == 0, control.stderr
    assert not cpu_quota_unlimited(control.stdout), "positive control: the default is a limit"

    (workdir / "oi.toml").write_text(oi_toml)
    extra = {}
    if policy:
        (tmp_path / "policy.toml").write_text(policy)
        extra["OI_POLICY_FILE"] = str(tmp_path / "policy.toml")
    proc = subprocess.run(
        [OI, "exec", "sh", *flags],
        cwd=workdir,
        env=oi_env(tmp_path, **extra),
        input=CPU_QUOTA,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode == 2:  # refused as a bad value: fixed
        return
    assert proc.returncode == 0, proc.stderr
    assert not cpu_quota_unlimited(proc.stdout), (
        f"{oi_toml.strip() or ' '.join(flags)} ran the block with no CPU limit "
        f"(CFS quota {proc.stdout.strip()})"
    )


def batch_env(tmp_path: Path, fake: FakeVllm) -> dict[str, str]:
    return oi_env(tmp_path, OI_API_BASE=fake.base_url)


SLOW_BLOCK = "```sh\nsleep 6; echo slept\n```\n"


@pytest.mark.parametrize("task_budget", [None, "100h"])
def test_a_tasks_file_budget_cannot_outlast_the_command_lines(
    tmp_path: Path, fake_vllm: FakeVllm, task_budget: str | None
) -> None:
    """`--budget 3` bounds each task's wall clock; a task (an untrusted tasks file) that says
    `budget: 100h` runs past it - the budget is the one limit a tasks file may widen, and the
    policy has no cap for it. (task_budget=None is the positive control: the test can see a
    task stopped by its budget.)"""
    folder = tmp_path / "repo"
    folder.mkdir()
    line = f"    budget: {task_budget}\n" if task_budget else ""
    (folder / "tasks.yaml").write_text(
        f'tasks:\n  - id: slow\n    prompt: wait\n    check: "true"\n{line}'
    )
    fake_vllm.script(Reply(text=SLOW_BLOCK), Reply(text="done"), Reply(text="done"))
    proc = run_oi(
        "batch",
        str(folder / "tasks.yaml"),
        "--budget",
        "3",
        "--out",
        str(tmp_path / "out"),
        env=batch_env(tmp_path, fake_vllm),
    )
    assert "check passed" not in proc.stdout, (
        f"a task with budget {task_budget} outlasted --budget 3: {proc.stdout}"
    )
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr


# --- 3. files that count as the user's own, though someone else could write them -------------


@NEEDS_ROOT
@pytest.mark.parametrize("how", ["file-owned-by-other", "file-mode-0666", "dir-owned-by-other"])
def test_a_user_config_another_user_could_write_is_not_the_users(
    tmp_path: Path, other_user: User, how: str
) -> None:
    """The trust store is ignored if anyone else could have written it, but the user config
    (which may set everything: network, mounts, env, api_base where the key goes) is read
    whoever owns it - e.g. OI_CONFIG_FILE in a shared folder, or a config folder another
    user can write. The positive control is the same file, yours and private: it applies."""
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    config = config_dir / "config.toml"
    config.write_text('network = "open"\napi_base = "http://127.0.0.1:9/v1"\n')
    config.chmod(0o600)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = oi_env(tmp_path, OI_CONFIG_FILE=str(config))

    control = run_oi("config", "show", env=env, cwd=repo)
    assert 'network = "open"  # user config' in control.stdout, control.stdout + control.stderr

    if how == "file-owned-by-other":
        os.chown(config, other_user.uid, other_user.gid)
    elif how == "file-mode-0666":
        config.chmod(0o666)
    else:
        os.chown(config_dir, other_user.uid, other_user.gid)
    shown = run_oi("config", "show", env=env, cwd=repo)
    assert 'network = "open"  # user config' not in shown.stdout, (
        f"a user config another user could write ({how}) widened the network"
    )


def run_with_system_policy(
    policy: str, chmod: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``oi ARGS`` with /etc/oi/policy.toml = ``policy`` (an overlay over /etc, only in a private
    mount namespace), after the shell commands ``chmod`` on it."""
    layer = Path(tempfile.mkdtemp(prefix="oi-attack-etc-", dir="/var/tmp"))
    try:
        (layer / "upper" / "oi").mkdir(parents=True)
        (layer / "work").mkdir()
        (layer / "upper" / "oi" / "policy.toml").write_text(policy)
        setup = (
            "mount -t overlay overlay -o lowerdir=/etc,"
            f"upperdir={layer}/upper,workdir={layer}/work /etc; {chmod}"
        )
        return run_oi_in_namespace(setup, *args, env=env, cwd=cwd)
    finally:
        shutil.rmtree(layer, ignore_errors=True)


@NEEDS_ROOT
@pytest.mark.parametrize(
    "chmod",
    [
        pytest.param("chmod 0666 /etc/oi/policy.toml", id="file-mode-0666"),
        pytest.param("chown {uid} /etc/oi/policy.toml", id="file-owned-by-other"),
        pytest.param("chown {uid} /etc/oi", id="dir-owned-by-other"),
    ],
)
def test_an_admin_policy_another_user_could_write_is_not_obeyed(
    tmp_path: Path, other_user: User, chmod: str
) -> None:
    """/etc/oi/policy.toml is the only source of grants (egress ranges, gVisor runtime names,
    presets) and of every cap. Written by anyone but root, it is still obeyed: any user who can
    write it grants themselves private egress ranges or lifts the caps. Fail closed (or at least
    drop its grants) instead. The positive control is the same file, root's and 0644."""
    policy = 'egress_ranges = ["10.99.0.0/16"]\nmax_memory = "512m"\n'
    repo = tmp_path / "repo"
    repo.mkdir()
    env = oi_env(tmp_path)
    # How `oi config show` prints the cap (the default memory is 1g, so only the policy
    # makes it 512m): the positive control shows both halves of the check below are real
    # output, so either outcome can be observed.
    capped = 'memory = "512m"  # policy /etc/oi/policy.toml line 2: max_memory = "512m"'
    control = run_with_system_policy(policy, "true", "config", "show", env=env, cwd=repo)
    assert control.returncode == 0, control.stderr
    assert '"10.99.0.0/16"]  # policy /etc/oi/policy.toml' in control.stdout
    assert capped in control.stdout, control.stdout

    shown = run_with_system_policy(
        policy, chmod.format(uid=other_user.uid), "config", "show", env=env, cwd=repo
    )
    refused = shown.returncode != 0 and "/etc/oi/policy.toml" in shown.stderr
    grant_dropped = (
        shown.returncode == 0 and "10.99.0.0/16" not in shown.stdout and capped in shown.stdout
    )
    assert refused or grant_dropped, (
        f"a policy file another user could write ({chmod}) was obeyed, grants included: "
        f"{shown.stdout[-1500:]}{shown.stderr[-1500:]}"
    )
    assert not (refused and "10.99.0.0/16" in shown.stdout), "refused, yet its grant was shown"


def test_a_relative_xdg_config_home_does_not_make_the_repo_your_config(tmp_path: Path) -> None:
    """XDG says relative XDG_CONFIG_HOME/XDG_DATA_HOME are invalid and must be ignored; oi uses
    them relative to the current folder - the cloned repo - so the repo's
    .config/oi/config.toml (and trusted.json) become *your* settings (CI configs do set
    XDG_CONFIG_HOME=.config). A project file may only narrow; this one widens."""
    repo = tmp_path / "repo"
    (repo / ".config" / "oi").mkdir(parents=True)
    (repo / ".config" / "oi" / "config.toml").write_text(
        'network = "open"\napi_base = "http://127.0.0.1:9/v1"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OI_")}
    home = tmp_path / "home"  # where a fixed oi falls back to: empty
    home.mkdir()
    env.update(HOME=str(home), XDG_CONFIG_HOME=".config", XDG_DATA_HOME=str(tmp_path / "data"))
    shown = run_oi("config", "show", env=env, cwd=repo)
    assert 'network = "open"' not in shown.stdout, (
        "a relative XDG_CONFIG_HOME made the repo's .config/oi/config.toml the user config"
    )


# --- 4. secrets and the screen ---------------------------------------------------------------


def test_a_project_file_linked_to_your_config_does_not_print_your_api_key(
    tmp_path: Path,
) -> None:
    """A repo ships `oi.toml -> ../../.config/oi/config.toml` (or any path to the runner's
    config). oi follows the link out of the repo, refuses the file (api_key is yours alone) -
    and prints the key's value in the refusal, into the terminal or a public CI log."""
    config = tmp_path / "config" / "oi" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'api_key = "{SECRET}"\n')
    config.chmod(0o600)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "oi.toml").symlink_to(os.path.relpath(config, repo))
    env = oi_env(tmp_path, OI_CONFIG_FILE=str(config))
    for args in (("config", "show"), ("run", "-y", "hello"), ("exec", "sh")):
        proc = run_oi(*args, env=env, cwd=repo, input="true\n")
        assert SECRET not in proc.stdout + proc.stderr, (
            f"`oi {' '.join(args)}` printed the user's API key: {proc.stderr.strip()}"
        )


def test_a_repo_folder_name_reaches_the_terminal_inert(tmp_path: Path, fake_vllm: FakeVllm) -> None:
    """File names are sanitised on every path to the terminal (item 40) - but a folder named
    with an OSC sequence, BEL and a bidi override (git allows them) is printed raw by `oi config
    show` (the project file's source), `oi trust --list` and `oi batch`'s default --out lines."""
    repo = tmp_path / HOSTILE_NAME
    repo.mkdir()
    assert HOSTILE_NAME in os.listdir(tmp_path)  # the name really holds the controls
    (repo / "oi.toml").write_text("max_turns = 3\n")
    (repo / "tasks.yaml").write_text('tasks:\n  - id: t1\n    prompt: hi\n    check: "true"\n')
    env = oi_env(tmp_path, OI_API_BASE=fake_vllm.base_url)
    fake_vllm.script(Reply(text="done"))
    outputs = {
        "config show": run_oi("config", "show", env=env, cwd=repo),
        "trust": run_oi("trust", "oi.toml", env=env, cwd=repo),
        "trust --list": run_oi("trust", "--list", env=env, cwd=repo),
        "batch": run_oi("batch", "tasks.yaml", env=env, cwd=repo),
    }
    leaks = {
        name: raw_controls_in(proc.stdout + proc.stderr)
        for name, proc in outputs.items()
        if raw_controls_in(proc.stdout + proc.stderr)
    }
    assert not leaks, f"raw control characters from a folder name reached the screen: {leaks}"


# --- 5. records and chat ---------------------------------------------------------------------


def test_resume_with_a_record_file_does_not_crash_with_a_traceback(tmp_path: Path) -> None:
    """`oi chat --resume ./session.jsonl` (a record a repo ships, named as its README says)
    crashes with a rich traceback of oi's internals (NotImplementedError from pathlib's glob),
    not the one-line error the product promises."""
    record = tmp_path / "session.jsonl"
    record.write_text(json.dumps({"type": "session", "v": 1, "session_id": "x"}) + "\n")
    env = oi_env(tmp_path, OI_API_BASE="http://127.0.0.1:9/v1")  # closed: nothing answers
    proc = run_oi("chat", "--resume", str(record), env=env, input="hi\n", cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "NotImplementedError" not in proc.stderr, proc.stderr[-2000:]


def test_save_does_not_write_through_a_symlinked_folder_of_the_repo(
    tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    """`%save notes.md` refuses a symlink planted as the file, but `%save notes/chat.md`
    writes through a repo's `notes -> ~/somewhere` folder link to a place outside the workdir
    (e.g. ~/.bashrc.d/, ~/.config/autostart/): text the model (steered by the repo) wrote."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes").symlink_to(outside)
    (repo / "chat.md").symlink_to(outside / "chat.md")
    fake_vllm.script(Reply(text="hello"), Reply(text="hello"))
    env = oi_env(tmp_path, OI_API_BASE=fake_vllm.base_url)
    control = run_oi("chat", env=env, cwd=repo, input="hi\n%save chat.md\n")
    assert "chat.md" in control.stdout + control.stderr  # positive control: %save was tried
    assert not (outside / "chat.md").exists(), "positive control: a file symlink is refused"

    run_oi("chat", env=env, cwd=repo, input="hi\n%save notes/chat.md\n")
    assert list(outside.iterdir()) == [], "%save wrote outside the workdir through a folder link"


@pytest.mark.parametrize("name", ["chat.md", "notes/chat.md"])
def test_save_onto_a_planted_fifo_is_refused_without_hanging(
    tmp_path: Path, fake_vllm: FakeVllm, name: str
) -> None:
    """A block (or the repo) plants a FIFO where `%save` will write: opened for writing, it
    hangs `oi chat` until someone reads it (and whoever reads gets the conversation). oi must
    not open it, must leave it as it is, and say in one plain line why nothing was saved."""
    repo = tmp_path / "repo"
    (repo / "notes").mkdir(parents=True)
    fifo = repo / name
    os.mkfifo(fifo, 0o666)
    fake_vllm.script(Reply(text="hello"))
    env = oi_env(tmp_path, OI_API_BASE=fake_vllm.base_url)
    try:
        proc = run_oi("chat", env=env, cwd=repo, input=f"hi\n%save {name}\n", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`%save {name}` onto a FIFO hung oi chat: it opened the FIFO to write")
    said = proc.stdout + proc.stderr
    assert fake_vllm.chat_requests, "positive control: the chat reached the model"
    assert stat.S_ISFIFO(fifo.lstat().st_mode), f"%save replaced the planted FIFO {name}"
    assert "saved the conversation" not in said, said[-2000:]
    assert "not a regular file" in said and name in said, said[-2000:]
    assert "Traceback" not in said, said[-2000:]


# --- 6. what `oi config show` and the policy say ---------------------------------------------


def test_config_show_names_the_project_file_as_the_source_of_a_nan(tmp_path: Path) -> None:
    """A project oi.toml's `temperature = nan` is accepted and shown as coming from
    '# policy admin policy' (NaN != NaN, so it looks changed by the policy): the source column
    lies, and NaN goes to the model server. Refuse it, or name the project file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "oi.toml").write_text("temperature = nan\n")
    shown = run_oi("config", "show", env=oi_env(tmp_path), cwd=repo)
    if shown.returncode == 2:
        return
    line = next(ln for ln in shown.stdout.splitlines() if ln.startswith("temperature ="))
    assert "# project" in line, line


@NEEDS_ROOT
def test_a_policy_refusal_names_the_line_that_forbids(tmp_path: Path) -> None:
    """With /etc/oi/policy.toml `allowed_networks = ["none"]` and an OI_POLICY_FILE that lists
    every tier, OI_NETWORK=open is refused (right) citing the OI_POLICY_FILE line that allows
    it (wrong): the message must name the line that forbids, as README promises."""
    extra = tmp_path / "extra.toml"
    extra.write_text('allowed_networks = ["none", "allowlist", "open"]\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    env = oi_env(tmp_path, OI_POLICY_FILE=str(extra), OI_NETWORK="open")
    proc = run_with_system_policy(
        'allowed_networks = ["none"]\n', "true", "config", "show", env=env, cwd=repo
    )
    assert proc.returncode == 2, proc.stdout
    assert "/etc/oi/policy.toml line 1" in proc.stderr, proc.stderr
