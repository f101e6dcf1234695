"""oi's seccomp profile against the real engine (``orchestrator/sandbox/seccomp.py``).

Under runc a block cannot set up io_uring, open AF_VSOCK/AF_ALG (or other unlisted) sockets, or
leave a setuid/setgid file in the workdir by any of the usual routes, while the reference
workloads still run. Positive controls: the same programs in a plain container of the same
image under Docker's default profile (the engine's own, what oi used before) do succeed, so the
profile is what stops them. Under gVisor the same attacks are run and what gVisor allows is
recorded (runsc applies an OCI profile only with ``--oci-seccomp``).
"""

from __future__ import annotations

import io
import json
import os
import platform
import stat
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.languages import Language
from orchestrator.sandbox.seccomp import seccomp_profile
from orchestrator.sandbox.spec import (
    LABEL_MANAGED,
    LABEL_PID,
    LABEL_PID_START,
    LABEL_SESSION,
    process_start_time,
)
from tests.sandbox_fixtures import SandboxFactory

# --- the programs ------------------------------------------------------------------------------

# Calls made through ctypes, so each runs exactly the syscall named (no libc fallback).
SYSCALL_PRELUDE = r"""
import ctypes, errno, mmap, os, socket, stat, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]

def syscall(*args):
    result = libc.syscall(*args)
    return result if result >= 0 else "-" + errno.errorcode[ctypes.get_errno()]

def low_page(data, prot=3):
    # MAP_32BIT: the i386 ABI passes 32-bit pointers
    page = libc.mmap(None, 4096, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)
    ctypes.memmove(page, data, len(data))
    return page

def i386(nr, a=0, b=0, c=0):
    # a 32-bit compat syscall (int 0x80) from this 64-bit process: push rbx; mov eax, nr;
    # mov ebx, a; mov ecx, b; mov edx, c; int 0x80; pop rbx; ret
    code = (b"\x53\xb8" + struct.pack("<I", nr) + b"\xbb" + struct.pack("<I", a) + b"\xb9"
            + struct.pack("<I", b) + b"\xba" + struct.pack("<I", c) + b"\xcd\x80\x5b\xc3")
    return ctypes.CFUNCTYPE(ctypes.c_int)(low_page(code, prot=7))()
"""

# Each attack tries to leave a setuid/setgid file named after it in /workspace. ``control``:
# under Docker's default profile it does (fchmodat2 is not in Docker 20.10's profile at all).
SETID_ATTACKS: dict[str, tuple[str, str, bool]] = {
    "chmod-u+s": ("sh", "touch chmod-u+s && chmod u+s chmod-u+s", True),
    "chmod-g+s": ("sh", "touch chmod-g+s && chmod g+s chmod-g+s", True),
    "mkdir-m-2775": ("sh", "mkdir -m 2775 mkdir-m-2775", True),
    "install-m-4755": ("sh", "install -m 4755 /bin/true install-m-4755", True),
    "cp-p-passwd": ("sh", "cp -p /usr/bin/passwd cp-p-passwd", True),
    "tar-x": ("sh", "mkdir tar-x && tar -xf suid.tar -C tar-x", True),
    "os-chmod-4755": ("py", "open(P, 'w').close(); os.chmod(P, 0o4755)", True),
    "open-creat-4755": ("py", "os.close(os.open(P, os.O_CREAT | os.O_WRONLY, 0o4755))", True),
    "mknod-reg-4755": ("py", "os.mknod(P, stat.S_IFREG | 0o4755)", True),
    "tmpfile-link-4755": (
        "py",
        "fd = os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o4755)\n"
        "print(libc.linkat(-100, f'/proc/self/fd/{fd}'.encode(), -100, P.encode(), 0x400))",
        True,
    ),
    "openat2-4755": (
        "py",
        "how = struct.pack('<QQQ', os.O_CREAT | os.O_WRONLY, 0o4755, 0)\n"
        "print(syscall(437, -100, P.encode(), how, len(how)))",
        True,
    ),
    "i386-chmod-4755": (
        "py",
        "open(P, 'w').close()\nprint(i386(15, low_page(P.encode() + b'\\0'), 0o4755))",
        True,
    ),
    "fchmodat2-4755": (
        "py",
        "open(P, 'w').close()\nprint(syscall(452, -100, P.encode(), 0o4755, 0))",
        False,
    ),
}


X86_64 = platform.machine() == "x86_64"  # the i386 compat ABI exists only there
if not X86_64:
    del SETID_ATTACKS["i386-chmod-4755"]


