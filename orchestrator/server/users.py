"""Who may use ``oi serve``: bearer tokens, a users file holding only their hashes, limits.

Two sources: ``OI_SERVER_TOKEN`` (one user, named ``oi``: scripts and tests) and a users file
(TOML, for several people)::

    [users.alice]
    token_sha256 = "9f2c..."          # sha256 of the token; the token itself is never stored
    max_sessions = 10                 # sessions open at once
    max_concurrent_blocks = 1         # blocks running at once (others wait in line)
    max_upload_bytes = "100m"

Tokens are 256 random bits, so one sha256 is enough to store them (no password stretching is
needed for secrets nobody chose). Every comparison is constant-time and every user's hash is
compared, so timing tells nothing about which user is close.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.fsafe import read_owned, write_atomic
from orchestrator.units import parse_size

TOKEN_PREFIX = "oi_"  # noqa: S105 - a prefix that makes tokens recognisable, not a secret
ENV_USER = "oi"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # also a folder name: nothing to traverse
_HASH = re.compile(r"^[0-9a-f]{64}$")
_LIMIT_KEYS = ("max_sessions", "max_concurrent_blocks", "max_upload_bytes")


@dataclass(frozen=True)
class UserLimits:
    max_sessions: int = 20
    max_concurrent_blocks: int = 2
    max_upload_bytes: int = 100 << 20


@dataclass(frozen=True)
class User:
    name: str
    token_sha256: str
    limits: UserLimits = field(default_factory=UserLimits)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"user name {name!r} is not allowed: use 1-32 of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


class Users:
    """The users a server knows, by name; ``authenticate`` maps a bearer token to one."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self.by_name = dict(users)

    def __len__(self) -> int:
        return len(self.by_name)

    def authenticate(self, token: str | None) -> User | None:
        if not token:
            return None
        digest = token_hash(token)
        found: User | None = None
        for user in self.by_name.values():  # all of them: no early exit to time
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found

    def with_limits(self, defaults: UserLimits) -> Users:
        """Users from a source without limits of their own get ``defaults``."""
        return Users({n: replace(u, limits=defaults) for n, u in self.by_name.items()})


def _limits(values: Mapping[str, Any], where: str, defaults: UserLimits) -> UserLimits:
    limits = defaults
    for key in _LIMIT_KEYS:
        if key not in values:
            continue
        raw = values[key]
        try:
            number = parse_size(raw) if key == "max_upload_bytes" else int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} = {raw!r} is not a number") from None
        if number < 1:
            raise ConfigError(f"{where}: {key} must be at least 1")
        limits = replace(limits, **{key: number})
    return limits


def parse_users(text: str, where: str, defaults: UserLimits | None = None) -> Users:
    """Pure: the users of a users file's text (``where`` names it in errors)."""
    defaults = defaults or UserLimits()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}; fix it there") from None
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [users] must be a table of [users.NAME] entries")
    users: dict[str, User] = {}
    for name, values in table.items():
        here = f"{where}: users.{name}"
        check_name(name)
        if not isinstance(values, dict):
            raise ConfigError(f"{here} must be a table")
        unknown = set(values) - {"token_sha256", *_LIMIT_KEYS}
        if unknown:
            raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
        digest = str(values.get("token_sha256", "")).lower()
        if not _HASH.match(digest):
            raise ConfigError(
                f"{here}: token_sha256 must be 64 hex digits (a token's sha256, never the "
                "token); 'oi users add NAME' makes one"
            )
        users[name] = User(name, digest, _limits(values, here, defaults))
    return Users(users)


def load_users(path: Path, defaults: UserLimits | None = None) -> Users:
    """The users file, read only if nobody but us (or root) could have written it."""
    try:
        content = read_owned(path, owners=frozenset({os.geteuid(), 0}), what="users file")
    except FileNotFoundError:
        raise ConfigError(f"no users file at {path}; make one with 'oi users add NAME'") from None
    return parse_users(content.decode("utf-8", "replace"), str(path), defaults)


def render_users(users: Users) -> str:
    """Pure: a users file's text (hashes and limits that differ from the defaults)."""
    lines = ["# oi serve users: token hashes only ('oi users add NAME' prints a token once)"]
    defaults = UserLimits()
    for user in users.by_name.values():
        lines += ["", f"[users.{user.name}]", f'token_sha256 = "{user.token_sha256}"']
        for key in _LIMIT_KEYS:
            value = getattr(user.limits, key)
            if value != getattr(defaults, key):
                lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def add_user(path: Path, name: str, limits: UserLimits | None = None) -> str:
    """Add (or give a new token to) ``name`` in the users file; the new token, shown once."""
    check_name(name)
    users = load_users(path).by_name if path.exists() else {}
    old = users.get(name)
    token = new_token()
    users[name] = User(name, token_hash(token), limits or (old.limits if old else UserLimits()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, render_users(Users(users)).encode(), 0o600)
    return token


def remove_user(path: Path, name: str) -> bool:
    users = load_users(path).by_name
    if users.pop(name, None) is None:
        return False
    write_atomic(path, render_users(Users(users)).encode(), 0o600)
    return True


def from_env_token(token: str, limits: UserLimits) -> Users:
    """``OI_SERVER_TOKEN``: one user, ``oi``."""
    if len(token) < 16:
        raise ConfigError(
            "OI_SERVER_TOKEN is shorter than 16 characters: use a long random one "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return Users({ENV_USER: User(ENV_USER, token_hash(token), limits)})
