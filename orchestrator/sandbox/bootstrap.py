"""The program a sandbox container starts with, and the wire protocol oi speaks with it. Pure.

A container is created (and, with the pool, started) before its block is known. Its command is a
small *wrapper* that:

1. writes the greeting ``READY`` on stdout (the pool reads it: the container is up and, for
   Python and Node, the interpreter is already loaded);
2. reads a fixed-size header ``<nonce: 32 hex> <size: 12 digits>\\n`` and exactly ``size`` program
   bytes from stdin, and writes them to ``/tmp/main.<ext>`` (what runs is byte for byte what was
   sent);
3. runs the program with stdin at /dev/null, its interpreter's start-up paid before the block
   arrives where that is costly: Python in a forked child of the already started interpreter,
   as ``__main__`` with the file's name (~15 ms saved; what tells it apart from
   ``python3 -u /tmp/main.py``: ``sys.flags`` says isolated, and multiprocessing's spawned
   children get ``-I`` too); Node started with the container, waiting in a ``-r`` preload
   (``sandbox-images/node/oi-preload.js``) until the program is written, then running it as its
   main module (~60 ms saved; what still tells it apart from
   ``node /tmp/main.js``: ``process.uptime()`` counts from the container's start, and
   ``require.cache`` lists the preload); ``bash /tmp/main.sh`` as a plain child. SIGTERM (a
   timeout) is forwarded to the program;
4. when the program exits, SIGKILLs every other process of the sandbox user (as the container's
   end would) and writes an end marker carrying the nonce on stdout and, with the exit status, on
   stderr.

Nothing runs before approval (SECURITY.md, item 41): the workdir may be a hostile repository,
and a pre-started interpreter waits while a person decides, or the model proposes no code at all.
So until the program starts, no wrapper or waiting interpreter looks at the workdir: the
container starts in ``START_DIR`` (``/``, read-only), Python runs isolated (``-I``: no cwd, script
dir, PYTHON* variables or user site on ``sys.path``), bash reads no start-up file (``--posix``),
and Node's preload loads only built-in modules, by their ``node:`` names. Only the program's process
enters ``/workspace``, so the program sees the cwd, ``sys.path``, ``$PWD``, ``process.cwd()`` it
would see started there. Where the environment carries interpreter settings that are read at
start and may name workdir files (PYTHON* beyond oi's own, NODE_OPTIONS and the like), the
interpreter is started with the program instead, as today, rather than ignoring them.

The markers let oi report a block as soon as it ends, instead of waiting ~25-40 ms for Docker to
tear the container down; the container is removed afterwards, off the hot path. Each marker is
the last thing on its stream (everything else was killed first), and the nonce, drawn per block,
keeps output that merely looks like a marker from ending a block. The Python wrapper is not
dumpable (``PR_SET_DUMPABLE`` 0) and the forked program wipes its copy of the nonce, so a Python
block cannot forge its end; the bash wrapper's memory is readable by its block, which then could
end its own block early, exactly as exiting would, and is killed by the container's removal that
starts right away.

If the wrapper dies before its markers (the block killed it, OOM, timeout), the stream simply
ends and oi falls back to Docker's exit status. ``OutputScanner`` strips greeting and markers
from the streams.

The wrappers end with ``kill(-1, SIGKILL)``: they are only ever a container's command, never
something to try on a host.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from orchestrator.languages import LANGUAGES, Language
from orchestrator.sandbox.output import STDERR, STDOUT

READY = b"\0oi-ready\n"
"""Greeting the wrapper writes on stdout before it reads its program."""
END = b"\0oi-end:"
"""Start of an end marker: ``END + nonce + b"\\n"`` on stdout, ``END + nonce + b":<code>\\n"``
on stderr."""
NONCE_HEX = 32
SIZE_DIGITS = 12
HEADER_LEN = NONCE_HEX + 1 + SIZE_DIGITS + 1
WRAPPER_NAME = "oi-bootstrap"  # $0 of the bash wrapper, so `ps` says what it is
START_DIR = "/"
"""The containers' working dir: read-only and not the workdir, so that nothing a wrapper or a
waiting interpreter does can find the workdir's files."""
WORKSPACE = "/workspace"
"""Where the workdir is mounted (``spec.WORKSPACE``): the program's cwd once it starts."""
PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
"""``spec.BASE_ENVIRONMENT``'s PYTHON* variables, which -u and -B reproduce under -I."""
ENV_DIR = "/oi/env"
"""Where a session's environment is mounted (``OI_ENV``): venv, npm prefix, Python state."""
STATE_MODULE = "/opt/oi/oi_state.py"
"""The python image's state module (``sandbox-images/python/oi_state.py``)."""
PIP_SHIM = "#!@PYTHON@\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n"
"""``pip``/``pip3`` in the session's venv (made without pip: the image's pip module serves)."""
ENV_VARIABLES = {
    "VIRTUAL_ENV": "@ENV@/venv",
    "PATH": "@ENV@/venv/bin:@ENV@/npm/bin:@PATH@",
    "NPM_CONFIG_PREFIX": "@ENV@/npm",
    "NODE_PATH": "@ENV@/npm/lib/node_modules",
}
"""What the program (and what it starts) sees once it runs in a session's environment; set
only after the program arrived, so no wrapper runs a planted command from the environment."""
NODE_CA = "/etc/ssl/certs/oi-ca-bundle.crt"
"""``spec.CA_IN_SANDBOX``: the one NODE_* setting of oi's own (read at start, not in the
workdir)."""

