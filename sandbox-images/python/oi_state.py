"""A session's Python state across its throwaway containers. Runs only inside the sandbox.

Every block runs in a fresh container; what a person expects to keep - the variables, functions,
classes and imports of the Python blocks before - is saved after each Python block into the
session's environment (``$OI_STATE_DIR``, a folder of the session mounted read-write) and
restored in the next Python block's process before its code runs (after it was approved: the
pre-started interpreter never reads the state). Values are pickled with cloudpickle (functions
and classes defined in the blocks by value, importable ones by reference); imported modules are
kept as names and imported again. What cannot be kept (open files, sockets, threads,
generators, locks, objects over the size cap) is named on stderr so the model learns it:
``[oi] not kept: f (open file), t (thread)``.

The host never loads any of it: oi only mounts the folder. The state is the session's alone:
its file is sealed with a key only this session's containers get (``$OI_STATE_KEY``, an HMAC),
so a state another session's block wrote (with ``--session-env workdir`` sessions share one
environment) is never unpickled here.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import io
import os
import pickle
import sys
import threading
import types
from typing import Any

STATE_FILE = "python.state"
MAGIC = b"oi-state-1\n"
# The same values as orchestrator/sandbox/bootstrap.py's PIP_SHIM and ENV_VARIABLES (a unit
# test checks that they agree).
PIP_SHIM = "#!@PYTHON@\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n"
ENV_VARIABLES = {
    "VIRTUAL_ENV": "@ENV@/venv",
    "PATH": "@ENV@/venv/bin:@ENV@/npm/bin:@PATH@",
    "NPM_CONFIG_PREFIX": "@ENV@/npm",
    "NODE_PATH": "@ENV@/npm/lib/node_modules",
}
MAX_BYTES = int(os.environ.get("OI_STATE_MAX_BYTES", str(512 << 20)))
_SKIP = {"__name__", "__builtins__", "__file__", "__loader__", "__cached__", "__spec__", "__doc__"}
_SKIP |= {"__annotations__", "__package__"}
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (io.IOBase, "open file"),
    (threading.Thread, "thread"),
    (types.GeneratorType, "generator"),
    (types.CoroutineType, "coroutine"),
    (types.FrameType, "frame"),
)


def _kind(value: Any) -> str:
    import socket  # noqa: PLC0415

    if isinstance(value, socket.socket):
        return "socket"
    for types_, name in _KINDS:
        if isinstance(value, types_):
            return name
    if type(value).__name__ in ("lock", "RLock", "_thread.lock", "_thread.RLock"):
        return "lock"
    return type(value).__name__


def enter_env() -> None:
    """The session's environment (``OI_ENV``, mounted by oi) for the approved program: its venv
    (made on first use, seeing the image's packages) and npm prefix come first for it and what
    it starts, so pip and npm install there and the next block finds what they installed.
    Mirrors the bash wrappers' ``_ENTER_ENV`` (orchestrator/sandbox/bootstrap.py)."""
    root = os.environ.get("OI_ENV")
    if not root or not os.path.isdir(root):
        return
    venv = os.path.join(root, "venv")
    python = os.path.join(venv, "bin", "python3")
    if not os.path.exists(python):
        import subprocess  # noqa: PLC0415

        command = [sys.executable, "-I", "-m", "venv", "--system-site-packages", "--without-pip"]
        subprocess.run([*command, venv], check=False)
        for name in ("pip", "pip3"):
            shim = os.path.join(venv, "bin", name)
            with open(shim, "w") as fh:
                fh.write(PIP_SHIM.replace("@PYTHON@", python))
            os.chmod(shim, 0o755)  # noqa: S103 - a program, in the sandbox
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    add_site_packages(os.path.join(venv, "lib", version, "site-packages"))
    if os.path.exists(python):
        sys.executable = python  # `sys.executable -m pip install` goes to the venv
    path = os.environ.get("PATH", "")
    for name, value in ENV_VARIABLES.items():
        os.environ[name] = value.replace("@ENV@", root).replace("@PATH@", path)


def add_site_packages(folder: str) -> None:
    """``site.addsitedir`` without running code: the folder and the paths its ``.pth`` files
    name go on ``sys.path``, but a ``.pth`` line starting with ``import`` (which ``site`` would
    execute) is skipped. A block of another session sharing the environment could have left
    one, to run unseen in this session's approved program."""
    if folder in sys.path:
        return
    sys.path.append(folder)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".pth"))
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as fh:
                lines = fh.read(1 << 20).splitlines()
        except OSError:
            continue
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            path = os.path.join(folder, line)
            if os.path.isdir(path) and path not in sys.path:
                sys.path.append(path)


