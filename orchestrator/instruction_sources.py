"""Reading standing instructions where a settings source names them: text, or ``@FILE``.

A value that starts with ``@`` names a file (``@~/notes/data.md``, ``@docs/oi.md``); anything
else is the text itself. A relative path is relative to the file that names it (your config,
``./oi.toml``, a tasks file), or to the current folder for ``--instructions`` and
``OI_INSTRUCTIONS``. Each file or text is at most ``MAX_INSTRUCTIONS_BYTES``; whether it fits
the model's context is checked when a session opens (``context.instructions_problem``).

A project file is untrusted input: it names only files inside its own folder, reached without
following a symlink on the way, so a repository's ``oi.toml`` cannot make oi read
``~/.ssh/id_rsa`` and send it to the model. No file is read through a FIFO or a device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.fsafe import check_relative, open_dir_beneath, read_regular
from orchestrator.llm.instructions import InstructionPiece

MAX_INSTRUCTIONS_BYTES = 32 * 1024
"""More than a 32k context's worth of advice; a 4k context allows far less (see context.py)."""


def resolve(
    value: Any, *, where: str, source: str, base_dir: Path, project: bool, confined: bool
) -> InstructionPiece:
    """The instructions ``value`` stands for, read from its file when it names one.

    ``where`` names the setting in errors (``/src/repo/oi.toml: instructions``); ``source`` is
    shown to people with the instructions; ``confined`` keeps a file inside ``base_dir``.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{where}: instructions must be text, or @FILE to read them from a file")
    if not value.startswith("@"):
        if len(value.encode()) > MAX_INSTRUCTIONS_BYTES:
            raise ConfigError(
                f"{where}: the instructions are longer than {MAX_INSTRUCTIONS_BYTES} bytes; "
                "shorten them"
            )
        return InstructionPiece(source, value, project)
    name = value[1:].strip()
    if confined:
        data, path = _read_confined(name, where, base_dir)
    else:
        path = base_dir / Path(name).expanduser()
        data = _read(path, where, lambda: read_regular(path, limit=_LIMIT, follow=True))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: instructions file {path} is not UTF-8 text") from None
    return InstructionPiece(f"{source} (file {path})", text, project)


_LIMIT = MAX_INSTRUCTIONS_BYTES


def _read_confined(name: str, where: str, base_dir: Path) -> tuple[bytes, Path]:
    """A file below ``base_dir``, no component of it a symlink (a project's own file)."""
    try:
        if name.startswith("~"):  # the user's home is never a project's to name
            raise ConfigError(name)
        parts = check_relative(name, where)
    except ConfigError:
        raise ConfigError(
            f"{where}: instructions file {name!r} is refused: a project file may only name a "
            "file inside its own folder (a relative path without '..')"
        ) from None
    path = base_dir.joinpath(*parts)

    def read() -> bytes:
        with open_dir_beneath(base_dir, parts[:-1]) as fd:
            return read_regular(Path(parts[-1]), limit=_LIMIT, dir_fd=fd)

    return _read(path, where, read), path


def _read(path: Path, where: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: instructions file {path} does not exist; fix the path (a leading @ "
            "names a file) or write the instructions themselves"
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: instructions file refused: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read instructions file {path}: {exc.strerror or exc}"
        ) from None
