"""Host presets for the allowlist tier (``pypi``, ``npm``, ``debian``, ``huggingface``,
``whisper``): which hosts each means.

A preset widens what a sandbox may reach, so its hosts come only from places the admin controls:
the admin policy's own ``[presets]`` table, else oi's built-in table plus the *system*
configuration of the package tools (``/etc/pip.conf``, ``/etc/npmrc``, ``/etc/apt``). Never from
the user's environment (``PIP_INDEX_URL``) or a project's dotfiles (``.npmrc``, ``pip.conf``): an
allowlist of ``pypi`` must not admit whatever host a repo names. Pure but for reading those
system files.

``huggingface`` is the Hugging Face Hub and the hosts its downloads are redirected to (from
its ``/.well-known/meta.json``: the hub, LFS and Xet storage, the CDN); ``whisper`` is what a
block needs to ``pip install openai-whisper`` (or ``faster-whisper``) and let it fetch its
model: ``pypi``'s hosts, OpenAI's model host and ``huggingface``'s. An admin who runs a mirror
replaces any preset in the policy's ``[presets]`` table, or keeps users from naming it
(``allowed_hosts``).
"""

from __future__ import annotations

import configparser
import contextlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.errors import ConfigError
from orchestrator.sandbox.hosts import normalize_entry

PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")
HUGGINGFACE_HOSTS = (
    "huggingface.co", "hf.co", "cdn-lfs.hf.co", "cdn-lfs-us-1.hf.co", "cdn-lfs-eu-1.hf.co",
    "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co", "transfer.xethub.hf.co",
    "transfer.xethub-eu.hf.co", "cas-bridge.xethub.hf.co", "cas-server.xethub.hf.co",
    "aws.cdn.hf.co", "us.aws.cdn.hf.co", "us.gcp.cdn.hf.co",
)  # fmt: skip
BUILTIN: Mapping[str, tuple[str, ...]] = {
    "pypi": PYPI_HOSTS,
    "npm": ("registry.npmjs.org",),
    "debian": ("deb.debian.org", "security.debian.org"),
    "huggingface": HUGGINGFACE_HOSTS,
    "whisper": (*PYPI_HOSTS, "openaipublic.azureedge.net", *HUGGINGFACE_HOSTS),
}
SYSTEM_ROOT = Path("/")  # tests point it at a fake root


def _pip_system_hosts(root: Path) -> list[str]:
    hosts: list[str] = []
    for path in (root / "etc/pip.conf", root / "etc/xdg/pip/pip.conf"):
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error, UnicodeDecodeError):
            parser.read(path, encoding="utf-8")
        for section in parser.sections():
            for key in ("index-url", "extra-index-url", "index_url", "extra_index_url"):
                for url in parser.get(section, key, fallback="").split():
                    if url.startswith(("http://", "https://")) and (name := urlparse(url).hostname):
                        hosts.append(name)
    return hosts


def _npm_system_hosts(root: Path) -> list[str]:
    hosts: list[str] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (root / "etc/npmrc").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "registry" and (name := urlparse(value.strip()).hostname):
                hosts.append(name)
    return hosts


def _apt_system_hosts(root: Path) -> list[str]:
    hosts: list[str] = []
    paths = [root / "etc/apt/sources.list", *sorted((root / "etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for match in re.finditer(r"https?://([^/\s:]+)", path.read_text(encoding="utf-8")):
                hosts.append(match.group(1))
    return hosts


def _no_system_hosts(_root: Path) -> list[str]:
    return []


SYSTEM: Mapping[str, Callable[[Path], list[str]]] = {
    "pypi": _pip_system_hosts,
    "npm": _npm_system_hosts,
    "debian": _apt_system_hosts,
    "huggingface": _no_system_hosts,
    "whisper": _pip_system_hosts,  # the index the system's pip installs from
}


def preset_hosts(
    name: str, policy_table: Mapping[str, tuple[str, ...]] | None = None, root: Path | None = None
) -> tuple[str, ...] | None:
    """The hosts of a preset, or None when ``name`` is not a preset."""
    key = name.strip().lower()
    if policy_table and key in policy_table:
        return tuple(policy_table[key])
    if key not in BUILTIN:
        return None
    return (*BUILTIN[key], *SYSTEM[key](root or SYSTEM_ROOT))


def expand_hosts(
    names: list[str] | tuple[str, ...],
    policy_table: Mapping[str, tuple[str, ...]] | None = None,
    root: Path | None = None,
) -> tuple[str, ...]:
    """Hosts, ``HOST:PORT`` entries and presets -> sorted unique entries (normalised; IP
    literals refused)."""
    hosts: set[str] = set()
    for name in names:
        found = preset_hosts(name, policy_table, root)
        if found is None:
            hosts.add(normalize_entry(name))
        elif not found:
            raise ConfigError(f"--allow-host {name}: the admin's {name} preset names no hosts")
        else:
            hosts.update(normalize_entry(h) for h in found)
    return tuple(sorted(hosts))
