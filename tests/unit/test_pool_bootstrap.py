"""The bootstrap wrapper's wire protocol (pure): framing the program, and separating greeting
and end markers from a block's output. The wrappers themselves run only in containers (they end
with kill(-1)); tests/integration/test_pool.py runs them there."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from orchestrator.languages import Language
from orchestrator.sandbox.bootstrap import (
    END,
    HEADER_LEN,
    NODE_PRELOAD,
    READY,
    WRAPPER_NAME,
    OutputScanner,
    bootstrap_command,
    frame_program,
    plain_command,
    speaks_protocol,
)
from orchestrator.sandbox.output import STDERR, STDOUT

REPO = Path(__file__).resolve().parents[2]
NONCE = b"0123456789abcdef0123456789abcdef"
OUT_END = END + NONCE + b"\n"


def err_end(code: int) -> bytes:
    return END + NONCE + b":%d\n" % code


def scan(
    frames: list[tuple[int, bytes]], *, greeting: bool = True, eof: bool = False
) -> tuple[bytes, bytes, bool, int | None]:
    scanner = OutputScanner(NONCE, expect_greeting=greeting)
    out = {STDOUT: b"", STDERR: b""}
    for stream, data in frames:
        out[stream] += scanner.feed(stream, data)
    if eof:
        for stream in out:
            out[stream] += scanner.flush(stream)
    return out[STDOUT], out[STDERR], scanner.finished, scanner.exit_code


@pytest.mark.parametrize(
    ("frames", "greeting", "expected"),
    [
        # the normal case: greeting, output, both markers
        (
            [(1, READY), (1, b"hi\n"), (2, b"err\n"), (1, OUT_END), (2, err_end(0))],
            True,
            (b"hi\n", b"err\n", True, 0),
        ),
        # greeting and first output in one frame, markers in the output's frames
        (
            [(1, READY + b"a"), (1, b"b" + OUT_END), (2, b"e" + err_end(7))],
            True,
            (b"ab", b"e", True, 7),
        ),
        # the pool already read the greeting: a greeting-like line is the block's own output
        ([(1, READY), (1, OUT_END), (2, err_end(1))], False, (READY, b"", True, 1)),
        # a stream that does not start with the greeting (plain bootstrap): all output
        ([(1, b"\0oi-x"), (1, b"\n")], True, (b"\0oi-x\n", b"", False, None)),
        # one marker is not the end: both streams must end
        ([(1, READY), (2, err_end(3)), (1, b"late\n")], True, (b"late\n", b"", False, 3)),
        # a marker with another nonce is output (a block printing a marker it made up)
        (
            [(1, READY), (1, END + b"f" * 32 + b"\n"), (1, OUT_END), (2, err_end(0))],
            True,
            (END + b"f" * 32 + b"\n", b"", True, 0),
        ),
        # our nonce, but not a marker's shape: output, and scanning goes on
        (
            [(1, READY), (2, END + NONCE + b"Xy"), (2, err_end(2)), (1, OUT_END)],
            True,
            (b"", END + NONCE + b"Xy", True, 2),
        ),
        # what follows a marker on its stream is not the block's
        ([(1, READY), (1, OUT_END + b"after"), (2, err_end(0) + b"x")], True, (b"", b"", True, 0)),
        # exit codes as the wrapper reports them
        ([(1, READY + OUT_END), (2, err_end(137))], True, (b"", b"", True, 137)),
        ([(1, READY + OUT_END), (2, err_end(255))], True, (b"", b"", True, 255)),
    ],
)
def test_scanner_table(
    frames: list[tuple[int, bytes]],
    greeting: bool,
    expected: tuple[bytes, bytes, bool, int | None],
) -> None:
    assert scan(frames, greeting=greeting) == expected


@pytest.mark.parametrize("stream", [STDOUT, STDERR])
def test_a_marker_split_at_any_byte_is_found(stream: int) -> None:
    marker = OUT_END if stream == STDOUT else err_end(42)
    other = err_end(42) if stream == STDOUT else OUT_END
    data = b"x\0y" + marker
    for cut in range(1, len(data)):
        frames = [(1, READY), (stream, data[:cut]), (stream, data[cut:]), (3 - stream, other)]
        out, err, finished, code = scan(frames)
        assert (out if stream == STDOUT else err) == b"x\0y", cut
        assert finished and code == 42, cut


def test_greeting_split_across_frames_is_stripped() -> None:
    frames = [(1, READY[:3]), (1, READY[3:] + b"ok"), (1, OUT_END), (2, err_end(0))]
    assert scan(frames) == (b"ok", b"", True, 0)


def test_held_bytes_are_released_when_they_turn_out_to_be_output() -> None:
    scanner = OutputScanner(NONCE, expect_greeting=False)
    assert scanner.feed(STDOUT, b"abc\0") == b"abc"  # could be a marker's start: held
    assert scanner.feed(STDOUT, b"def") == b"\0def"  # it was not


def test_flush_at_end_of_stream_returns_held_bytes() -> None:
    out, err, finished, code = scan([(1, READY + b"tail\0oi-e"), (2, b"\0")], eof=True)
    assert (out, err, finished, code) == (b"tail\0oi-e", b"\0", False, None)


def test_frame_program_header() -> None:
    framed = frame_program(NONCE, b"print(1)\n")
    assert framed[:HEADER_LEN] == NONCE + b" 000000000009\n"
    assert framed[HEADER_LEN:] == b"print(1)\n"
    assert frame_program(NONCE, b"") == NONCE + b" 000000000000\n"


@pytest.mark.parametrize("nonce", [b"short", b"G" * 32, NONCE.upper()])
def test_frame_program_refuses_a_bad_nonce(nonce: bytes) -> None:
    with pytest.raises(ValueError, match="nonce"):
        frame_program(nonce, b"x")


def test_python_wrapper_is_valid_python_with_the_protocol_constants() -> None:
    command = bootstrap_command(Language.PYTHON)
    # isolated (-I) and writing no bytecode (-B), since -I ignores PYTHONDONTWRITEBYTECODE
    assert command[:5] == ["python3", "-I", "-B", "-u", "-c"] and command[6] == "/tmp/main.py"
    source = command[5]
    ast.parse(source)
    assert repr(READY) in source and repr(END) in source and f"bytearray({HEADER_LEN})" in source
    assert "@READY@" not in source and "@END@" not in source  # every placeholder filled


@pytest.mark.parametrize(
    ("language", "path", "started_by"),
    [
        (Language.SHELL, "/tmp/main.sh", '"$@" "$path"'),
        (Language.JAVASCRIPT, "/tmp/main.js", "node -r"),
    ],
)
def test_bash_wrapper_parses_and_gets_its_path_as_argument(
    language: Language, path: str, started_by: str
) -> None:
    command = bootstrap_command(language)
    # --posix: no BASH_ENV before the wrapper's first line, which leaves POSIX mode
    assert command[:3] == ["/bin/bash", "--posix", "-c"] and command[4:6] == [WRAPPER_NAME, path]
    assert command[3].startswith("set +o posix;")
    assert command[3].count(started_by) == 1
    # -n only parses: the wrapper is never run on the host (it ends with kill -9 -1); and with
    # no input, its first `read` would end it anyway.
    check = subprocess.run(
        ["bash", "-n", "-c", command[3]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_node_wrapper_starts_node_with_the_preload_the_image_ships() -> None:
    wrapper = bootstrap_command(Language.JAVASCRIPT)[3]
    assert f"node -r {NODE_PRELOAD} " in wrapper
    dockerfile = (REPO / "sandbox-images" / "node" / "Dockerfile").read_text()
    assert f"COPY oi-preload.js {NODE_PRELOAD}" in dockerfile
    # greet only once Node said it is loaded; release it only once the program is written
    assert wrapper.index("read -r -n 1 -u 4") < wrapper.index("oi-ready")
    assert wrapper.index("head -c") < wrapper.index("printf 1 >&3")


@pytest.mark.parametrize("language", list(Language))
def test_protocol_is_spoken_only_by_the_wrapper(language: Language) -> None:
    assert speaks_protocol(bootstrap_command(language), language)
    assert not speaks_protocol(plain_command(language), language)
    other = next(lang for lang in Language if lang is not language)
    assert not speaks_protocol(bootstrap_command(other), language)


def test_plain_command_is_the_classic_bootstrap() -> None:
    assert plain_command(Language.PYTHON) == [
        "/bin/sh",
        "-c",
        "cat > /tmp/main.py && cd /workspace && unset OLDPWD"
        " && exec python3 -u /tmp/main.py </dev/null",
    ]


def test_wrappers_agree_with_the_spec_on_paths_and_environment() -> None:
    """bootstrap.py cannot import spec.py (spec imports it): its copies must match."""
    from orchestrator.sandbox import bootstrap, spec

    assert bootstrap.WORKSPACE == spec.WORKSPACE
    assert bootstrap.NODE_CA == spec.CA_IN_SANDBOX
    assert {
        name: value for name, value in spec.BASE_ENVIRONMENT.items() if name.startswith("PYTHON")
    } == bootstrap.PYTHON_ENV
    assert bootstrap.START_DIR == "/" and bootstrap.START_DIR != bootstrap.WORKSPACE


@pytest.mark.parametrize("language", list(Language))
def test_only_the_program_enters_the_workdir(language: Language) -> None:
    """Each wrapper changes to /workspace once, after the program has been written, and right
    before the program's own process starts (Node: the preload, told by $PWD)."""
    script = bootstrap_command(language)[-2 if language is Language.PYTHON else 3]
    if language is Language.PYTHON:
        assert script.count("os.chdir(") == 1
        assert script.index("fh.write(program)") < script.index("os.fork()")
        assert script.index("os.fork()") < script.index("os.chdir(") < script.index("return path")
        return
    enter = "cd /workspace && unset OLDPWD || exit 125"
    assert script.index("head -c") < script.index(enter)
    if language is Language.JAVASCRIPT:
        assert script.count(enter) == 1 and "PWD=/workspace node -r" in script
        preload = (REPO / "sandbox-images" / "node" / "oi-preload.js").read_text()
        assert preload.count("process.chdir(workdir)") == 1
        assert preload.index("readSync(start") < preload.index("process.chdir(workdir)")
        # built-ins by their node: names only, which no node_modules folder shadows
        assert 'require("node:fs")' in preload and 'require("fs")' not in preload
    else:
        assert script.count(enter) == 1