# Runs as `python3 -I -B -u -c <this> /tmp/main.py` in /. The parent supervises; only the forked
# child returns from _oi_wrapper() and runs the program at top level, so that a traceback loses
# exactly one frame (this one) and looks like `python3 -u /tmp/main.py`'s. -I: nothing of the
# workdir (cwd, script dir, PYTHON* variables, user site) is on sys.path while the interpreter
# waits; -B stands in for PYTHONDONTWRITEBYTECODE, which -I ignores. The child enters the
# workdir and puts the program's folder first on sys.path, as `python3 /tmp/main.py` would; if
# the environment holds PYTHON* variables beyond oi's own (which -u and -B reproduce), only a
# fresh interpreter would honour them as today, so the child becomes `python3 -u /tmp/main.py`.
_PYTHON_WRAPPER = """\
import os, sys


def _oi_wrapper():
    import builtins, ctypes, signal
    from importlib.machinery import SourceFileLoader

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the block (same uid) cannot read the nonce here
    path = sys.argv[1]
    session = None
    if os.environ.get("OI_ENV") and os.path.isfile(@STATE_MODULE@):
        # The image's own module (and cloudpickle), loaded while the container waits: the
        # session's environment and state are read only by the approved program's process.
        sys.path.insert(0, os.path.dirname(@STATE_MODULE@))
        import oi_state as session
        del sys.path[0]
        session.preload()
    os.write(1, @READY@)
    header = bytearray(@HEADER_LEN@)  # read in place: no other copy of the nonce exists
    view, got = memoryview(header), 0
    while got < len(header):
        n = os.readv(0, [view[got:]])
        if not n:
            os._exit(125)
        got += n
    left, chunks = int(header[@SIZE_FROM@:@SIZE_TO@]), []
    while left:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            os._exit(125)
        chunks.append(chunk)
        left -= len(chunk)
    program = b"".join(chunks)
    with open(path, "wb") as fh:
        fh.write(program)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    child = os.fork()
    if child == 0:
        header[:] = bytes(len(header))
        prctl(4, 1, 0, 0, 0)
        os.chdir(@WORKSPACE@)
        if any(
            name.startswith("PYTHON") and @PYTHON_ENV@.get(name) != value
            for name, value in os.environ.items()
        ):
            try:
                os.execv(sys.executable, ["python3", "-u", path])
            except OSError:
                os.write(2, b"oi: cannot start " + sys.executable.encode() + b"\\n")
                os._exit(127)
        main = type(sys)("__main__")
        main.__dict__.update(
            __annotations__={}, __builtins__=builtins, __cached__=None, __file__=path,
            __loader__=SourceFileLoader("__main__", path),
        )
        sys.modules["__main__"] = main
        sys.argv[:] = [path]
        sys.path.insert(0, os.path.dirname(path))  # under -I, entry 0 is the stdlib's
        if session is not None:
            session.enter_env()
            session.report(session.restore(main.__dict__), "not restored")
        return path, program, main.__dict__, session

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, forward)
    status = os.waitpid(child, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    try:
        os.kill(-1, signal.SIGKILL)  # all but this process and init: nothing outlives the block
    except OSError:
        pass
    nonce = bytes(header[:@NONCE_LEN@])
    try:
        os.write(1, @END@ + nonce + b"\\n")
        os.write(2, @END@ + nonce + b":%d\\n" % code)
    except OSError:
        pass
    os._exit(code)


_oi_path, _oi_program, _oi_globals, _oi_state = _oi_wrapper()
del _oi_wrapper
try:
    exec(compile(_oi_program, _oi_path, "exec"), _oi_globals)
except SystemExit:
    raise
except BaseException as _oi_exc:
    _oi_exc = _oi_exc.with_traceback(_oi_exc.__traceback__.tb_next)  # hide this file's frame
    sys.excepthook(type(_oi_exc), _oi_exc, _oi_exc.__traceback__)
    sys.exit(130 if isinstance(_oi_exc, KeyboardInterrupt) else 1)
finally:
    if _oi_state is not None:  # what the next Python block of the session gets back
        _oi_state.report(_oi_state.save(_oi_globals), "not kept")
"""
for _name, _value in {
    "READY": repr(READY),
    "END": repr(END),
    "HEADER_LEN": str(HEADER_LEN),
    "NONCE_LEN": str(NONCE_HEX),
    "SIZE_FROM": str(NONCE_HEX + 1),
    "SIZE_TO": str(NONCE_HEX + 1 + SIZE_DIGITS),
    "WORKSPACE": repr(WORKSPACE),
    "PYTHON_ENV": repr(PYTHON_ENV),
    "STATE_MODULE": repr(STATE_MODULE),
}.items():
    _PYTHON_WRAPPER = _PYTHON_WRAPPER.replace(f"@{_name}@", _value)

