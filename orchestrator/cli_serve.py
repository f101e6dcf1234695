"""`oi serve`, `oi users` and `oi mcp` (registered on the main Typer app by cli.py).

Thin adapters: flags -> ``loading.load`` -> the server's ``Hub`` and app (``server/``) or the
MCP tools over stdio. FastAPI, uvicorn and the mcp SDK are imported only inside the commands,
so ``oi --help`` stays fast.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli_common import docker_client, errors, load_flags, out, plain, say, usage
from orchestrator.cli_options import (
    LIMIT_FLAGS,
    MODEL_FLAGS,
    SANDBOX_FLAGS,
    SettingFlags,
    with_setting_flags,
)

SERVE_FLAGS = (
    "auto_run", *MODEL_FLAGS, "max_model_len", *LIMIT_FLAGS,
    "env", "isolation", "network", "allow_host", "ca_bundle", "mount", "no_pool",
)  # fmt: skip
TLS_HELP = (
    "put TLS in front (e.g. Caddy: 'reverse_proxy 127.0.0.1:8001', or nginx with "
    "proxy_buffering off for the event streams) and pass --behind-tls-proxy, or give "
    "--tls-cert and --tls-key"
)

users_app = typer.Typer(help="Users of oi serve: tokens (hashes only) and limits.")

UsersFileOpt = Annotated[
    Path | None,
    typer.Option("--users", help="Users file (default: ~/.config/oi/users.toml)."),
]


def default_users_file() -> Path:
    from orchestrator.paths import xdg_dir  # noqa: PLC0415

    return xdg_dir("XDG_CONFIG_HOME", ".config") / "oi" / "users.toml"


def default_workspaces() -> Path:
    from orchestrator.settings import default_data_dir  # noqa: PLC0415

    return default_data_dir() / "workspaces"


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``users`` and ``mcp`` to ``app``."""
    app.command("serve")(serve_command)
    app.command("mcp")(mcp_command)
    app.add_typer(users_app, name="users")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: bool, behind_proxy: bool) -> None:
    """Pure: a non-loopback address needs TLS (ours or a proxy's): tokens must not travel in
    clear text over a network."""
    if is_loopback(host) or tls or behind_proxy:
        return
    raise usage(f"--host {host} is reachable from the network and bearer tokens would travel "
                f"unencrypted: {TLS_HELP}")  # fmt: skip


def _users(users_file: Path | None, limits: Any) -> Any:
    from orchestrator.server.users import Users, from_env_token, load_users  # noqa: PLC0415

    token = os.environ.get("OI_SERVER_TOKEN")
    found = Users({})
    if token:
        found = from_env_token(token, limits)
    path = users_file or default_users_file()
    if users_file is not None or path.exists():
        found = Users({**found.by_name, **load_users(path, limits).by_name})
    if not len(found):
        raise usage(
            "oi serve needs users: set OI_SERVER_TOKEN for one user, or add users with "
            "'oi users add NAME' (a users file of token hashes)"
        )
    return found


@with_setting_flags(*SERVE_FLAGS)
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8001,
    workspaces: Annotated[
        Path | None,
        typer.Option(
            "--workspaces",
            help="Folder of each user's workdirs and records "
            "(default: ~/.local/share/oi/workspaces).",
        ),
    ] = None,
    users_file: UsersFileOpt = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key.")] = None,
    behind_tls_proxy: Annotated[
        bool, typer.Option("--behind-tls-proxy", help="A TLS proxy in front does the TLS.")
    ] = False,
    user_blocks: Annotated[
        int, typer.Option("--user-blocks", help="Blocks one user may run at once (default).")
    ] = 2,
    user_sessions: Annotated[
        int,
        typer.Option(
            "--user-sessions",
            help="Sessions one user may hold open; at the limit the idlest is closed (default).",
        ),
    ] = 20,
    max_upload: Annotated[
        str, typer.Option("--max-upload", help="Largest upload per file (default).")
    ] = "100m",
    no_mcp: Annotated[bool, typer.Option("--no-mcp", help="Do not serve MCP at /mcp.")] = False,
    *,
    flags: SettingFlags,
) -> None:
    """Serve oi over HTTP: sessions and approvals (API and web UI), an OpenAI-compatible
    endpoint at /v1 and MCP at /mcp, every request authenticated by a bearer token.

    Examples:  oi serve     oi serve --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    """
    from orchestrator.server.users import UserLimits  # noqa: PLC0415
    from orchestrator.units import parse_size  # noqa: PLC0415

    with errors():
        if bool(tls_cert) != bool(tls_key):
            raise usage("give both --tls-cert and --tls-key (or neither)")
        check_exposure(host, tls_cert is not None, behind_tls_proxy)
        try:
            limits = UserLimits(user_sessions, user_blocks, parse_size(max_upload))
        except ValueError as exc:
            raise usage(f"--max-upload: {exc}") from None
        users = _users(users_file, limits)
        loaded = load_flags(flags)
        root = (workspaces or default_workspaces()).absolute()
        _run_server(loaded, users, root, host, port, (tls_cert, tls_key), mcp=not no_mcp)


