"""Project files the user trusts: ``oi trust FILE`` records the file's sha256, as direnv's
``allow`` does. A trusted file is read as the user's own settings; once its content changes it
is untrusted again until trusted anew.

The store (``$XDG_CONFIG_HOME/oi/trusted.json``, 0600 in a 0700 folder) is the user's: it is
never read through a symlink, and ignored (with a warning) when another user could have
written it, so nobody else can make oi trust a file for you.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.errors import ConfigError
from orchestrator.fsafe import owned_private, private_dir, read_regular, write_atomic
from orchestrator.paths import xdg_dir

TrustStatus = Literal["trusted", "changed", "untrusted"]


def config_home() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(path: Path) -> str:
    """How a file is named in the store: absolute, with '.' and '..' resolved lexically (the
    same spelling whichever relative path the user typed)."""
    return os.path.abspath(path)


@dataclass
class TrustStore:
    path: Path

    @classmethod
    def default(cls) -> TrustStore:
        return cls(config_home() / "oi" / "trusted.json")

    def _entries(self) -> dict[str, dict[str, object]]:
        try:
            info = os.lstat(self.path)
            parent = os.lstat(self.path.parent)
        except FileNotFoundError:
            return {}
        if not (owned_private(info) and owned_private(parent)):
            return {}  # someone else could have written it: trust nothing from it
        try:
            data = json.loads(read_regular(self.path, limit=4 << 20))
        except (ConfigError, ValueError, OSError):
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return {str(k): v for k, v in files.items() if isinstance(v, dict)} if files else {}

    def status(self, path: Path, content: bytes) -> TrustStatus:
        entry = self._entries().get(key(path))
        if entry is None:
            return "untrusted"
        return "trusted" if entry.get("sha256") == digest(content) else "changed"

    def is_trusted(self, path: Path, content: bytes) -> bool:
        return self.status(path, content) == "trusted"

    def trust(self, path: Path) -> str:
        """Trust the file as it is now; returns its sha256."""
        try:
            content = read_regular(Path(key(path)), limit=16 << 20, follow=True)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file to trust") from None
        entries = self._entries()
        entries[key(path)] = {"sha256": digest(content), "trusted_at": time.time()}
        self._save(entries)
        return digest(content)

    def revoke(self, path: Path) -> bool:
        entries = self._entries()
        found = entries.pop(key(path), None) is not None
        if found:
            self._save(entries)
        return found

    def listed(self) -> dict[str, str]:
        return {name: str(entry.get("sha256", "")) for name, entry in self._entries().items()}

    def _save(self, entries: dict[str, dict[str, object]]) -> None:
        private_dir(self.path.parent)
        blob = json.dumps({"version": 1, "files": entries}, indent=2, sort_keys=True)
        write_atomic(self.path, blob.encode() + b"\n", 0o600)