# Runs as `bash --posix -c <this> oi-bootstrap /tmp/main.<ext> <interpreter...>` in /. --posix:
# bash reads no start-up file (BASH_ENV) before the wrapper's first line turns POSIX mode off
# again. The program runs in the background so that `wait` can be interrupted to forward SIGTERM
# (a timeout) to it. @START_EARLY@ and @START@ are filled in below: the interpreter starts after
# the program has arrived, or (Node) before, waiting until it has.
_BASH_TEMPLATE = r"""set +o posix; path=$1; shift
@START_EARLY@printf '\0oi-ready\n'
IFS=' ' read -r nonce size || exit 125
head -c "$size" > "$path" || exit 125
@ENTER_ENV@@START@trap 'kill -TERM "$child" 2>/dev/null' TERM
while :; do
  wait "$child"; code=$?
  if [ "$code" -le 128 ] || ! kill -0 "$child" 2>/dev/null; then break; fi
done
exec 3>&-
kill -9 -1 2>/dev/null
printf '\0oi-end:%s\n' "$nonce"
printf '\0oi-end:%s:%d\n' "$nonce" "$code" >&2
exit "$code"
"""
# Once the program has arrived: the session's environment (see _oi_enter_env in the Python
# wrapper), made on first use by the image's Python if it has one, then put first for the
# program. Nothing in it runs before: the wrapper's own commands come from the image's PATH.
_ENTER_ENV = (
    'if [ -n "${OI_ENV-}" ] && [ -d "$OI_ENV" ]; then\n'
    '  if [ ! -e "$OI_ENV/venv/bin/python3" ] && [ -x /usr/bin/python3 ]; then\n'
    "    /usr/bin/python3 -I -m venv --system-site-packages --without-pip"
    ' "$OI_ENV/venv" >/dev/null 2>&1\n'
    "    for name in pip pip3; do\n"
    f"      printf '%s' {shlex.quote(PIP_SHIM.replace('@PYTHON@', ENV_DIR + '/venv/bin/python3'))}"
    ' > "$OI_ENV/venv/bin/$name" && chmod 755 "$OI_ENV/venv/bin/$name"\n'
    "    done\n"
    "  fi\n"
    # The interpreter comes from the image, never from the environment a block could fill.
    '  [ "$#" -gt 0 ] && set -- "$(command -v -- "$1" || printf %s "$1")" "${@:2}"\n'
    "  node_bin=$(command -v node || printf node)\n"
    + "".join(
        f'  export {name}="{value.replace("@ENV@", "$OI_ENV").replace("@PATH@", "$PATH")}"\n'
        for name, value in ENV_VARIABLES.items()
    )
    + "fi\n"
)
# The program's process starts in the workdir, with $PWD as if it had started there (cd would
# also export OLDPWD, which a program started in /workspace does not see).
_ENTER_WORKSPACE = f"cd {WORKSPACE} && unset OLDPWD || exit 125\n"
_BASH_TEMPLATE = _BASH_TEMPLATE.replace("@ENTER_ENV@", _ENTER_ENV)
_BASH_WRAPPER = _BASH_TEMPLATE.replace("@START_EARLY@", "").replace(
    "@START@", _ENTER_WORKSPACE + '"$@" "$path" </dev/null &\nchild=$!\n'
)

