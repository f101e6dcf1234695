"""An OpenAI-compatible endpoint: oi as a "model" for Open WebUI or any OpenAI client.

``GET /v1/models`` lists one model, ``oi``. ``POST /v1/chat/completions`` (streaming or not)
sends the conversation's last user message to an oi session and answers with the model's
text, each code block and what it printed, as markdown (``MarkdownReply``, pure).

A conversation keeps its session (and workdir) across requests when the client names it: the
``X-Oi-Conversation`` header, else the request's ``user`` field. Without either, each request
gets a new session. Blocks run without a person only if the server was started with
``--auto-run`` (each still in its sandbox, under the policy); otherwise the reply ends with the
proposed code and where to approve it (the web UI, or ``POST /api/sessions/ID/approval``).
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, some of
# them local (the user dependency).

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import NotFoundError, RequestError
from orchestrator.server.api import sse_response
from orchestrator.server.hub import Hub, LiveSession
from orchestrator.server.turns import Turn
from orchestrator.server.users import User

MODEL_ID = "oi"
_KEY = re.compile(r"^[\w.@:-]{1,128}$")


def fence(body: str, info: str = "") -> str:
    """A code fence that the body cannot close (longer than any backtick run in it)."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"\n\n{ticks}{info}\n{body.rstrip(chr(10))}\n{ticks}\n\n"


class MarkdownReply:
    """Pure: turn events (the JSON of ``oi run --json``) into the markdown of a reply."""

    def __init__(self, approve_hint: Callable[[str], str]) -> None:
        self.approve_hint = approve_hint  # sha256 -> where and how to approve
        self.waiting = False  # a block waits for a person: the reply ends here

    def feed(self, event: dict[str, Any]) -> str:
        kind = event.get("event")
        if kind == "model_text":
            return str(event["text"])
        if kind == "code_proposed":
            shown = (
                "" if event.get("source") == "markdown" else fence(event["code"], event["language"])
            )
            if event.get("awaits_approval"):
                self.waiting = True
                return shown + self.approve_hint(str(event["sha256"]))
            return shown
        if kind == "decision" and event.get("decision") == "declined":
            return f"\n*block {event['index']} was not run: {event.get('reason') or 'declined'}*\n"
        if kind == "result":
            return fence(str(event["for_model"]), "text")
        if kind == "notice":
            return f"\n\n> oi: {event['message']}\n\n"
        if kind == "error":
            return f"\n\n**oi error:** {event['message']}\n"
        if kind == "model_restarted":
            return "\n\n*(the model's reply was cut off and is asked for again)*\n\n"
        return ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=1000)
    stream: bool = False
    user: str | None = None


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):  # parts: keep the text ones
            content = "\n".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if isinstance(content, str) and content.strip():
            return content
    raise RequestError("the conversation has no user message with text")


def _chunk(reply_id: str, created: int, delta: dict[str, Any], finish: str | None) -> str:
    payload = {
        "id": reply_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


async def _pieces(turn: Turn, reply: MarkdownReply) -> AsyncIterator[str]:
    """Markdown pieces of a turn, until it ends or a block waits for a person. A client that
    goes away before that stops the turn."""
    subscriber = turn.subscribe(asyncio.get_running_loop())
    complete = False
    try:
        while True:
            line = await subscriber.queue.get()
            if line is None:
                complete = True
                return
            subscriber.taken(line)
            piece = reply.feed(json.loads(line))
            if piece:
                yield piece
            if reply.waiting:
                complete = True
                return
    finally:
        turn.unsubscribe(subscriber)
        if not complete and not turn.done.is_set():
            turn.stop("the client disconnected")


def build_openai_router(hub: Hub, current_user: Any, *, auto_run: bool) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    UserDep = Annotated[User, Depends(current_user)]
    conversations: dict[tuple[str, str], str] = {}

    def session_for(user: User, key: str | None) -> LiveSession:
        if key is not None:
            if not _KEY.match(key):
                raise RequestError("conversation key: 1-128 letters, digits and . @ : _ -")
            known = conversations.get((user.name, key))
            if known is not None:
                try:
                    return hub.get(user, known)
                except NotFoundError:  # deleted meanwhile: the conversation starts anew
                    conversations.pop((user.name, key), None)
        live = hub.create(user)
        if key is not None:
            conversations[(user.name, key)] = live.id
        return live

    @router.get("/models")
    def models(_user: UserDep) -> dict[str, Any]:
        """One model, ``oi``: a session whose code runs sandboxed."""
        return {
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "oi"}],
        }

    @router.post("/chat/completions", response_model=None)
    async def completions(
        user: UserDep,
        body: ChatRequest,
        x_oi_conversation: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse | dict[str, Any]:
        """Run the last user message in the conversation's oi session; the answer is markdown.
        Name the conversation (``X-Oi-Conversation`` or ``user``) to keep its workdir."""
        text = last_user_text(body.messages)
        live = await asyncio.to_thread(session_for, user, x_oi_conversation or body.user)

        def hint(sha256: str, lead: str = "This block waits") -> str:
            return (
                f"\n\n**{lead} for your approval** (oi serve runs nothing without "
                f"it): open the web UI, session `{live.id}`, or POST "
                f'/api/sessions/{live.id}/approval {{"action": "approve", "sha256": "{sha256}"}}.\n'
            )

        waiting = live.turn.pending if live.turn is not None else None
        if waiting is not None:  # say so again, rather than a 409 an OpenAI client cannot use
            pieces = _say(hint(waiting.sha256, "A block of this conversation still waits"))
        else:
            pieces = _pieces(live.start_turn(text), MarkdownReply(hint))
        reply_id = "chatcmpl-oi-" + uuid.uuid4().hex[:16]
        created = int(time.time())
        headers = {"X-Oi-Session": live.id}
        if body.stream:
            return _stream(pieces, reply_id, created, headers)
        content = "".join([piece async for piece in pieces])
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "oi_session": live.id,
        }

    _ = auto_run  # the session's own auto_run setting decides; kept for symmetry of routers
    return router


async def _say(text: str) -> AsyncIterator[str]:
    yield text


def _stream(
    pieces: AsyncIterator[str], reply_id: str, created: int, headers: dict[str, str]
) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        yield _chunk(reply_id, created, {"role": "assistant", "content": ""}, None)
        async for piece in pieces:
            yield _chunk(reply_id, created, {"content": piece}, None)
        yield _chunk(reply_id, created, {}, "stop")
        yield "data: [DONE]\n\n"

    response = sse_response(body())
    response.headers.update(headers)
    return response
