"""The ``oi serve`` application: authentication, error mapping, headers, and the parts
(native API, OpenAI-compatible endpoint, MCP over streamable HTTP, the web UI) mounted on it.

Every route that reaches a session, a file, a model or a sandbox needs ``Authorization:
Bearer TOKEN``; without it, or with a token nobody has, the answer is 401. Only the web UI's
own files (``/``, ``/ui/...``), the OpenAPI description (``/openapi.json``, ``/docs``) and
``/healthz`` are public: they hold nothing of any user.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orchestrator import __version__
from orchestrator.errors import ConfigError, OiError, PolicyError, RequestError
from orchestrator.server.api import build_router
from orchestrator.server.hub import Hub
from orchestrator.server.openai_api import build_openai_router
from orchestrator.server.users import User, Users

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNAUTHORIZED = "missing or unknown bearer token: send 'Authorization: Bearer TOKEN'"
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
UI_FILES = {"app.js": "text/javascript", "app.css": "text/css"}


class AuthError(RequestError):
    status = 401


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def make_current_user(users: Users) -> Callable[[Request], User]:
    def current_user(request: Request) -> User:
        user = users.authenticate(bearer(request.headers.get("authorization")))
        if user is None:
            raise AuthError(UNAUTHORIZED)
        return user

    return current_user


def _status_of(exc: OiError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, ConfigError | PolicyError):
        return 400
    return 503  # the model endpoint or the engine failed us


def error_response(exc: OiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc), headers=headers)


class SecurityHeaders:
    """Pure ASGI (a ``BaseHTTPMiddleware`` would hide a streaming client's disconnect)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ):
                    if name not in names:
                        headers.append((name, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequireUser:
    """Authenticates an ASGI sub-app (MCP): 401 without a known token, else the user is
    put in ``scope["oi.user"]`` for the app's handlers."""

    def __init__(self, app: ASGIApp, users: Users) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            user = self.users.authenticate(bearer(headers.get("authorization")))
            if user is None:
                await error_response(AuthError(UNAUTHORIZED))(scope, receive, send)
                return
            scope["oi.user"] = user
        await self.app(scope, receive, send)


def _ui_file(name: str) -> bytes:
    return (resources.files("orchestrator.server") / "web" / name).read_bytes()


def add_ui_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(
            _ui_file("index.html"),
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": UI_CSP},
        )

    @app.get("/ui/{name}", include_in_schema=False)
    def ui_file(name: str) -> Response:
        if name not in UI_FILES:
            return Response(status_code=404)
        return Response(_ui_file(name), media_type=UI_FILES[name])

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}


def create_app(
    hub: Hub,
    users: Users,
    *,
    auto_run: bool,
    mcp: Any = None,
) -> Any:
    """The ASGI application. ``mcp`` (an ``MCPServer``) is served at ``/mcp``."""
    mcp_app = (
        mcp.streamable_http_app(streamable_http_path="/", stateless_http=True) if mcp else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:
                await stack.enter_async_context(mcp.session_manager.run())
            try:
                yield
            finally:
                hub.close()

    app = FastAPI(
        title="oi serve",
        version=__version__,
        description="Sessions whose code runs in throwaway sandboxes, an OpenAI-compatible "
        "endpoint and MCP. Every route but the UI's files needs 'Authorization: Bearer TOKEN'.",
        lifespan=lifespan,
    )

    @app.exception_handler(OiError)
    async def oi_error(_request: Request, exc: OiError) -> JSONResponse:
        return error_response(exc)

    current_user = make_current_user(users)
    app.include_router(build_router(hub, current_user, auto_run=auto_run))
    app.include_router(build_openai_router(hub, current_user, auto_run=auto_run))
    add_ui_routes(app)
    if mcp_app is not None:
        app.mount("/mcp", RequireUser(mcp_app, users))
    return SecurityHeaders(app)