def preload() -> None:
    """Import what saving needs while the container waits for its block (off the clock)."""
    import cloudpickle  # noqa: F401, PLC0415


def _path() -> str | None:
    folder = os.environ.get("OI_STATE_DIR")
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, STATE_FILE)


def _key() -> bytes | None:
    try:
        key = bytes.fromhex(os.environ.get("OI_STATE_KEY", ""))
    except ValueError:
        return None
    return key if len(key) >= 16 else None


def _seal(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def restore(namespace: dict[str, Any]) -> list[str]:
    """Put the kept state into ``namespace``; what could not come back, named."""
    path, key = _path(), _key()
    if path is None or key is None or not os.path.isfile(path):
        return []
    problems: list[str] = []
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_BYTES + (64 << 20))
    except OSError as exc:
        return [f"the kept state ({type(exc).__name__})"]
    head = len(MAGIC) + 32
    if blob[: len(MAGIC)] != MAGIC or not hmac.compare_digest(
        blob[len(MAGIC) : head], _seal(key, blob[head:])
    ):
        # Not sealed with this session's key: written by something else, never unpickled.
        return ["the kept state (not written by this session; ignored)"]
    try:
        kept = pickle.loads(blob[head:])  # noqa: S301 - sealed by this session, in its sandbox
    except Exception as exc:
        return [f"the kept state ({type(exc).__name__})"]
    for name, module in kept.get("modules", {}).items():
        try:
            namespace[name] = importlib.import_module(module)
        except Exception as exc:
            problems.append(f"{name} (import {module}: {type(exc).__name__})")
    for name, payload in kept.get("values", {}).items():
        try:
            namespace[name] = pickle.loads(payload)  # noqa: S301 - as above
        except Exception as exc:
            problems.append(f"{name} ({type(exc).__name__})")
    return problems


def save(namespace: dict[str, Any]) -> list[str]:
    """Keep what can be kept of ``namespace``; what could not, named with why."""
    path, key = _path(), _key()
    if path is None or key is None:
        return []
    import cloudpickle  # noqa: PLC0415

    modules: dict[str, str] = {}
    values: dict[str, bytes] = {}
    not_kept: list[str] = []
    total = 0
    for name, value in list(namespace.items()):
        if name in _SKIP or name.startswith("_oi_"):
            continue
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        try:
            payload = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            not_kept.append(f"{name} ({_kind(value)})")
            continue
        if total + len(payload) > MAX_BYTES:
            not_kept.append(f"{name} (over the {MAX_BYTES >> 20} MiB state limit)")
            continue
        total += len(payload)
        values[name] = payload
    data = pickle.dumps({"v": 1, "modules": modules, "values": values}, protocol=5)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "wb") as fh:
        fh.write(MAGIC + _seal(key, data) + data)
    os.replace(temp, path)  # whole or not at all: a block killed mid-save keeps the old state
    return not_kept


def report(problems: list[str], verb: str) -> None:
    if problems:
        more = f" and {len(problems) - 20} more" if len(problems) > 20 else ""
        shown = ", ".join(problems[:20]) + more
        sys.stderr.write(f"[oi] {verb}: {shown}\n")
        sys.stderr.flush()
