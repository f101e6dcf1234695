"""The native HTTP API of ``oi serve`` (FastAPI routes; OpenAPI page at ``/docs``).

A thin adapter over ``Hub`` and ``Turn``: every route takes the user the bearer token names
(``app.current_user``) and reaches only that user's sessions and files.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, some of
# them local (the user dependency).

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from orchestrator.approval import Approval
from orchestrator.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    OiError,
    RequestError,
    TooLargeError,
)
from orchestrator.server.files import Workdir, check_name
from orchestrator.server.hub import Hub, LiveSession
from orchestrator.server.turns import Turn
from orchestrator.server.users import User
from orchestrator.transcript import scan_records
from orchestrator.vision import MAX_FILE_BYTES, SessionImages, image_size, image_type

MAX_MESSAGE_CHARS = 100_000
MAX_MESSAGE_IMAGES = 8
NO_VISION = (
    "images are not sent to the model in this session: the server runs without --vision "
    "(or the model server refused images); the file stays in the workdir, where a block can "
    "read it. To send images, serve a vision model and start oi serve with --vision"
)
KEEPALIVE_S = 15.0
INLINE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}
# A file from a block is never a page of ours: no script, no plugin, no frame, its own origin.
FILE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


class NewSession(BaseModel):
    title: str = Field("", max_length=200)


class Message(BaseModel):
    """``images`` names PNG, JPEG or WebP files of the workdir to send with this message to
    a vision model (the server's ``--vision``), as ``oi run --image`` does."""

    text: str = Field(..., min_length=1, max_length=MAX_MESSAGE_CHARS)
    images: list[str] = Field(default_factory=list, max_length=MAX_MESSAGE_IMAGES)


class ApprovalBody(BaseModel):
    """``approve`` and ``edit`` must name the sha256 of the code the client showed; ``edit``
    proposes ``code`` instead, which is shown (a new ``code_proposed``) and approved again."""

    action: Literal["approve", "deny", "edit"]
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    code: str | None = Field(None, max_length=1_000_000)
    reason: str = Field("", max_length=500)


def sse_line(line: str) -> str:
    return f"data: {line}\n\n"


async def stream_turn(turn: Turn, *, stop_on_disconnect: bool) -> AsyncIterator[str]:
    """A turn's events as SSE; with ``stop_on_disconnect``, a client that goes away stops its
    turn (the running block is killed and its container removed)."""
    subscriber = turn.subscribe(asyncio.get_running_loop())
    try:
        while True:
            try:
                line = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
            except TimeoutError:  # a long model wait or a quiet block: proxies keep the stream
                yield ": keep-alive\n\n"
                continue
            if line is None:
                return
            subscriber.taken(line)
            yield sse_line(line)
    finally:
        turn.unsubscribe(subscriber)
        if stop_on_disconnect and not turn.done.is_set():
            turn.stop("the client disconnected")


def sse_response(body: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


def build_router(hub: Hub, current_user: Any, *, auto_run: bool) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["sessions"])
    UserDep = Annotated[User, Depends(current_user)]

    def session_of(user: User, session_id: str) -> LiveSession:
        return hub.get(user, session_id)

    @router.get("/whoami")
    def whoami(user: UserDep) -> dict[str, Any]:
        """The signed-in user, their limits, whether blocks run without approval and whether
        images go to the model (``--vision``)."""
        limits = user.limits
        return {
            "user": user.name,
            "auto_run": auto_run,
            "vision": hub.loaded.settings.vision,
            "limits": {
                "max_sessions": limits.max_sessions,
                "max_concurrent_blocks": limits.max_concurrent_blocks,
                "max_upload_bytes": limits.max_upload_bytes,
            },
        }

    @router.post("/sessions", status_code=201)
    def create_session(user: UserDep, body: NewSession | None = None) -> dict[str, Any]:
        """A new session with a fresh, empty workdir of its own."""
        return hub.create(user, body.title if body else "").summary()

    @router.get("/sessions")
    def list_sessions(user: UserDep) -> list[dict[str, Any]]:
        """Your sessions, newest first (open ones and recorded ones)."""
        return hub.list(user)

    @router.get("/sessions/{session_id}")
    def get_session(user: UserDep, session_id: str) -> dict[str, Any]:
        """One session (resumed from its record if the server does not hold it open)."""
        live = session_of(user, session_id)
        turn = live.turn
        vision = live.opened.session.images.enabled
        return {**live.summary(), "turn": turn.state() if turn else None, "vision": vision}

    @router.post("/sessions/{session_id}/resume")
    def resume_session(user: UserDep, session_id: str) -> dict[str, Any]:
        """Open a recorded session again: its history goes to the model with the next message."""
        return session_of(user, session_id).summary()

    @router.delete("/sessions/{session_id}", status_code=204)
    def delete_session(user: UserDep, session_id: str) -> Response:
        """Stop it, remove its record and its workdir."""
        hub.delete(user, session_id)
        return Response(status_code=204)

    @router.post("/sessions/{session_id}/messages")
    def send_message(user: UserDep, session_id: str, body: Message) -> StreamingResponse:
        """Send a message; the answer is the turn's events as Server-Sent Events (``data:``
        lines holding the JSON of ``oi run --json``), ending with an ``end`` event. Closing
        the stream stops the turn: a running block is killed and its container removed.
        ``images`` (workdir files) go with the message to a vision model; a name that leaves
        the workdir, a link, or a file that is not a PNG, JPEG or WebP image is refused."""
        live = session_of(user, session_id)
        if not body.images:
            turn = live.start_turn(body.text)
        else:
            images = live.opened.session.images
            try:
                queue_images(live, body.images)
                turn = live.start_turn(body.text)
            except OiError:
                images.user_message("")  # nothing queued stays for a later message
                raise
        return sse_response(stream_turn(turn, stop_on_disconnect=True))

    @router.get("/sessions/{session_id}/events")
    def follow_turn(user: UserDep, session_id: str) -> StreamingResponse:
        """The current (or last) turn's events so far, then live; leaving does not stop it."""
        turn = session_of(user, session_id).turn
        if turn is None:
            raise NotFoundError("this session has no turn yet; send a message")
        return sse_response(stream_turn(turn, stop_on_disconnect=False))

    @router.post("/sessions/{session_id}/approval")
    def approve(user: UserDep, session_id: str, body: ApprovalBody) -> dict[str, Any]:
        """Answer the block waiting: approve or edit name the sha256 of the code you showed
        (409 if it is not the code waiting); deny needs none."""
        turn = session_of(user, session_id).turn
        if turn is None:
            raise NotFoundError("nothing waits for approval in this session")
        if body.action == "edit" and body.code is None:
            raise RequestError("edit needs the edited code")
        kind = {"approve": "run", "deny": "decline", "edit": "edit"}[body.action]
        turn.answer(Approval(kind, code=body.code, reason=body.reason, sha256=body.sha256))  # type: ignore[arg-type]
        return {"ok": True}

    @router.post("/sessions/{session_id}/stop")
    def stop(user: UserDep, session_id: str) -> dict[str, Any]:
        """Stop the turn: the running block is killed and its container removed."""
        turn = session_of(user, session_id).turn
        if turn is not None:
            turn.stop("stopped by the user")
        return {"ok": True}

    @router.get("/sessions/{session_id}/record")
    def record(user: UserDep, session_id: str) -> list[dict[str, Any]]:
        """The session's record: every JSONL entry (messages, code with sha256, decisions,
        results)."""
        return scan_records(hub.record_path(user, session_id)).records

    add_file_routes(router, hub, UserDep)
    return router


def add_file_routes(router: APIRouter, hub: Hub, UserDep: Any) -> None:
    def workdir(user: User, session_id: str) -> Workdir:
        return Workdir(hub.get(user, session_id).workdir)

    @router.get("/sessions/{session_id}/files", tags=["files"])
    def list_files(user: UserDep, session_id: str) -> list[dict[str, Any]]:
        """Regular files of the workdir (links are not followed)."""
        return [e.__dict__ for e in workdir(user, session_id).list()]

    @router.put("/sessions/{session_id}/files", tags=["files"], status_code=201)
    async def upload(
        user: UserDep, session_id: str, request: Request, path: Annotated[str, Query()]
    ) -> dict[str, Any]:
        """Upload the request body as ``path`` in the workdir (at most your max_upload_bytes)."""
        limit = user.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise TooLargeError(f"upload is larger than your limit of {limit} bytes")
        live = await asyncio.to_thread(hub.get, user, session_id)
        target = Workdir(live.workdir)
        room = live.opened.session.settings.workdir_max_bytes  # the policy capped it
        data = bytearray()
        async for chunk in request.stream():  # the body, bounded as it arrives
            data += chunk
            if len(data) > limit:
                raise TooLargeError(f"upload is larger than your limit of {limit} bytes")
        entry = await asyncio.to_thread(target.write, path, iter([bytes(data)]), limit, room)
        return entry.__dict__

    @router.get("/sessions/{session_id}/files/content", tags=["files"])
    def download(
        user: UserDep,
        session_id: str,
        path: Annotated[str, Query()],
        inline: bool = False,
    ) -> StreamingResponse:
        """A file of the workdir; ``inline`` serves PNG, JPEG and SVG as images (SVG under a
        CSP that runs no script), everything else is a download."""
        size, chunks = workdir(user, session_id).read_chunks(path)
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        media = INLINE_TYPES.get(suffix) if inline else None
        name = quote(path.rsplit("/", 1)[-1])
        disposition = "inline" if media else "attachment"
        headers = {
            "Content-Length": str(size),
            "Content-Security-Policy": FILE_CSP,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{name}",
        }
        return StreamingResponse(
            _iterate(chunks), media_type=media or "application/octet-stream", headers=headers
        )


def _iterate(chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield from chunks


def queue_images(live: LiveSession, names: list[str]) -> None:
    """Queue workdir images for the session's next message, all or none (``RequestError``
    saying which and why). Each is read as a download is (inside the workdir, no link
    followed, a regular file), with no other hard link, and handed to
    ``SessionImages.queue`` as a private copy, so what is sent is exactly what was checked."""
    images = live.opened.session.images
    if not images.enabled:
        raise RequestError(NO_VISION)
    if live.turn is not None and not live.turn.done.is_set():
        raise ConflictError("this session is still working on a message; wait for its end")
    workdir = Workdir(live.workdir)
    checked = [(name, _read_image(workdir, name)) for name in dict.fromkeys(names)]
    for name, data in checked:
        _queue_copy(images, name, data)


def _read_image(workdir: Workdir, name: str) -> bytes:
    check_name(name)
    if image_type(name) is None:
        raise RequestError(
            f"{name!r} is not a .png, .jpg, .jpeg or .webp file; only those go to the model"
        )
    data = workdir.read(name, MAX_FILE_BYTES, one_link=True)
    if image_size(data) is None:
        raise RequestError(
            f"{name!r} is not a PNG, JPEG or WebP image (its content says otherwise)"
        )
    return data


def _queue_copy(images: SessionImages, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="oi-image-") as folder:
        copy = Path(folder) / name.rsplit("/", 1)[-1]
        copy.write_bytes(data)
        try:
            images.queue(copy)
        except ConfigError as exc:
            reason = str(exc).removeprefix(f"image {copy}: ")
            raise RequestError(f"{name!r} is not sent: {reason}") from None
