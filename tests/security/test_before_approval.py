"""Checklist item 41, nothing before approval: containers the pool pre-starts wait with their
interpreter loaded while a person decides (or while the model proposes no code at all), and the
workdir may be a hostile repository. Until the approved program starts, nothing in them may read,
let alone run, anything of the workdir.

The workdir is planted with files that interpreters and shells load when they look in the wrong
place (modules named like what the wrappers import, start-up files, node_modules, dotfiles); each
leaves a marker ``PWNED-<name>`` in the workdir if it runs. Beyond the named plants, an inotify
watch on the host sees any open or listing of anything in the workdir, whatever its name (a bind
mount is the same inode on both sides; gVisor's gofer opens host files for the sandbox).

Positive controls: the same plants fire when an interpreter in the same image is started the
old way (cwd /workspace, the workdir searched), and the watch sees that happen.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from orchestrator.languages import Language
from orchestrator.sandbox.container import ExecResult
from orchestrator.sandbox.runner import Sandbox
from tests.inotify import IN_ISDIR, IN_OPEN, Event, TreeWatch
from tests.sandbox_fixtures import SandboxFactory

ISOLATIONS = ["runc", "gvisor"]
LANGUAGES = (Language.PYTHON, Language.JAVASCRIPT, Language.SHELL)
MARKER = "PWNED-"
# The workdir quota walks the workdir from the host (oi itself, not the sandbox): inotify cannot
# tell that walk from a sandbox's reads, so these sandboxes do without it.
NO_HOST_WALK = {"sandbox_only": {"workdir_max_bytes": None, "workdir_max_files": None}}
SETTLE_S = 1.0  # how long the pre-started interpreters wait with the plants before the close


def py_mark(name: str) -> str:
    # posix, not open(): a planted encodings package runs before io is set up.
    return (
        "import posix\n"
        f"posix.close(posix.open({'/workspace/' + MARKER + name!r},"
        " posix.O_WRONLY | posix.O_CREAT, 0o644))\n"
    )


def pth_line(name: str) -> str:
    """A .pth line that site runs (it starts with "import")."""
    return py_mark(name).replace("\n", "; ")[:-2] + "\n"


def js_mark(name: str) -> str:
    # require("fs") is Node's own even inside node_modules/fs: built-ins come first.
    return f'require("fs").writeFileSync({json.dumps("/workspace/" + MARKER + name)}, "");\n'


def sh_mark(name: str) -> str:
    return f": > '/workspace/{MARKER}{name}'\n"


def encodings_zip() -> bytes:
    """lib/python311.zip: the stdlib zip of an interpreter whose prefix is the workdir."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("encodings/__init__.py", py_mark("python311.zip"))
    return buffer.getvalue()


PLANTS: dict[str, str | bytes] = {
    # Python: modules the wrapper imports (the reported hole: cwd was on sys.path), the stdlib's
    # start-up modules, site's .pth files, a venv's pyvenv.cfg, a stdlib zip, bytecode
    "ctypes.py": py_mark("ctypes.py"),
    # an innocent source: its unchecked bytecode in __pycache__ (made below) runs instead
    "signal.py": "# nothing to see here\n",
    "encodings/__init__.py": py_mark("encodings"),
    "sitecustomize.py": py_mark("sitecustomize.py"),
    "usercustomize.py": py_mark("usercustomize.py"),
    "site.py": py_mark("site.py"),
    "oi-plant.pth": pth_line(".pth"),
    "pyvenv.cfg": "home = /usr/bin\ninclude-system-site-packages = false\n",
    "lib/python3.11/site-packages/oi-venv.pth": pth_line("pyvenv.cfg"),
    "lib/python311.zip": encodings_zip(),
    "main.py": py_mark("main.py"),  # where a relative program path would point
    # Node: node_modules named like what Node or the preload loads, a package.json whose main
    # runs, .npmrc, and a program file where a relative path would point
    "node_modules/oi-plant/package.json": '{"name": "oi-plant", "main": "main.js"}\n',
    "node_modules/oi-plant/main.js": js_mark("node_modules-oi-plant"),
    "node_modules/fs/package.json": '{"name": "fs", "main": "main.js"}\n',
    "node_modules/fs/main.js": js_mark("node_modules-fs"),
    "node_modules/path/package.json": '{"name": "path", "main": "main.js"}\n',
    "node_modules/path/main.js": js_mark("node_modules-path"),
    "node_modules/worker_threads/package.json": '{"name": "worker_threads", "main": "main.js"}\n',
    "node_modules/worker_threads/main.js": js_mark("node_modules-worker_threads"),
    "package.json": '{"name": "plant", "main": "plant-main.js", "type": "commonjs"}\n',
    "plant-main.js": js_mark("package.json"),
    ".npmrc": "node-options=--require /workspace/plant-npmrc.js\n",
    "plant-npmrc.js": js_mark(".npmrc"),
    "main.js": js_mark("main.js"),
    # shells: start-up files of bash and sh, readline's, and a .env that both sources as shell
    # and, as dotenv, hands Node a --require
    ".bashrc": sh_mark(".bashrc"),
    ".profile": sh_mark(".profile"),
    ".bash_profile": sh_mark(".bash_profile"),
    ".bash_login": sh_mark(".bash_login"),
    ".bash_logout": sh_mark(".bash_logout"),
    ".inputrc": f"set comment-begin {MARKER}.inputrc\n",  # readline runs nothing: see the control
    ".env": 'NODE_OPTIONS="--require /workspace/plant-dotenv.js"\n' + sh_mark(".env"),
    "plant-dotenv.js": js_mark(".env-NODE_OPTIONS"),
    "main.sh": sh_mark("main.sh"),
    # for the environment test: a folder the user puts on PYTHONPATH
    "envlib/sitecustomize.py": py_mark("envlib-sitecustomize"),
}
SYMLINKS = {"bin/python3": "/usr/bin/python3"}  # with pyvenv.cfg: a venv in the workdir

