"""Network tiers. ``none``: loopback only. ``open``: Docker's bridge. ``allowlist``: the sandbox
sits on an ``internal`` Docker network (no route out) whose only way out is an egress proxy
container (Squid) that allows exactly the named hosts.

The proxy allows HTTP to port 80 and CONNECT to port 443 of the named hosts, refuses IP-literal
targets, refuses destinations that resolve to private, loopback, link-local or other special
addresses (unless an admin permits a range), denies everything else, and logs each decision.
Proxy and network are created on demand, shared by every sandbox with the same allowlist (in
any oi process), and removed when no oi process leases them any more.

``squid_config`` and host handling are pure and table-tested; ``EgressManager`` does the I/O.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
from docker.types import LogConfig

from orchestrator.errors import ConfigError, SandboxError
from orchestrator.sandbox.docker import engine_errors
from orchestrator.sandbox.images import PROXY_IMAGE, ImageCatalog
from orchestrator.sandbox.quota import host_lock, run_dir
from orchestrator.sandbox.spec import CA_IN_SANDBOX, LABEL_MANAGED, process_start_time

PROXY_ALIAS = "oi-proxy"
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_ALIAS}:{PROXY_PORT}"
EGRESS_NETWORK = "oi-egress"
LABEL_ROLE = "oi.role"
LABEL_EGRESS = "oi.egress"
HOST_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS
)

# Destinations the proxy refuses unless permitted: no reaching the host's LAN, the metadata
# service or the host itself through a name that resolves there.
SPECIAL_RANGES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
    "::/128", "::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "ff00::/8",
)  # fmt: skip

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


def _pip_index_hosts() -> list[str]:
    """The package index hosts pip uses: its configured index, or PyPI's own defaults."""
    hosts: list[str] = []
    configured = os.environ.get("PIP_INDEX_URL")
    if configured and (name := urlparse(configured).hostname):
        hosts.append(name)
    try:
        from pip._internal.models.index import PyPI  # noqa: PLC0415

        hosts += [PyPI.netloc, PyPI.file_storage_domain]
    except ImportError:
        pass
    return hosts