def _run_server(
    loaded: Any, users: Any, root: Path, host: str, port: int, tls: tuple[Any, Any], *, mcp: bool
) -> None:
    import uvicorn  # noqa: PLC0415

    from orchestrator.fsafe import private_dir  # noqa: PLC0415
    from orchestrator.sandbox.session_env import KEEP_DAYS  # noqa: PLC0415
    from orchestrator.server.app import create_app  # noqa: PLC0415
    from orchestrator.server.hub import Hub, sweep_user_envs  # noqa: PLC0415
    from orchestrator.server.mcp_tools import build_mcp, user_of  # noqa: PLC0415

    root.parent.mkdir(parents=True, exist_ok=True)
    private_dir(root)
    hub = Hub(loaded, root, docker_client=docker_client())
    swept = sweep_user_envs(root)
    if swept:
        say(f"removed {len(swept)} session environment(s) unused for {KEEP_DAYS:g} days")
    server_mcp = build_mcp(lambda ctx: hub.mcp_workspace(user_of(ctx))) if mcp else None
    app = create_app(hub, users, auto_run=loaded.settings.auto_run, mcp=server_mcp)
    scheme = "https" if tls[0] else "http"
    blocks = "run without asking (sandboxed)" if loaded.settings.auto_run else "wait for approval"
    say(
        f"serving on {scheme}://{host}:{port} for {len(users)} user(s); workspaces {root}; "
        f"blocks {blocks}"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls[0]) if tls[0] else None,
        ssl_keyfile=str(tls[1]) if tls[1] else None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name (a-z, 0-9, - and _).")],
    users_file: UsersFileOpt = None,
    max_sessions: Annotated[
        int | None,
        typer.Option("--max-sessions", help="Sessions this user may hold open (else the server's)"),
    ] = None,
    max_blocks: Annotated[
        int | None,
        typer.Option("--max-blocks", help="Blocks this user may run at once (else the server's)."),
    ] = None,
    max_upload: Annotated[
        str | None,
        typer.Option("--max-upload", help="Largest upload per file, e.g. 50m (else the server's)."),
    ] = None,
) -> None:
    """Add a user (or give them a new token): prints the token once; only its hash is kept.

    Example:  oi users add alice --max-sessions 5
    """
    from dataclasses import replace  # noqa: PLC0415

    from orchestrator.server.users import UserLimits, add_user  # noqa: PLC0415
    from orchestrator.units import parse_size  # noqa: PLC0415

    with errors():
        limits = UserLimits()
        if max_sessions is not None:
            limits = replace(limits, max_sessions=max_sessions)
        if max_blocks is not None:
            limits = replace(limits, max_concurrent_blocks=max_blocks)
        if max_upload is not None:
            limits = replace(limits, max_upload_bytes=parse_size(max_upload))
        path = users_file or default_users_file()
        token = add_user(path, name, limits)
        plain(f"user {name} in {path}; their token (shown only now, keep it secret):")
        typer.echo(token)


@users_app.command("list")
def users_list(users_file: UsersFileOpt = None) -> None:
    """The users of the users file, with their limits.

    Example:  oi users list
    """
    from orchestrator.server.users import load_users  # noqa: PLC0415

    with errors():
        for user in load_users(users_file or default_users_file()).by_name.values():
            lim = user.limits
            out(f"{user.name}  sessions {lim.max_sessions}  blocks {lim.max_concurrent_blocks}  "
                f"upload {lim.max_upload_bytes}")  # fmt: skip


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="User name.")], users_file: UsersFileOpt = None
) -> None:
    """Remove a user: their token stops working when the server restarts.

    Example:  oi users remove alice
    """
    from orchestrator.server.users import remove_user  # noqa: PLC0415

    with errors():
        found = remove_user(users_file or default_users_file(), name)
        plain(f"{'removed' if found else 'no user'} {name}")


@with_setting_flags(*LIMIT_FLAGS, *SANDBOX_FLAGS, "no_pool")
def mcp_command(*, flags: SettingFlags) -> None:
    """An MCP server over stdio: execute(language, code) in a fresh sandbox per call, and
    list_files / read_file / write_file in the workdir (--workdir, default: here).

    Example:  oi mcp --workdir ~/project   (the command an MCP client starts)
    """
    from orchestrator.sandbox.runner import Sandbox  # noqa: PLC0415
    from orchestrator.server.files import Workdir  # noqa: PLC0415
    from orchestrator.server.mcp_tools import McpWorkspace, build_mcp  # noqa: PLC0415

    with errors():
        loaded = load_flags(flags)
        with Sandbox.from_config(loaded.sandbox_config(), client=docker_client()) as sandbox:
            space = McpWorkspace(
                sandbox, Workdir(loaded.settings.workdir), loaded.settings.max_output
            )
            build_mcp(lambda _ctx: space).run("stdio")