def attack_program() -> str:
    """One Python program that runs every attack in its own process (the i386 one may be
    killed by SIGSYS) and prints each one's exit status as JSON."""
    attacks = {
        name: (
            ["sh", "-c", body]
            if kind == "sh"
            else ["python3", "-c", f"{SYSCALL_PRELUDE}\nP = {name!r}\n{body}"]
        )
        for name, (kind, body, _control) in SETID_ATTACKS.items()
    }
    return (
        "import json, subprocess\n"
        f"attacks = {attacks!r}\n"
        "status = {}\n"
        "for name, argv in attacks.items():\n"
        "    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)\n"
        "    status[name] = [done.returncode, (done.stdout + done.stderr).strip()[-200:]]\n"
        "print(json.dumps(status))\n"
    )


PROBES = (
    SYSCALL_PRELUDE
    + r"""
import json
found = {}
params = ctypes.create_string_buffer(120)
found["io_uring_setup"] = syscall(425, 8, params)
def try_socket(family, kind):
    try:
        socket.socket(family, kind).close()
        return "opened"
    except OSError as exc:
        return "-" + errno.errorcode[exc.errno]
found["AF_VSOCK"] = try_socket(40, socket.SOCK_STREAM)
found["AF_ALG"] = try_socket(38, socket.SOCK_SEQPACKET)
opened = []
for family in range(64):
    if family not in (1, 2, 10, 16) and any(
        try_socket(family, kind) == "opened" for kind in (1, 2, 3, 5)
    ):
        opened.append(family)
found["other_families_opened"] = opened
try:
    socket.socketpair(40, socket.SOCK_STREAM)
    found["socketpair_vsock"] = "opened"
except OSError as exc:
    found["socketpair_vsock"] = "-" + errno.errorcode[exc.errno]
print(json.dumps(found))
"""
)

I386_SOCKETCALL = (
    SYSCALL_PRELUDE
    + r"""
# socketcall(SYS_SOCKET, [AF_VSOCK, SOCK_STREAM, 0]): the family sits behind a pointer
print("socketcall", i386(102, 1, low_page(struct.pack("<3I", 40, 1, 0))))
"""
)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(params=["root", "user"])
def owner(request: pytest.FixtureRequest, workdir: Path) -> str:
    """Who owns the workdir, and so whom the sandbox runs as: uid 0 (oi run by root in a root
    directory: a setuid file would be setuid root) or an unprivileged uid."""
    if request.param == "user":
        os.chown(workdir, 4321, 4321)
    return str(request.param)


