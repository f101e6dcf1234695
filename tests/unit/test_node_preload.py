"""The Node preload (sandbox-images/node/oi-preload.js) run by the host's Node against FIFOs in a
temporary folder, playing the wrapper's part: Node says it is loaded, runs the program only once
released, and runs nothing when the wrapper goes away instead."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRELOAD = REPO / "sandbox-images" / "node" / "oi-preload.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="no node on this host to run the preload")


class Started:
    """Node started as the wrapper starts it: fd 4 is the FIFO .oi-loaded, and .oi-start is
    already open read-write on our side."""

    def __init__(self, folder: Path, workdir: Path | None) -> None:
        self.program = folder / "main.js"
        start, loaded = folder / ".oi-start", folder / ".oi-loaded"
        os.mkfifo(start, 0o600)
        os.mkfifo(loaded, 0o600)
        self.start = os.open(start, os.O_RDWR)
        assert NODE is not None
        self.proc = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                'exec env "$@" 4>"$0"',
                str(loaded),
                f"PWD={workdir}" if workdir else "-uPWD",
                NODE,
                "-r",
                str(PRELOAD),
                str(self.program),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",  # Node waits elsewhere, and the wrapper's $PWD says where the program runs
        )
        self.loaded = os.open(loaded, os.O_RDONLY)  # meets Node's open, as the wrapper's does

    def wait_loaded(self) -> bytes:
        return os.read(self.loaded, 1)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=30)
        os.close(self.loaded)
        return self.proc.returncode, out.decode(), err.decode()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def _stop(node: Started) -> None:
    if node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait()


@pytest.fixture
def started(tmp_path: Path, workdir: Path) -> Iterator[Started]:
    node = Started(tmp_path, workdir)
    yield node
    _stop(node)


def test_node_says_it_is_loaded_then_runs_the_program_once_released(started: Started) -> None:
    assert started.wait_loaded() == b"1"
    # Node is loaded and waiting: the program does not even exist yet
    assert started.proc.poll() is None
    started.program.write_text(
        "console.log(require.main === module, process.argv.length, process.execArgv);\n"
        "console.log(process.cwd(), process.env.PWD, require('fs').readFileSync('rel.txt', 'utf8'));\n"
        "process.exitCode = 7;\n"
    )
    (started.program.parent / "work" / "rel.txt").write_text("relative")
    os.write(started.start, b"1")
    code, out, err = started.finish()
    os.close(started.start)
    work = started.program.parent / "work"
    assert (code, out, err) == (7, f"true 2 []\n{work} {work} relative\n", "")


def test_node_waits_outside_the_workdir(started: Started) -> None:
    assert started.wait_loaded() == b"1"
    assert os.readlink(f"/proc/{started.proc.pid}/cwd") == "/"
    os.close(started.start)
    started.finish()


def test_nothing_runs_without_a_workdir_to_enter(tmp_path: Path) -> None:
    """Released but told no directory ($PWD unset), the preload runs nothing."""
    node = Started(tmp_path, None)
    try:
        assert node.wait_loaded() == b"1"
        node.program.write_text("console.log('ran')\n")
        os.write(node.start, b"1")
        code, out, _ = node.finish()
        os.close(node.start)
    finally:
        _stop(node)
    assert code == 125 and "ran" not in out


def test_nothing_runs_when_the_wrapper_goes_away(started: Started) -> None:
    assert started.wait_loaded() == b"1"
    started.program.write_text("console.log('ran')\n")  # a partial or stray file must not run
    os.close(started.start)  # the wrapper died before releasing Node
    code, out, _ = started.finish()
    assert code == 125 and "ran" not in out


def test_node_exits_when_loaded_cannot_be_said(tmp_path: Path) -> None:
    """Started by hand, without the wrapper's fd 4, the preload fails instead of hanging."""
    os.mkfifo(tmp_path / ".oi-start", 0o600)
    keep = os.open(tmp_path / ".oi-start", os.O_RDWR)
    try:
        assert NODE is not None
        proc = subprocess.run(
            [NODE, "-r", str(PRELOAD), str(tmp_path / "main.js")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(keep)
    assert proc.returncode != 0 and "EBADF" in proc.stderr