# Bytecode is made by the image's own Python (its format is the version's): an unchecked-hash
# pyc runs in place of its source whatever the source says; a sourceless one needs no source.
COMPILE_BYTECODE = f"""
import base64, py_compile, sys
unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH
for name, cfile, mode in [
    ("signal.pyc", "/tmp/signal.cpython-%d%d.pyc" % sys.version_info[:2], unchecked),
    ("struct.pyc", "/tmp/struct.pyc", py_compile.PycInvalidationMode.TIMESTAMP),
]:
    open("/tmp/src.py", "w").write({py_mark("@")!r}.replace("@", name))
    py_compile.compile("/tmp/src.py", cfile=cfile, invalidation_mode=mode, doraise=True)
    print(cfile.rsplit("/", 1)[1], base64.b64encode(open(cfile, "rb").read()).decode())
"""


def plant(workdir: Path, make_sandbox: SandboxFactory) -> None:
    compiled = make_sandbox(pool=False).run("python", COMPILE_BYTECODE)
    assert compiled.exit_code == 0, compiled.stderr
    for line in compiled.stdout.splitlines():
        name, data = line.split()
        folder = workdir / "__pycache__" if "cpython" in name else workdir
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(base64.b64decode(data))
    for relative, content in PLANTS.items():
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for relative, target in SYMLINKS.items():
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


def markers(workdir: Path) -> set[str]:
    return {p.name[len(MARKER) :] for p in workdir.iterdir() if p.name.startswith(MARKER)}


def snapshot(workdir: Path) -> dict[str, tuple[int, int, int]]:
    """Every name under the workdir with its size, mode and mtime: any write changes it."""
    found: dict[str, tuple[int, int, int]] = {}
    for folder, subdirs, files in os.walk(workdir):
        for name in [*subdirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), workdir)] = (
                st.st_size,
                st.st_mode,
                st.st_mtime_ns,
            )
    return found


def looked_at(events: list[Event], isolation: str) -> list[str]:
    """The events that show the workdir was looked at.

    gVisor's gofer opens the mount's root once as each container starts, before any process of
    the sandbox runs (measured: a container running `true` shows exactly that one event), so a
    bare open of the root, without a listing, is the runtime's, not the sandbox's."""

    def runtime_own(event: Event) -> bool:
        return isolation == "gvisor" and event.path == "." and event.mask == IN_OPEN | IN_ISDIR

    return [str(event) for event in events if not runtime_own(event)]


def warm_all(sandbox: Sandbox) -> None:
    """Pre-start a container of every language and wait until each has greeted."""
    assert sandbox.pool is not None
    for language in LANGUAGES:
        sandbox.warm(language)
    for language in LANGUAGES:
        spec = sandbox.spec_for(language)
        assert sandbox.pool.wait_ready(spec, 60), f"no {language.value} container greeted"
        assert sandbox.pool.ready_ids(spec), f"no {language.value} container ready"


