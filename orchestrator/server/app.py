"""The ``oi serve`` application: authentication, error mapping, headers, and the parts
(native API, OpenAI-compatible endpoint, MCP over streamable HTTP, the web UI) mounted on it.

Every route that reaches a session, a file, a model or a sandbox needs ``Authorization:
Bearer TOKEN``; without it, or with a token nobody has, the answer is 401, given by ``Gate``
before any body is read (an unknown client cannot make the server buffer anything). Only the
web UI's
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
from orchestrator.errors import ConfigError, OiError, PolicyError, RequestError, TooLargeError
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
PUBLIC_PATHS = frozenset({"/", "/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
MAX_BODY = 4 << 20  # a message, an approval with edited code, a chat completion request


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
        user = request.scope.get("oi.user")  # set by Gate; checked again, to stay safe alone
        if not isinstance(user, User) or user is not users.by_name.get(user.name):
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


class Gate:
    """Authenticates every request but the public files *before* anything reads its body, and
    bounds the body: an upload to the user's ``max_upload_bytes``, anything else to
    ``MAX_BODY``. The user is put in ``scope["oi.user"]`` (the MCP app reads it there)."""

    def __init__(self, app: ASGIApp, users: Users) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        user = self.users.authenticate(bearer(headers.get("authorization")))
        if user is None:
            await error_response(AuthError(UNAUTHORIZED))(scope, receive, send)
            return
        scope["oi.user"] = user
        upload = scope["method"] == "PUT" and scope["path"].endswith("/files")
        # an upload's own route counts exactly and answers 413; this is the backstop
        limit = user.limits.max_upload_bytes + (1 << 16) if upload else MAX_BODY
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            too_large = TooLargeError(f"the request body is larger than {limit} bytes")
            await error_response(too_large)(scope, receive, send)
            return
        await self.app(scope, _bounded(receive, limit), send)


def _bounded(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:  # a body without a length that keeps coming: cut it off
                return {"type": "http.disconnect"}
        return message

    return bounded


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/ui/")


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
    mcp_app = None
    if mcp is not None:
        from mcp.server.transport_security import TransportSecuritySettings  # noqa: PLC0415

        # Its Host check guards servers that trust whoever reaches them (DNS rebinding); every
        # request here carries a bearer token instead, and a proxy in front has its own name.
        mcp_app = mcp.streamable_http_app(
            streamable_http_path="/",
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
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
        app.mount("/mcp", mcp_app)
    return SecurityHeaders(Gate(app, users))
