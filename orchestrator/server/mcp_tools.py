"""oi's sandbox as MCP tools (the official ``mcp`` SDK): ``oi mcp`` over stdio, and the same
tools at ``/mcp`` of ``oi serve`` (streamable HTTP, behind its bearer tokens).

Tools: ``execute(language, code)`` runs one block in a fresh sandbox, as every block of oi;
``list_files``, ``read_file(path)`` and ``write_file(path, content)`` reach the workdir and
nothing else (the checks of ``files.py``: no ``..``, no absolute path, no symlink followed).
Results are plain text: the exit code, the output trimmed as the model of ``oi run`` gets it,
and limits in plain words ("timed out after 60 s (wall-clock limit)").

The limits, image, network and workdir come from the settings and the admin policy, never
from a tool's arguments. Over stdio the workdir is ``--workdir``; over HTTP each user gets
their own (``WORKSPACES/<user>/mcp``).
"""

# No "from __future__ import annotations": the SDK reads the tools' annotations, and Context
# is imported inside build_mcp (oi --help must not load the SDK).

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from orchestrator.errors import OiError
from orchestrator.languages import parse_language, supported_names
from orchestrator.llm.prompts import result_for_model
from orchestrator.protocols import BlockRunner
from orchestrator.server.files import Workdir

READ_LIMIT = 1 << 20
WRITE_LIMIT = 16 << 20
MAX_CODE = 1 << 20


@dataclass(frozen=True)
class McpWorkspace:
    """Where one MCP client's blocks run and its files are."""

    runner: BlockRunner
    workdir: Workdir
    max_output: int = 8192


def execute_block(space: McpWorkspace, language: str, code: str) -> str:
    """Run ``code`` in a fresh sandbox; the result in plain words (failed code is a result)."""
    try:
        lang = parse_language(language)
    except OiError:
        return f"not run: unknown language {language!r}; use one of {supported_names()}"
    if len(code) > MAX_CODE:
        return f"not run: the code is longer than {MAX_CODE} characters"
    box = space.runner.describe(lang)
    result = space.runner.run(lang, code)
    return result_for_model(result, box, space.max_output)


def list_workdir(space: McpWorkspace) -> str:
    entries = space.workdir.list()
    if not entries:
        return "the workdir is empty"
    return "\n".join(f"{e.name}\t{e.size} bytes" for e in entries)


def read_workdir_file(space: McpWorkspace, path: str) -> str:
    try:
        data = space.workdir.read(path, READ_LIMIT)
    except OiError as exc:
        return f"cannot read {path!r}: {exc}"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path!r} is not UTF-8 text ({len(data)} bytes); read it from a block instead"


def write_workdir_file(space: McpWorkspace, path: str, content: str) -> str:
    data = content.encode("utf-8", "surrogatepass")
    try:
        entry = space.workdir.write(path, iter([data]), WRITE_LIMIT)
    except OiError as exc:
        return f"not written: {exc}"
    return f"wrote {entry.size} bytes to {path}"


Resolve = Callable[[Any], McpWorkspace]
"""The workspace for a tool call's context (over HTTP: the authenticated user's)."""


def build_mcp(resolve: Resolve) -> Any:
    """The ``MCPServer`` with oi's tools; ``resolve(ctx)`` picks the workspace of a call."""
    from mcp.server.mcpserver import Context, MCPServer  # noqa: PLC0415

    server = MCPServer(
        name="oi",
        log_level="WARNING",  # its INFO lines would log every model request of the server
        instructions="Run code in throwaway, hardened sandboxes (no network unless the admin "
        "allows it) with a workdir mounted at /workspace; read and write its files.",
    )

    @server.tool()
    async def execute(language: str, code: str, ctx: Context) -> str:
        """Run code in a fresh sandbox (language: python, javascript or shell) with the workdir
        at /workspace; returns the exit code, trimmed stdout/stderr and any limit hit."""
        space = await anyio.to_thread.run_sync(resolve, ctx)  # may make the user's sandbox
        return await anyio.to_thread.run_sync(execute_block, space, language, code)

    @server.tool()
    async def list_files(ctx: Context) -> str:
        """List the files of the workdir (name and size)."""
        space = await anyio.to_thread.run_sync(resolve, ctx)
        return await anyio.to_thread.run_sync(list_workdir, space)

    @server.tool()
    async def read_file(path: str, ctx: Context) -> str:
        """Read a UTF-8 text file of the workdir (a path relative to it, at most 1 MiB)."""
        space = await anyio.to_thread.run_sync(resolve, ctx)
        return await anyio.to_thread.run_sync(read_workdir_file, space, path)

    @server.tool()
    async def write_file(path: str, content: str, ctx: Context) -> str:
        """Write a text file in the workdir (a path relative to it; folders are made)."""
        space = await anyio.to_thread.run_sync(resolve, ctx)
        return await anyio.to_thread.run_sync(write_workdir_file, space, path, content)

    return server


def user_of(ctx: Any) -> Any:
    """The ``oi serve`` user a tool call came from (set by ``app.Gate``)."""
    request = ctx.request_context.request
    user = request.scope.get("oi.user") if request is not None else None
    if user is None:
        raise PermissionError("no authenticated user for this call")
    return user
