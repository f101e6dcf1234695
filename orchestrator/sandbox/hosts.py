"""Host names people allow through the egress proxy: normalised and checked. Pure.

An allowlist entry is a host name (HTTP to port 80 and HTTPS to port 443 of that host, through
the proxy's Squid) or ``HOST:PORT`` (plain TCP to exactly that port of that host, for SMTP, a
database and the like: the proxy forwards it, see ``network.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from orchestrator.errors import ConfigError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")

PROXY_PORT = 3128
"""The egress proxy's own port (Squid): never a TCP forward."""
PROXY_ALIAS = "oi-proxy"
"""The proxy's name on a session's allowlist network."""
_NOT_FORWARDED = ("localhost", PROXY_ALIAS)


def normalize_host(text: str) -> str:
    """A lower-case host name from user input; IP literals, ports and paths are refused."""
    host = text.strip().lower().rstrip(".")
    if "://" in host:
        host = urlparse(host).hostname or ""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        raise ConfigError(
            f"--allow-host {text!r}: IP addresses are not allowed, name the host "
            "(the proxy refuses IP-literal targets)"
        )
    if not _HOSTNAME.match(host):
        raise ConfigError(f"--allow-host {text!r} is not a host name (e.g. example.org)")
    return host


@dataclass(frozen=True, order=True)
class TcpTarget:
    """A host and port a sandbox may open plain TCP connections to, through the proxy."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def normalize_entry(text: str) -> str:
    """An allowlist entry from user input: ``host`` or ``host:port`` (see the module docstring).

    URLs keep only their host (``https://example.org:8443/`` is ``example.org``: HTTPS goes
    through the proxy); IP literals are refused, with or without a port.
    """
    stripped = text.strip()
    if stripped.startswith("["):  # [IPv6]:port: refused as the IP literal it names
        return normalize_host(stripped.partition("]")[0] + "]")
    host, colon, port = stripped.rpartition(":")
    if "://" in stripped or not colon or ":" in host:
        return normalize_host(text)  # a URL, a plain name, or an IPv6 literal (refused)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--allow-host {text!r}: the port must be a number from 1 to 65535")
    name = normalize_host(host)
    if int(port) == PROXY_PORT:
        raise ConfigError(
            f"--allow-host {text!r}: port {PROXY_PORT} is the egress proxy's own; "
            "it cannot be forwarded"
        )
    if name in _NOT_FORWARDED or name.endswith(".localhost"):
        raise ConfigError(
            f"--allow-host {text!r}: {name} names the sandbox or its proxy, not a host "
            "outside; name the server"
        )
    return f"{name}:{int(port)}"


def split_entries(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[TcpTarget, ...]]:
    """Normalised entries -> (HTTP/HTTPS host names, TCP targets), each sorted and unique.

    Two TCP targets may not share a port: inside the sandbox each name resolves to the proxy,
    which tells them apart only by the port a connection arrives on.
    """
    hosts: set[str] = set()
    targets: set[TcpTarget] = set()
    for entry in entries:
        normal = normalize_entry(entry)
        name, colon, port = normal.rpartition(":")
        if colon:
            targets.add(TcpTarget(name, int(port)))
        else:
            hosts.add(normal)
    by_port: dict[int, str] = {}
    for target in sorted(targets):
        other = by_port.setdefault(target.port, target.host)
        if other != target.host:
            raise ConfigError(
                f"--allow-host {other}:{target.port} and {target} share port {target.port}: a "
                "session may forward each TCP port to one host only; allow one of them"
            )
    return tuple(sorted(hosts)), tuple(sorted(targets))