# Approved blocks that use nothing of the workdir, with what they must print.
APPROVED = {
    Language.PYTHON: (
        "import json, ctypes, signal, struct, os, sys\n"
        "print(json.dumps([ctypes.sizeof(ctypes.c_int), struct.calcsize('<h'),"
        " int(signal.SIGTERM)]), os.getcwd(), sys.path[0])",
        "[4, 2, 15] /workspace /tmp\n",
    ),
    Language.JAVASCRIPT: (
        "const path = require('path'), { Worker } = require('worker_threads');\n"
        "console.log(path.join('a', 'b'), typeof Worker, process.cwd(), __filename);",
        "a/b function /workspace /tmp/main.js\n",
    ),
    Language.SHELL: ('echo "$0" "$PWD"; type -t cd', "/tmp/main.sh /workspace\nbuiltin\n"),
}


def run_pooled(sandbox: Sandbox, language: Language, code: str) -> ExecResult:
    assert sandbox.pool is not None
    spec = sandbox.spec_for(language)
    sandbox.warm(language)
    assert sandbox.pool.wait_ready(spec, 60)
    pre_started = sandbox.pool.ready_ids(spec)
    result = sandbox.run(language, code)
    assert result.container_id in pre_started, "the block did not run in a pre-started container"
    return result


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_41_pre_started_interpreters_read_nothing_of_the_workdir(
    make_sandbox: SandboxFactory, workdir: Path, isolation: str
) -> None:
    plant(workdir, make_sandbox)
    sandbox = make_sandbox(isolation=isolation, pool=True, **NO_HOST_WALK)
    before = snapshot(workdir)  # after the grant (as root: group bits for the sandbox's uid)

    # 1. pre-started, greeted, waiting; then closed without running anything
    with TreeWatch(workdir) as watch:
        warm_all(sandbox)
        time.sleep(SETTLE_S)
        sandbox.close()
        events = looked_at(watch.events(), isolation)  # before markers() lists the workdir
    assert markers(workdir) == set()
    assert events == []
    assert snapshot(workdir) == before

    # 2. approved blocks that use nothing of the workdir, pooled and fresh: right results, and
    # still nothing of the workdir read (the programs' own start included)
    fresh = make_sandbox(isolation=isolation, pool=False, **NO_HOST_WALK)
    with TreeWatch(workdir) as watch:
        for language, (code, expected) in APPROVED.items():
            for result in (run_pooled(sandbox, language, code), fresh.run(language, code)):
                assert (result.exit_code, result.stdout, result.stderr) == (0, expected, ""), (
                    language
                )
        sandbox.close()
        events = looked_at(watch.events(), isolation)  # before markers() lists the workdir
    assert markers(workdir) == set()
    assert events == []
    assert snapshot(workdir) == before