def plant_archive(workdir: Path) -> None:
    """``suid.tar`` holding a setuid file and a setgid directory, as a downloaded tarball may."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        members = [("suid-file", tarfile.REGTYPE, 0o4755), ("sgid-dir", tarfile.DIRTYPE, 0o2775)]
        for name, kind, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            data = b"#!/bin/sh\necho hi\n" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (workdir / "suid.tar").write_bytes(buffer.getvalue())
    os.chown(workdir / "suid.tar", workdir.stat().st_uid, workdir.stat().st_gid)


def setid_files(workdir: Path) -> dict[str, list[str]]:
    """Attack name -> the setuid/setgid files and directories it left, seen from the host."""
    found: dict[str, list[str]] = {}
    for path in workdir.rglob("*"):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            relative = path.relative_to(workdir)
            found.setdefault(relative.parts[0], []).append(f"{relative} {stat.filemode(mode)}")
    return found


def run_plain_container(
    client: docker.DockerClient,
    image: str,
    session_id: str,
    workdir: Path,
    code: str,
    security_opt: list[str] | None = None,
) -> tuple[int, str]:
    """``code`` in a container of ``image`` as Docker makes it by default (Docker's seccomp
    profile unless ``security_opt`` names one), hardened otherwise like a sandbox. Removed."""
    container = client.containers.create(
        image,
        ["python3", "-c", code],
        # As the workdir's owner; for root's folder, root's own ids (what runs as uid 0 without
        # oi - oi itself never does, and the grant has given root's folder another group).
        user="0:0"
        if workdir.stat().st_uid == 0
        else f"{workdir.stat().st_uid}:{workdir.stat().st_gid}",
        working_dir="/workspace",
        volumes={str(workdir): {"bind": "/workspace", "mode": "rw"}},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges", *(security_opt or [])],
        network_mode="none",
        # Owned by this process, so no concurrent oi start sweeps it away as an orphan.
        labels={
            LABEL_MANAGED: "1",
            LABEL_SESSION: session_id,
            LABEL_PID: str(os.getpid()),
            LABEL_PID_START: process_start_time(os.getpid()),
        },
    )
    try:
        container.start()
        status = container.wait(timeout=120)
        return int(status["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def python_image(make_sandbox: SandboxFactory) -> str:
    return make_sandbox().spec_for(Language.PYTHON).image


def last_json(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


# --- runc: the profile refuses ------------------------------------------------------------------


def test_io_uring_vsock_alg_and_unlisted_families_fail_under_runc(
    make_sandbox: SandboxFactory,
) -> None:
    result = make_sandbox().run("python", PROBES)
    assert result.exit_code == 0, result.stderr
    found = last_json(result.stdout)
    assert found["io_uring_setup"] == "-ENOSYS"
    assert found["AF_VSOCK"] == found["AF_ALG"] == "-EAFNOSUPPORT"
    assert found["other_families_opened"] == []
    assert found["socketpair_vsock"] == "-EAFNOSUPPORT"


def test_positive_control_docker_default_allows_io_uring_and_vsock(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str, workdir: Path
) -> None:
    code, out = run_plain_container(
        docker_client, python_image(make_sandbox), session_id, workdir, PROBES
    )
    assert code == 0, out
    found = last_json(out)
    assert isinstance(found["io_uring_setup"], int), found  # a ring fd
    assert found["AF_VSOCK"] == "opened", found
    # This kernel has no AF_ALG (CONFIG_CRYPTO_USER_API unset): it fails under either profile.
    assert found["AF_ALG"] == "-EAFNOSUPPORT"
    assert found["other_families_opened"], "the probe found no family to refuse"


@pytest.mark.usefixtures("owner")
def test_no_setuid_or_setgid_file_reaches_the_workdir_under_runc(
    make_sandbox: SandboxFactory, workdir: Path
) -> None:
    plant_archive(workdir)
    result = make_sandbox(timeout=120).run("python", attack_program())
    assert result.exit_code == 0, result.stderr
    status = last_json(result.stdout)
    assert set(status) == set(SETID_ATTACKS)  # every attack ran
    assert setid_files(workdir) == {}, status
    if X86_64:
        assert status["i386-chmod-4755"][0] == -31  # SIGSYS: no 32-bit syscalls at all


def test_positive_control_docker_default_lets_every_attack_leave_a_setid_file(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str, workdir: Path
) -> None:
    plant_archive(workdir)
    code, out = run_plain_container(
        docker_client, python_image(make_sandbox), session_id, workdir, attack_program()
    )
    assert code == 0, out
    left = setid_files(workdir)
    controls = {name for name, (_kind, _body, control) in SETID_ATTACKS.items() if control}
    assert controls <= set(left), (sorted(controls - set(left)), last_json(out))


@pytest.mark.skipif(not X86_64, reason="the i386 compat ABI exists only on x86_64")
def test_i386_socketcall_is_why_compat_arches_stay_out(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str, workdir: Path
) -> None:
    image = python_image(make_sandbox)
    ours = make_sandbox().run("python", I386_SOCKETCALL)
    assert ours.exit_code == 128 + 31, ours  # killed by SIGSYS: no 32-bit syscalls at all
    # Positive control: oi's own rules with the i386 sub-architecture let the family through.
    with_i386 = seccomp_profile()
    with_i386["archMap"][0]["subArchitectures"] = ["SCMP_ARCH_X86"]
    code, out = run_plain_container(
        docker_client,
        image,
        session_id,
        workdir,
        I386_SOCKETCALL,
        security_opt=["seccomp=" + json.dumps(with_i386)],
    )
    assert code == 0 and out.split()[-1].isdigit(), out  # a vsock fd


# --- runc: the workloads still work ---------------------------------------------------------------


def test_python_numpy_pandas_matplotlib_png(make_sandbox: SandboxFactory, workdir: Path) -> None:
    code = (
        "import numpy as np, pandas as pd, matplotlib.pyplot as plt, socket, subprocess, sys\n"
        "frame = pd.DataFrame({'month': pd.date_range('2024-01-01', periods=12, freq='MS'),\n"
        "                      'revenue': np.arange(12) * 1.5})\n"
        "frame.groupby(frame.month.dt.quarter).revenue.sum().plot()\n"
        "plt.savefig('revenue.png')\n"
        "print(sorted(n for _, n in socket.if_nameindex()), socket.getaddrinfo('127.0.0.1', 80, flags=socket.AI_ADDRCONFIG)[0][0])\n"
        "subprocess.run([sys.executable, '-m', 'venv', '--without-pip', '/tmp/venv'], check=True)\n"
        "print('ok')\n"
    )
    result = make_sandbox(timeout=120).run("python", code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert (workdir / "revenue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_node_worker_threads_child_process_fs(make_sandbox: SandboxFactory, workdir: Path) -> None:
    code = (
        "const { Worker } = require('worker_threads');\n"
        "const { execFileSync } = require('child_process');\n"
        "const fs = require('fs'); const os = require('os');\n"
        "fs.writeFileSync('data.json', JSON.stringify([1, 2, 3, 4]));\n"
        "fs.chmodSync('data.json', 0o640);\n"
        "const child = execFileSync(process.execPath, ['-e', 'console.log(6 * 7)']).toString().trim();\n"
        'const worker = new Worker(\'const { parentPort } = require("worker_threads");'
        ' parentPort.postMessage(JSON.parse(require("fs").readFileSync("data.json")).reduce((a, b) => a + b));\','
        " { eval: true });\n"
        "worker.on('message', (sum) => console.log('sum', sum, 'child', child,"
        " 'ifaces', Object.keys(os.networkInterfaces()).join(',')));\n"
    )
    result = make_sandbox().run("javascript", code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["sum", "10", "child", "42", "ifaces", "lo"]
    assert stat.S_IMODE((workdir / "data.json").stat().st_mode) == 0o640


def test_bash_pipeline_tar_gzip_find_jq_curl(make_sandbox: SandboxFactory, workdir: Path) -> None:
    code = (
        "set -euo pipefail\n"
        "mkdir -p logs backup && echo started > logs/app.log && echo x > logs/old.txt\n"
        "find logs -name '*.log' -mtime -1 -print0 | tar --null -czf backup/logs.tar.gz -T -\n"
        "tar -tzf backup/logs.tar.gz | jq -R . | jq -s '{files: ., n: length}' > report.json\n"
        "gzip -k logs/app.log && gunzip -c logs/app.log.gz | grep -q started\n"
        "mkdir -m 755 out && chmod -R go-w out && install -m 644 report.json out/\n"
        "curl -s file:///workspace/report.json | jq -r .n\n"
    )
    result = make_sandbox().run("sh", code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert json.loads((workdir / "out" / "report.json").read_text())["files"] == ["logs/app.log"]


# --- gVisor: what it allows -----------------------------------------------------------------------


def gvisor_applies_oci_seccomp(client: docker.DockerClient) -> bool:
    runtime = client.info().get("Runtimes", {}).get("runsc", {})
    return "--oci-seccomp" in runtime.get("runtimeArgs", [])


def test_gvisor_refuses_vsock_alg_and_unlisted_families(make_sandbox: SandboxFactory) -> None:
    # gVisor's own kernel answers these, with or without a profile: the host kernel never sees
    # them (io_uring_setup, which its Sentry implements, is printed, not judged).
    result = make_sandbox(isolation="gvisor").run("python", PROBES)
    assert result.exit_code == 0, result.stderr
    found = last_json(result.stdout)
    print("gVisor probes:", found)
    assert found["AF_VSOCK"] != "opened" and found["AF_ALG"] != "opened"
    assert found["other_families_opened"] == []


@pytest.mark.usefixtures("owner")
def test_gvisor_setid_files_reach_the_host_unless_oci_seccomp(
    make_sandbox: SandboxFactory, workdir: Path, docker_client: docker.DockerClient
) -> None:
    """Under gVisor the same attacks, with the profile in the container's spec. runsc
    (2022-12) applies it only when registered with ``--oci-seccomp``; otherwise its gofer sets
    the bits on the host file, and a host-side sweep of the workdir has to catch them."""
    plant_archive(workdir)
    result = make_sandbox(isolation="gvisor", timeout=120).run("python", attack_program())
    assert result.exit_code == 0, result.stderr
    status = last_json(result.stdout)
    assert set(status) == set(SETID_ATTACKS)
    left = setid_files(workdir)
    print("gVisor left setid files:", json.dumps(left, indent=1), json.dumps(status, indent=1))
    if gvisor_applies_oci_seccomp(docker_client):
        assert left == {}
    else:
        # Recorded, not wanted: the known gap the integrator's host-side sweep closes. This
        # fails (and asks for an update) once gVisor refuses them by itself.
        assert {"chmod-u+s", "os-chmod-4755", "install-m-4755"} <= set(left), left
