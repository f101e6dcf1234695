"""The CA bundle oi hands to what it starts: mounted into sandboxes and proxies (so TLS works
where it is intercepted), and given to image builds (so the package index can be reached from a
``docker build`` behind such a proxy)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ConfigError

HOST_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS
)


def find_ca_bundle(explicit: Path | None) -> Path | None:
    """The CA bundle to use: the one named, else the host's usual bundle if there is one."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"--ca-bundle {explicit}: no such file")
        return explicit.resolve()
    for candidate in HOST_CA_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    return None