# Positive control: the same plants, the same images, interpreters started the old way. Each
# command is an approved block's child process, in /workspace.
CONTROLS = {
    Language.PYTHON: (
        "import os, subprocess\n"
        "def run(*cmd, **env):\n"
        "    subprocess.run(cmd, env={**os.environ, **env}, cwd='/workspace',\n"
        "                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "run('python3', '-c', 'import ctypes')  # the old wrapper: -c, cwd on sys.path\n"
        "run('python3', '-c', 'import signal')  # __pycache__ bytecode for an innocent source\n"
        "run('python3', '-c', 'import struct')  # sourceless bytecode\n"
        "for name in ('sitecustomize', 'usercustomize'):\n"
        "    run('python3', '-S', '-c', 'import ' + name)\n"
        "# site is frozen into 3.11, which no file shadows unless frozen modules are off\n"
        "run('python3', '-X', 'frozen_modules=off', '-S', '-c', 'import site')\n"
        "run('python3', '-c', 'import site; site.addsitedir(\"/workspace\")')  # .pth\n"
        "run('python3', '-c', 'pass', PYTHONPATH='/workspace')  # encodings at start\n"
        "run('/workspace/bin/python3', '-c', 'pass')  # pyvenv.cfg: the workdir as a venv\n"
        "run('python3', '-c', 'pass', PYTHONHOME='/workspace')  # lib/python311.zip\n"
        "run('python3', 'main.py')\n",
        {
            "ctypes.py",
            "signal.pyc",
            "struct.pyc",
            "site.py",
            "sitecustomize.py",
            "usercustomize.py",
            ".pth",
            "encodings",
            "pyvenv.cfg",
            "python311.zip",
            "main.py",
        },
    ),
    Language.JAVASCRIPT: (
        "const { spawnSync } = require('child_process');\n"
        "const run = (cmd, ...args) => spawnSync(cmd, args, { cwd: '/workspace', stdio: 'ignore' });\n"
        "// a preload named by a bare name resolves from the cwd; 'fs/' is a package, not fs\n"
        "run('node', '-r', 'oi-plant', '-e', "
        "\"require('fs/'); require('path/'); require('worker_threads/')\");\n"
        "run('node', '.');  // package.json's main\n"
        "run('node', 'main.js');\n"
        "run('bash', '-c', 'set -a; . ./.env; node -e 0');  // .env sourced; its NODE_OPTIONS\n",
        {
            "node_modules-oi-plant",
            "node_modules-fs",
            "node_modules-path",
            "node_modules-worker_threads",
            "package.json",
            "main.js",
            ".env",
            ".env-NODE_OPTIONS",
        },
    ),
    Language.SHELL: (
        "cd /workspace\n"
        "HOME=/workspace bash -i -c : </dev/null >/dev/null 2>&1  # .bashrc\n"
        "HOME=/workspace bash -l -c exit </dev/null >/dev/null 2>&1  # .bash_profile, logout\n"
        "HOME=/workspace sh -l -c : </dev/null >/dev/null 2>&1  # .profile\n"
        "BASH_ENV=/workspace/.bash_login bash -c :  # what a login bash without .bash_profile reads\n"
        "HOME=/workspace bash -i -c 'bind -v' 2>/dev/null | grep -q PWNED-.inputrc"
        " && : > PWNED-.inputrc  # readline read it\n"
        "bash main.sh\n",
        {
            ".bashrc",
            ".bash_profile",
            ".bash_logout",
            ".profile",
            ".bash_login",
            ".inputrc",
            "main.sh",
        },
    ),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_41_positive_control_the_plants_fire_when_started_the_old_way(
    make_sandbox: SandboxFactory, workdir: Path, isolation: str
) -> None:
    """Shows that test_41 above can fail: every plant is live and the watch sees it read.
    .npmrc has no control: the images carry no npm, so only an npm a block installs reads it."""
    plant(workdir, make_sandbox)
    sandbox = make_sandbox(isolation=isolation, pool=False, **NO_HOST_WALK)
    fired: set[str] = set()
    for language, (code, expected) in CONTROLS.items():
        with TreeWatch(workdir) as watch:
            result = sandbox.run(language, code)
            events = looked_at(watch.events(), isolation)
        assert result.exit_code == 0, result.stderr
        now = markers(workdir) - fired
        assert now == expected, language
        assert any(event.startswith(("OPEN", "ACCESS")) for event in events), language
        fired |= now
    # every plant is covered by a control but .npmrc and the environment test's own
    assert fired | {".npmrc", "envlib-sitecustomize"} == all_markers()


def all_markers() -> set[str]:
    """Every marker a plant can leave (the bytecode plants are made at test time)."""
    names = {"signal.pyc", "struct.pyc"}
    for content in PLANTS.values():
        text = content.decode("latin-1") if isinstance(content, bytes) else content
        names.update(re.findall(MARKER + r"""([^'"\s]+)""", text))
    return names


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_41_interpreter_settings_in_the_environment_wait_for_the_program(
    make_sandbox: SandboxFactory, workdir: Path, isolation: str
) -> None:
    """Settings the user passes in that interpreters read at start (PYTHONPATH, NODE_OPTIONS,
    BASH_ENV) may name workdir files: they take effect when the program starts, as they would
    for `python3 FILE`, `node FILE` and `bash FILE` there, and not while the container waits."""
    plant(workdir, make_sandbox)
    settings = {
        "PYTHONPATH": "/workspace/envlib",
        "NODE_OPTIONS": "--require /workspace/node_modules/oi-plant/main.js",
        "BASH_ENV": "/workspace/.bashrc",
    }
    sandbox = make_sandbox(
        isolation=isolation, pool=True, env=sorted(settings), host_env=settings, **NO_HOST_WALK
    )
    with TreeWatch(workdir) as watch:
        warm_all(sandbox)
        time.sleep(SETTLE_S)
        sandbox.close()
        events = looked_at(watch.events(), isolation)  # before markers() lists the workdir
    assert markers(workdir) == set()
    assert events == []

    # approved: each setting acts as the program starts (the positive control of this test)
    python = run_pooled(sandbox, Language.PYTHON, "import sys\nprint(sys.path[:2])")
    assert python.stdout == "['/tmp', '/workspace/envlib']\n", python.stderr
    assert markers(workdir) == {"envlib-sitecustomize"}
    node = run_pooled(sandbox, Language.JAVASCRIPT, "console.log(process.cwd())")
    assert node.stdout == "/workspace\n", node.stderr
    # the Node wrapper is bash too: BASH_ENV is for the shell's programs, not for it
    assert markers(workdir) == {"envlib-sitecustomize", "node_modules-oi-plant"}
    shell = run_pooled(sandbox, Language.SHELL, 'echo "$PWD"')
    assert shell.stdout == "/workspace\n", shell.stderr
    assert markers(workdir) == {"envlib-sitecustomize", "node_modules-oi-plant", ".bashrc"}
