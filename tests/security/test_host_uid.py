"""Checklist 38: no block runs as host uid 0, and nothing a block leaves in the workdir raises a
host user's privilege (setuid/setgid files, device nodes, file capabilities) - under runc and
gVisor, as root in root's folder (CI's usual case) and in a normal user's folder. A second
local user then tries to use what the block left.

The workdir lives under /var/tmp (the second user must reach it; pytest's own tmp folder is
root's, 0700). Users are throwaway accounts, removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.sandbox.grant import SANDBOX_GID, SANDBOX_UID
from tests.sandbox_fixtures import SandboxFactory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")

# Every way a block could try to leave something that grants privilege on the host.
ESCALATE = r"""
id -u > /workspace/uid.txt
cp /bin/sh /workspace/suid-sh; chmod 4755 /workspace/suid-sh; echo "chmod-u+s=$?"
cp /bin/sh /workspace/sgid-sh; chmod 2755 /workspace/sgid-sh; echo "chmod-g+s=$?"
python3 - <<'PY'
import os
def attempt(name, action):
    try:
        action()
        print(name, "=0")
    except OSError as exc:
        print(name, "=", exc.errno)
attempt("open-suid", lambda: os.close(os.open("/workspace/open-suid", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mknod-suid", lambda: os.mknod("/workspace/mknod-suid", 0o100000 | 0o4755))
attempt("mknod-dev", lambda: os.mknod("/workspace/null-dev", 0o20666, os.makedev(1, 3)))
open("/workspace/capped", "w").close()
attempt("setcap", lambda: os.setxattr("/workspace/capped", "security.capability",
        bytes.fromhex("0100000200200000000000000000000000000000")))
PY
tar -C /workspace -cf /tmp/t.tar suid-sh && mkdir -p /workspace/untar \
  && tar -C /workspace/untar -xpf /tmp/t.tar; echo "tar=$?"
echo done
"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="oi-uid-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def users() -> Iterator[list[pwd.struct_passwd]]:
    """Two throwaway accounts: a workdir owner and an attacker."""
    names = ["oiuid" + uuid.uuid4().hex[:8] for _ in range(2)]
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in names:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def has_capability(path: Path) -> bool:
    try:
        os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return False
    return True


def what_grants_privilege(workdir: Path) -> list[str]:
    found = []
    for path in [workdir, *workdir.rglob("*")]:
        info = path.lstat()
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            found.append(f"{path.name}: device")
        if not stat.S_ISDIR(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{path.name}: mode {stat.S_IMODE(info.st_mode):o}")
        if has_capability(path):
            found.append(f"{path.name}: file capability")
    return found


def run_as(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
@pytest.mark.parametrize("folder", ["root's", "a user's"])
def test_38_nothing_a_block_leaves_raises_a_host_users_privilege(
    make_sandbox: SandboxFactory,
    scratch: Path,
    users: list[pwd.struct_passwd],
    isolation: str,
    folder: str,
) -> None:
    owner, attacker = users
    workdir = scratch / "work"
    workdir.mkdir()
    if folder == "a user's":
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        expected_uid = owner.pw_uid
    else:
        expected_uid = SANDBOX_UID
    sandbox = make_sandbox(workdir=workdir, isolation=isolation)
    result = sandbox.run("sh", ESCALATE)
    assert "done" in result.stdout, result

    ran_as = int((workdir / "uid.txt").read_text())
    assert ran_as == expected_uid and ran_as != 0
    if folder == "root's":
        assert workdir.lstat().st_uid == 0 and workdir.lstat().st_gid == SANDBOX_GID
    left = what_grants_privilege(workdir)
    assert left == [], f"the block left: {left}\n{result.stdout}\n{result.stderr}"

    # The attacker runs whatever is there: it runs as the attacker, nobody else.
    for name in ("suid-sh", "sgid-sh", "untar/suid-sh", "open-suid", "mknod-suid"):
        path = workdir / name
        if path.exists():
            path.parent.chmod(path.parent.lstat().st_mode | 0o005)
            ids = run_as(attacker, str(path), "-p", "-c", "id -u; id -g")
            if ids.returncode == 0:
                assert ids.stdout.split() == [str(attacker.pw_uid), str(attacker.pw_gid)], name


def test_38_the_positive_control_a_setuid_file_does_grant(
    scratch: Path, users: list[pwd.struct_passwd]
) -> None:
    """Without oi: a setuid copy of sh owned by one user makes another that user (the attack
    the test above looks for is real on this host: /var/tmp is not mounted nosuid)."""
    owner, attacker = users
    shell = scratch / "sh"
    shutil.copy("/bin/sh", shell)
    os.chown(shell, owner.pw_uid, owner.pw_gid)
    shell.chmod(0o4755)
    ids = run_as(attacker, str(shell), "-p", "-c", "id -u")
    assert ids.stdout.split() == [str(owner.pw_uid)], ids