NODE_PRELOAD = "/opt/oi/node-preload.js"
"""Where the node image keeps ``sandbox-images/node/oi-preload.js`` (read-only, like the image)."""
# Runs as `bash --posix -c <this> oi-bootstrap /tmp/main.js`. Node starts early, in /, unless the
# environment has settings Node reads at start (NODE_* but oi's CA bundle, OPENSSL_CONF): those
# may name workdir files, so Node then starts only with the program, as `node /tmp/main.js` in
# the workdir. $PWD tells the preload where to go once released (and the program sees it as if
# Node had started there). Two FIFOs next to the program:
# - .oi-loaded, Node's fd 4: Node writes a byte once loaded, and only then does the wrapper greet.
#   If Node dies first, the read sees end of file and the wrapper ends: no container is handed
#   out whose interpreter is gone.
# - .oi-start, opened read-write by the wrapper first, so that no open blocks: the wrapper writes
#   a byte once the program is in place. It keeps it open until the program ends, since closing it
#   early could lose a byte Node has not read yet; if the wrapper dies, Node reads end of file
#   and exits 125 without running anything.
_NODE_WRAPPER = _BASH_TEMPLATE.replace(
    "@START_EARLY@",
    f"""dir=${{path%/*}} early=1
for name in ${{!NODE_@}} OPENSSL_CONF; do
  case $name=${{!name-}} in NODE_EXTRA_CA_CERTS={NODE_CA} | OPENSSL_CONF=) ;; *) early= ;; esac
done
if [ -n "$early" ]; then
  mkfifo -m 600 "$dir/.oi-start" "$dir/.oi-loaded" && exec 3<>"$dir/.oi-start" || exit 125
  PWD={WORKSPACE} node -r {NODE_PRELOAD} "$path" </dev/null 3>&- 4>"$dir/.oi-loaded" &
  child=$!
  exec 4<"$dir/.oi-loaded"
  IFS= read -r -n 1 -u 4 _ || exit 125
  exec 4<&-
  rm -f "$dir/.oi-start" "$dir/.oi-loaded"
fi
""",
).replace(
    "@START@",
    f"""if [ -n "$early" ]; then
  printf 1 >&3
else
  {_ENTER_WORKSPACE}  "${{node_bin:-node}}" "$path" </dev/null &
  child=$!
fi
""",
)


def bootstrap_command(language: Language) -> list[str]:
    """The container's command: the wrapper described in this module's docstring."""
    info = LANGUAGES[language]
    path = f"/tmp/{info.filename}"
    if language is Language.PYTHON:
        python, *flags = info.interpreter
        return [python, "-I", "-B", *flags, "-c", _PYTHON_WRAPPER, path]
    if language is Language.JAVASCRIPT:
        return ["/bin/bash", "--posix", "-c", _NODE_WRAPPER, WRAPPER_NAME, path]
    return ["/bin/bash", "--posix", "-c", _BASH_WRAPPER, WRAPPER_NAME, path, *info.interpreter]


def plain_command(language: Language) -> list[str]:
    """Read the program from stdin until its end into /tmp, then run it in the workdir (no
    greeting, no markers: the exit status comes from Docker once the container has stopped).
    Nothing starts in the workdir before the program: ``sh`` reads no start-up file when not
    interactive."""
    info = LANGUAGES[language]
    path = f"/tmp/{info.filename}"
    interpreter = " ".join(info.interpreter)
    return [
        "/bin/sh",
        "-c",
        f"cat > {path} && cd {WORKSPACE} && unset OLDPWD && exec {interpreter} {path} </dev/null",
    ]