def _npm_registry_hosts() -> list[str]:
    npm = shutil.which("npm")
    configured = os.environ.get("NPM_CONFIG_REGISTRY")
    if not configured and npm:
        proc = subprocess.run(
            [npm, "config", "get", "registry"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
        configured = proc.stdout.strip()
    host = urlparse(configured or "").hostname
    return [host] if host else []


def _apt_hosts() -> list[str]:
    hosts: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        with contextlib.suppress(OSError):
            for match in re.finditer(r"(?:https?)://([^/\s]+)", path.read_text()):
                hosts.append(match.group(1))
    return hosts


PRESETS = {
    "pypi": _pip_index_hosts,
    "npm": _npm_registry_hosts,
    "debian": _apt_hosts,
}


def expand_hosts(names: list[str]) -> tuple[str, ...]:
    """User-given hosts and presets (``pypi``, ``npm``, ``debian``) -> sorted unique hosts."""
    hosts: set[str] = set()
    for name in names:
        preset = PRESETS.get(name.strip().lower())
        if preset is not None:
            found = preset()
            if not found:
                raise ConfigError(
                    f"--allow-host {name}: cannot tell which hosts the {name} preset means here "
                    "(no configuration found); name the hosts instead"
                )
            hosts.update(normalize_host(h) for h in found)
        else:
            hosts.add(normalize_host(name))
    return tuple(sorted(hosts))


@dataclass(frozen=True)
class EgressPolicy:
    """What the proxy of one allowlist lets through."""

    hosts: tuple[str, ...]
    permitted_ranges: tuple[str, ...] = ()  # admin-permitted private ranges (CIDR)

    def __post_init__(self) -> None:
        for cidr in self.permitted_ranges:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"egress: {cidr!r} is not an address range (CIDR)") from None

    @property
    def key(self) -> str:
        return hashlib.sha256(squid_config(self).encode()).hexdigest()[:12]


def squid_config(policy: EgressPolicy) -> str:
    """The whole squid.conf for a policy. Order matters: Squid uses the first matching rule."""
    lines = [
        "# generated by oi: allowlist egress proxy",
        f"http_port {PROXY_PORT}",
        "pid_filename none",
        "cache deny all",
        "cache_mem 8 MB",
        "shutdown_lifetime 1 seconds",
        "coredump_dir /tmp",
        "cache_log stdio:/dev/stderr",
        "logformat oi oi-proxy %ts.%03tu client=%>a decision=%Ss/%03>Hs %rm %ru dest=%<a",
        "access_log stdio:/dev/stdout oi",
        "via off",
        "forwarded_for delete",
        "acl CONNECT method CONNECT",
        "acl tls_port port 443",
        "acl http_port port 80",
        r"acl ip_literal dstdom_regex -n ^[0-9.]+$ ^\[.*\]$ ^[0-9a-fA-F:]+$",
        "acl special dst " + " ".join(SPECIAL_RANGES),
    ]
    if policy.hosts:
        lines.append("acl allowed_hosts dstdomain -n " + " ".join(policy.hosts))
    if policy.permitted_ranges:
        lines.append("acl permitted_ranges dst " + " ".join(policy.permitted_ranges))
    lines += [
        "http_access deny ip_literal",
    ]
    lines.append("http_access deny !allowed_hosts" if policy.hosts else "http_access deny all")
    lines += [
        "http_access deny CONNECT !tls_port",
        "http_access deny !CONNECT !http_port",
        "http_access deny special !permitted_ranges"
        if policy.permitted_ranges
        else "http_access deny special",
        "http_access allow allowed_hosts",
        "http_access deny all",
    ]
    return "\n".join(lines) + "\n"


def find_ca_bundle(explicit: Path | None) -> Path | None:
    """The CA bundle to mount: the one named, else the host's usual bundle if there is one."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"--ca-bundle {explicit}: no such file")
        return explicit.resolve()
    for candidate in HOST_CA_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


@dataclass(frozen=True)
class EgressRoute:
    """What a sandbox needs to use an allowlist: its network and the proxy's address."""

    network: str
    proxy_url: str
    key: str


@dataclass
class _Leases:
    """Cross-process leases on an egress key: one file per oi process using it."""

    root: Path = field(default_factory=run_dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with host_lock("egress.lock", self.root):
            yield

    def _dir(self, key: str) -> Path:
        path = self.root / f"egress-{key}"
        path.mkdir(exist_ok=True)
        with contextlib.suppress(PermissionError):
            path.chmod(0o1777)
        return path

    def take(self, key: str) -> None:
        pid = os.getpid()
        (self._dir(key) / f"{pid}-{process_start_time(pid)}").touch()

    def drop(self, key: str) -> None:
        pid = os.getpid()
        (self._dir(key) / f"{pid}-{process_start_time(pid)}").unlink(missing_ok=True)

    def live(self, key: str) -> int:
        count = 0
        for lease in self._dir(key).iterdir():
            pid_text, _, start = lease.name.partition("-")
            alive = pid_text.isdigit() and Path(f"/proc/{pid_text}").exists()
            if alive and process_start_time(int(pid_text)) == start:
                count += 1
            else:
                with contextlib.suppress(OSError):
                    lease.unlink()
        return count


class EgressManager:
    """Creates, shares and removes allowlist networks and their proxies."""

    def __init__(
        self,
        client: docker.DockerClient,
        images: ImageCatalog,
        *,
        ca_bundle: Path | None = None,
        leases: _Leases | None = None,
    ) -> None:
        self._client = client
        self._api = client.api
        self._images = images
        self._ca_bundle = ca_bundle
        self._leases = leases or _Leases()
        self._held: set[str] = set()

    def ensure(self, policy: EgressPolicy) -> EgressRoute:
        """Network and running proxy for ``policy``, leased by this process."""
        key = policy.key
        internal = f"oi-allow-{key}"
        with self._leases.locked():
            self._leases.take(key)
            self._held.add(key)
            with engine_errors("setting up the allowlist network"):
                self._ensure_network(EGRESS_NETWORK, internal=False, key=None)
                self._ensure_network(internal, internal=True, key=key)
                self._ensure_proxy(policy, key, internal)
        return EgressRoute(internal, PROXY_URL, key)

    def _ensure_network(self, name: str, *, internal: bool, key: str | None) -> None:
        if self._api.networks(names=[name]):
            return
        labels = {LABEL_MANAGED: "1", LABEL_ROLE: "internal" if internal else "egress"}
        if key:
            labels[LABEL_EGRESS] = key
        with contextlib.suppress(docker.errors.APIError):  # created meanwhile by another oi
            self._api.create_network(name, driver="bridge", internal=internal, labels=labels)

    def _ensure_proxy(self, policy: EgressPolicy, key: str, internal: str) -> None:
        name = f"oi-proxy-{key}"
        existing = self._api.containers(all=True, filters={"name": f"^/{name}$"})
        if existing and existing[0]["State"] == "running":
            return
        if existing:
            self._api.remove_container(existing[0]["Id"], force=True)
        image = self._images.resolve_name(PROXY_IMAGE, "the allowlist egress proxy").tag
        binds: dict[str, Mapping[str, str]] = {}
        if self._ca_bundle:
            binds[str(self._ca_bundle)] = {"bind": CA_IN_SANDBOX, "mode": "ro"}
        host_config = self._api.create_host_config(
            network_mode=EGRESS_NETWORK,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={
                "/tmp": "rw,nosuid,nodev,size=64m",
                "/var/spool/squid": "size=16m",
                "/var/log/squid": "size=16m",
                "/run": "size=1m",
            },
            pids_limit=128,
            mem_limit=256 * 1024**2,
            memswap_limit=256 * 1024**2,
            init=True,
            binds=binds,
            log_config=LogConfig(type="json-file", config={"max-size": "5m", "max-file": "1"}),
            restart_policy={"Name": "no"},
        )
        conf = base64.b64encode(squid_config(policy).encode()).decode()
        created = self._api.create_container(
            image,
            name=name,
            environment={"OI_SQUID_CONF": conf},
            labels={LABEL_MANAGED: "1", LABEL_ROLE: "proxy", LABEL_EGRESS: key},
            host_config=host_config,
            detach=True,
            use_config_proxy=False,
        )
        proxy_id = str(created["Id"])
        self._api.connect_container_to_network(proxy_id, internal, aliases=[PROXY_ALIAS])
        self._api.start(proxy_id)
        self._wait_ready(proxy_id)

    def _wait_ready(self, proxy_id: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self._api.inspect_container(proxy_id)
            if not info["State"]["Running"]:
                logs = self._api.logs(proxy_id, tail=20).decode(errors="replace")
                raise SandboxError(f"the egress proxy failed to start:\n{logs}")
            address = info["NetworkSettings"]["Networks"].get(EGRESS_NETWORK, {}).get("IPAddress")
            if address:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((address, PROXY_PORT), timeout=0.5),
                ):
                    return
            time.sleep(0.1)
        raise SandboxError(f"the egress proxy did not answer within {timeout:g} s")

    def release(self) -> None:
        """Drop this process's leases; remove proxies and networks nobody leases any more."""
        with self._leases.locked():
            for key in list(self._held):
                self._leases.drop(key)
                self._held.discard(key)
                if self._leases.live(key) == 0:
                    self._remove(key)

    def sweep_idle(self) -> list[str]:
        """Remove proxies (and their networks) that no live oi process leases (``oi gc``)."""
        removed = []
        with self._leases.locked(), engine_errors("sweeping idle egress proxies"):
            proxies = self._api.containers(
                all=True, filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_ROLE}=proxy"]}
            )
            keys = {str((c.get("Labels") or {}).get(LABEL_EGRESS)) for c in proxies}
            networks = self._api.networks(filters={"label": [f"{LABEL_ROLE}=internal"]})
            keys |= {str((n.get("Labels") or {}).get(LABEL_EGRESS)) for n in networks}
            for key in sorted(keys):
                if self._leases.live(key) == 0:
                    self._remove(key)
                    removed.append(key)
        return removed

    def _remove(self, key: str) -> None:
        with contextlib.suppress(docker.errors.APIError, docker.errors.NotFound):
            self._api.remove_container(f"oi-proxy-{key}", force=True)
        with contextlib.suppress(docker.errors.APIError, docker.errors.NotFound):
            self._api.remove_network(f"oi-allow-{key}")

    def proxy_logs(self, policy: EgressPolicy, tail: int = 50) -> str:
        """The proxy's decision log (one line per request), for tests and ``oi doctor``."""
        with engine_errors("reading the egress proxy log"):
            return self._api.logs(f"oi-proxy-{policy.key}", tail=tail).decode(errors="replace")


def describe(route: Any) -> str:
    return f"{route.network} via {route.proxy_url}"
