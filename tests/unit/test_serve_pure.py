"""The pure parts of oi serve: file names, users and tokens, markdown replies, exposure."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from orchestrator.cli_serve import check_exposure
from orchestrator.errors import ConfigError, NotFoundError, RequestError, TooLargeError
from orchestrator.server.files import Workdir, check_name
from orchestrator.server.openai_api import MarkdownReply, fence, last_user_text
from orchestrator.server.turns import MAX_PENDING_BYTES, Subscriber
from orchestrator.server.users import (
    UserLimits,
    Users,
    from_env_token,
    new_token,
    parse_users,
    render_users,
    token_hash,
)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a.txt", ("a.txt",)),
        ("sub/dir/file.csv", ("sub", "dir", "file.csv")),
        ("naïve ünïcode.png", ("naïve ünïcode.png",)),
        (".hidden", (".hidden",)),
        ("..x", ("..x",)),
    ],
)
def test_names_inside_the_workdir(name: str, parts: tuple[str, ...]) -> None:
    assert check_name(name) == parts


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/", ".", "..", "a\\b", "x\x00",
     "x\ny", "x\x1b[2J", "x\x7f", "\ud800", "a" * 1025],
)  # fmt: skip
def test_names_that_could_leave_or_lie_are_refused(name: str) -> None:
    with pytest.raises(RequestError):
        check_name(name)


def test_users_file_round_trip_and_authentication() -> None:
    token = new_token()
    assert token.startswith("oi_") and len(token) > 40
    text = f'[users.alice]\ntoken_sha256 = "{token_hash(token)}"\nmax_concurrent_blocks = 1\n'
    users = parse_users(text, "users.toml")
    assert users.authenticate(token).name == "alice"  # type: ignore[union-attr]
    assert users.authenticate(token + "x") is None
    assert users.authenticate("") is None and users.authenticate(None) is None
    assert users.by_name["alice"].limits.max_concurrent_blocks == 1
    again = parse_users(render_users(users), "again")
    assert again.by_name == users.by_name
    assert token not in render_users(users)  # only the hash is ever written


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[users."../x"]\ntoken_sha256 = "' + "a" * 64 + '"', "not allowed"),
        ("[users.bob]\ntoken_sha256 = 'secret-token'", "64 hex digits"),
        ('[users.bob]\ntoken_sha256 = "' + "a" * 64 + '"\nmax_sessions = 0', "at least 1"),
        ('[users.bob]\ntoken_sha256 = "' + "a" * 64 + '"\nadmin = true', "unknown key"),
        ("users = 3", "table"),
        ("[users", "not valid TOML"),
    ],
)
def test_bad_users_files_say_what_and_where(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="user") as info:
        parse_users(text, "users.toml")
    assert fragment in str(info.value)


def test_env_token_must_be_long() -> None:
    with pytest.raises(ConfigError, match="shorter than 16"):
        from_env_token("short", UserLimits())
    assert from_env_token("x" * 20, UserLimits()).authenticate("x" * 20) is not None
    assert len(Users({})) == 0


@pytest.mark.parametrize(
    ("host", "tls", "proxy", "allowed"),
    [
        ("127.0.0.1", False, False, True),
        ("localhost", False, False, True),
        ("::1", False, False, True),
        ("0.0.0.0", False, False, False),
        ("192.0.2.10", False, False, False),
        ("0.0.0.0", True, False, True),
        ("0.0.0.0", False, True, True),
    ],
)
def test_a_network_address_needs_tls(host: str, tls: bool, proxy: bool, allowed: bool) -> None:
    if allowed:
        check_exposure(host, tls, proxy)
    else:
        with pytest.raises(ConfigError, match="TLS"):
            check_exposure(host, tls, proxy)


def test_fence_cannot_be_closed_by_its_body() -> None:
    body = "print('```')\n````"
    fenced = fence(body, "python")
    assert "\n`````python\n" in fenced and fenced.rstrip().endswith("`````")


def hint(sha: str) -> str:
    return f"[approve {sha}]"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"event": "model_text", "text": "Hi <b>"}, "Hi <b>"),
        (
            {"event": "code_proposed", "source": "tool_call", "code": "print(1)", "language": "python",
             "awaits_approval": False, "sha256": "s"},
            "\n\n```python\nprint(1)\n```\n\n",
        ),
        (
            {"event": "code_proposed", "source": "markdown", "code": "x", "language": "python",
             "awaits_approval": True, "sha256": "abc"},
            "[approve abc]",
        ),
        ({"event": "result", "for_model": "exit code 0\nstdout:\n1"}, "\n\n```text\nexit code 0\nstdout:\n1\n```\n\n"),
        ({"event": "decision", "decision": "run", "index": 1}, ""),
        ({"event": "decision", "decision": "declined", "index": 2, "reason": ""}, "\n*block 2 was not run: declined*\n"),
        ({"event": "usage"}, ""),
        ({"event": "error", "message": "boom"}, "\n\n**oi error:** boom\n"),
    ],
)  # fmt: skip
def test_markdown_reply(event: dict[str, object], expected: str) -> None:
    assert MarkdownReply(hint).feed(event) == expected


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "a"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]}],
            "x",
        ),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "u"),
    ],
)
def test_last_user_text(messages: list[dict[str, object]], text: str) -> None:
    assert last_user_text(messages) == text


def test_last_user_text_needs_one() -> None:
    with pytest.raises(RequestError):
        last_user_text([{"role": "assistant", "content": "x"}])


def test_a_slow_subscriber_drops_output_not_decisions() -> None:
    loop = asyncio.new_event_loop()
    try:
        sub = Subscriber(loop, asyncio.Queue())
        line = json.dumps({"event": "output", "text": "y" * 65536})
        for _ in range(200):  # 12.5 MiB of output nobody reads
            sub.push(line, droppable=True)
        sub.push('{"event": "result"}')
        loop.run_until_complete(asyncio.sleep(0))
        queued = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    finally:
        loop.close()
    assert sum(len(q or "") for q in queued) < MAX_PENDING_BYTES + 2 * len(line)
    assert "were not sent" in str(queued[-2]) and queued[-1] == '{"event": "result"}'


def test_uploads_stay_within_the_workdir_limit(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 12288)
    used = workdir.used_bytes()
    assert used >= 12288
    with pytest.raises(TooLargeError, match="may take"):
        workdir.write("more", iter([b"y" * 8192]), 1 << 20, room=used + 4096)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]  # no partial file
    workdir.write("small", iter([b"y" * 1000]), 1 << 20, room=used + 4096)
    with pytest.raises(TooLargeError, match="already holds"):
        workdir.write("none", iter([b""]), 1 << 20, room=used)


def test_a_fifo_in_the_workdir_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotFoundError, match="FIFO"):
        Workdir(tmp_path).open("pipe")
    assert [e.name for e in Workdir(tmp_path).list()] == []
