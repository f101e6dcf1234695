"""Host names people allow through the egress proxy: normalised and checked. Pure."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from urllib.parse import urlparse

from orchestrator.errors import ConfigError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


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