def speaks_protocol(command: list[str], language: Language) -> bool:
    """Does a container started with ``command`` run this module's wrapper?

    Any other command (``plain_command``) gets the plain protocol: the program on stdin, then
    end of input, and the exit status from Docker.
    """
    return command == bootstrap_command(language)


def frame_program(nonce: bytes, program: bytes) -> bytes:
    """What oi writes to a wrapper's stdin: the fixed-size header, then the program."""
    if len(nonce) != NONCE_HEX or not re.fullmatch(rb"[0-9a-f]+", nonce):
        raise ValueError(f"nonce must be {NONCE_HEX} lowercase hex digits")
    if len(program) >= 10**SIZE_DIGITS:
        raise ValueError("program too large")
    return nonce + b" " + str(len(program)).zfill(SIZE_DIGITS).encode() + b"\n" + program


_EXIT_TAIL = re.compile(rb":(\d{1,3})\n")
_EXIT_TAIL_PREFIX = re.compile(rb"(:\d{0,3})?")


@dataclass
class _Stream:
    held: bytes = b""  # bytes that may be the start of a greeting or marker: not delivered yet
    greeting: bool = False  # still expecting the greeting at the start of this stream
    done: bool = False


class OutputScanner:
    """Separates a wrapper's greeting and end markers from the block's own output.

    Feed it the demultiplexed frames in order; it returns the bytes that belong to the block
    (holding back, at most, a tail that could still turn out to be a marker). ``finished`` turns
    true once both end markers arrived; ``exit_code`` is then the wrapper's report.
    """

    def __init__(self, nonce: bytes, *, expect_greeting: bool) -> None:
        self._marker = END + nonce
        self._streams = {
            STDOUT: _Stream(greeting=expect_greeting),
            STDERR: _Stream(),
        }
        self.exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return all(stream.done for stream in self._streams.values())

    def feed(self, stream_id: int, data: bytes) -> bytes:
        """The part of ``data`` (plus what was held) that is the block's output on this stream."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return b""  # after its marker a stream is over: later bytes are not the block's
        buf = stream.held + data if stream.held else data
        stream.held = b""
        if stream.greeting:
            if len(buf) < len(READY) and READY.startswith(buf):
                stream.held = buf
                return b""
            stream.greeting = False
            if buf.startswith(READY):
                buf = buf[len(READY) :]
        return self._scan(stream_id, stream, buf)

    def flush(self, stream_id: int) -> bytes:
        """At end of stream: what was held back was output after all."""
        stream = self._streams[stream_id]
        held, stream.held = stream.held, b""
        return b"" if stream.done else held

    def _scan(self, stream_id: int, stream: _Stream, buf: bytes) -> bytes:
        marker = self._marker
        out: list[bytes] = []
        while True:
            at = buf.find(marker)
            if at < 0:
                keep = _partial_suffix(buf, marker)
                out.append(buf[: len(buf) - keep])
                stream.held = buf[len(buf) - keep :]
                return b"".join(out)
            out.append(buf[:at])
            tail = buf[at + len(marker) :]
            if stream_id == STDOUT:
                if not tail:
                    stream.held = buf[at:]
                    return b"".join(out)
                if tail.startswith(b"\n"):
                    stream.done = True
                    return b"".join(out)
            else:
                match = _EXIT_TAIL.match(tail)
                if match:
                    self.exit_code = int(match.group(1))
                    stream.done = True
                    return b"".join(out)
                if len(tail) <= 4 and _EXIT_TAIL_PREFIX.fullmatch(tail):
                    stream.held = buf[at:]
                    return b"".join(out)
            # The nonce but not a marker's shape: output after all; keep scanning after it.
            out.append(marker)
            buf = tail


def _partial_suffix(buf: bytes, marker: bytes) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    start = max(0, len(buf) - len(marker) + 1)
    at = buf.find(marker[:1], start)
    while at >= 0:
        if marker.startswith(buf[at:]):
            return len(buf) - at
        at = buf.find(marker[:1], at + 1)
    return 0
