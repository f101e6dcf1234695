"""Admin policy for shared servers: caps on what any user may ask of a sandbox.

The policy file is TOML (``/etc/oi/policy.toml``; ``$OI_POLICY_FILE`` names another). When the
system file exists it always applies, and a file named by ``$OI_POLICY_FILE`` can only add
restrictions: a user cannot escape the admin's policy through their environment.

Flags, environment and user config can lower what the policy allows, never raise it: a value
a person did not ask for is lowered to the cap silently; a value they asked for above the cap
is refused with a ``PolicyError`` that names the policy file and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import PolicyError
from orchestrator.units import format_size, parse_size

if TYPE_CHECKING:
    from orchestrator.settings import Settings

SYSTEM_POLICY = Path("/etc/oi/policy.toml")

KNOWN_KEYS = {
    "max_memory": "largest --memory",
    "max_cpus": "largest --cpus",
    "max_pids": "largest --pids",
    "max_timeout": "largest --timeout (seconds)",
    "max_output": "largest --max-output (bytes)",
    "allowed_networks": "network tiers users may choose (none, allowlist, open)",
    "allowed_hosts": "hosts or presets users may allow in the allowlist tier",
    "egress_ranges": "private ranges the allowlist proxy may reach",
    "required_isolation": "runc or gvisor: the runtime every sandbox must use",
    "max_concurrent_per_user": "sandboxes one user may run at once (across processes)",
    "max_concurrent_total": "sandboxes all users together may run at once",
    "allow_extra_mounts": "whether users may mount more than their workdir (--mount)",
    "allow_env": "whether users may pass host variables into sandboxes (--env)",
    "audit_log": "file receiving one JSON audit line per block",
}


@dataclass(frozen=True)
class PolicyRule:
    key: str
    value: Any
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path} line {self.line}: {self.key} = {_toml_value(self.value)}"


@dataclass(frozen=True)
class Policy:
    """The rules in force (possibly from two files; the stricter wins)."""

    rules: dict[str, list[PolicyRule]] = field(default_factory=dict)

    def get(self, key: str) -> list[PolicyRule]:
        return self.rules.get(key, [])

    @property
    def empty(self) -> bool:
        return not self.rules

    def number_cap(self, key: str, parse: Any = float) -> tuple[Any, PolicyRule] | None:
        """The smallest cap for ``key`` and the rule that sets it."""
        caps = [(parse(rule.value), rule) for rule in self.get(key)]
        return min(caps, key=lambda item: item[0]) if caps else None

    def allowed_set(self, key: str) -> tuple[set[str], PolicyRule] | None:
        """Intersection of the lists for ``key`` (each file can only narrow it)."""
        rules = self.get(key)
        if not rules:
            return None
        allowed = set.intersection(*({str(v) for v in rule.value} for rule in rules))
        return allowed, rules[-1]

    def flag(self, key: str) -> tuple[bool, PolicyRule] | None:
        """A boolean permission: False if any file says False."""
        rules = self.get(key)
        if not rules:
            return None
        denying = [rule for rule in rules if not rule.value]
        return (False, denying[0]) if denying else (True, rules[-1])


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def parse_policy(text: str, path: Path) -> dict[str, PolicyRule]:
    """Rules of one policy file, each with its line number (pure)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(
            f"policy {path} is not valid TOML: {exc}; fix it (ask your admin)"
        ) from None
    rules: dict[str, PolicyRule] = {}
    for key, value in data.items():
        if key not in KNOWN_KEYS:
            raise PolicyError(
                f"policy {path}: unknown key {key!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}"
            )
        match = re.search(rf"(?m)^\s*{re.escape(key)}\s*=", text)
        line = text.count("\n", 0, match.start()) + 1 if match else 0
        rules[key] = PolicyRule(key, value, path, line)
    return rules


def load_policy() -> Policy:
    """The system policy plus ``$OI_POLICY_FILE`` (when set); an absent file is no policy."""
    paths = []
    if SYSTEM_POLICY.is_file():
        paths.append(SYSTEM_POLICY)
    explicit = os.environ.get("OI_POLICY_FILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise PolicyError(f"OI_POLICY_FILE={explicit}: no such file")
        if path.resolve() != SYSTEM_POLICY.resolve():
            paths.append(path)
    merged: dict[str, list[PolicyRule]] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
        for key, rule in parse_policy(text, path).items():
            merged.setdefault(key, []).append(rule)
    return Policy(merged)


def _more_than(what: str, rule: PolicyRule) -> PolicyError:
    return PolicyError(f"{what} is more than the admin policy allows ({rule.where()})")


def _not_allowed(what: str, rule: PolicyRule) -> PolicyError:
    return PolicyError(f"{what} is not allowed by the admin policy ({rule.where()})")


def apply_policy(settings: Settings, policy: Policy) -> Settings:
    """Settings capped by the policy (pure): lower silent defaults, refuse explicit excess."""
    if policy.empty:
        return settings
    explicit = set(settings.model_fields_set)
    updates: dict[str, Any] = {}

    for key, setting, parse, show in (
        ("max_memory", "memory", parse_size, format_size),
        ("max_cpus", "cpus", float, lambda v: f"{v:g} CPUs"),
        ("max_pids", "pids", int, lambda v: f"{v} pids"),
        ("max_timeout", "timeout", float, lambda v: f"{v:g} s"),
        ("max_output", "max_output", int, lambda v: f"{v} bytes"),
    ):
        cap = policy.number_cap(key, parse)
        if cap is None:
            continue
        limit, rule = cap
        value = getattr(settings, setting)
        if value > limit:
            if setting in explicit:
                raise _more_than(f"--{setting.replace('_', '-')} {show(value)}", rule)
            updates[setting] = limit

    networks = policy.allowed_set("allowed_networks")
    if networks is not None:
        allowed, rule = networks
        if settings.network not in allowed:
            if "network" in explicit or not allowed:
                raise _not_allowed(f"--network {settings.network}", rule)
            updates["network"] = next(t for t in ("none", "allowlist", "open") if t in allowed)

    hosts = policy.allowed_set("allowed_hosts")
    if hosts is not None and settings.allow_hosts:
        allowed, rule = hosts
        from orchestrator.sandbox.network import expand_hosts  # noqa: PLC0415

        permitted = set(expand_hosts(sorted(allowed))) if allowed else set()
        for host in expand_hosts(settings.allow_hosts):
            if host not in permitted:
                raise _not_allowed(f"--allow-host {host}", rule)

    ranges = policy.allowed_set("egress_ranges")
    if ranges is not None:
        allowed, rule = ranges
        for cidr in settings.egress_ranges:
            if cidr not in allowed:
                raise _not_allowed(f"egress range {cidr}", rule)

    required = policy.get("required_isolation")
    if required:
        rule = required[-1]
        if str(rule.value) not in ("runc", "gvisor"):
            raise PolicyError(f'{rule.where()}: use "runc" or "gvisor"')
        wanted = "gvisor" if any(r.value == "gvisor" for r in required) else str(rule.value)
        if settings.isolation != wanted:
            if "isolation" in explicit:
                raise _not_allowed(f"--isolation {settings.isolation}", rule)
            updates["isolation"] = wanted

    for key, setting, flag in (
        ("allow_extra_mounts", "mounts", "--mount"),
        ("allow_env", "env", "--env"),
    ):
        permission = policy.flag(key)
        if permission is not None and not permission[0] and getattr(settings, setting):
            raise _not_allowed(flag, permission[1])

    audit = policy.get("audit_log")
    if audit:
        updates["audit_log"] = Path(str(audit[0].value))
    return settings.model_copy(update=updates) if updates else settings


def concurrency_caps(policy: Policy) -> tuple[int | None, int | None]:
    """(per user, total) concurrent sandboxes, or None where the policy sets no cap."""
    per_user = policy.number_cap("max_concurrent_per_user", int)
    total = policy.number_cap("max_concurrent_total", int)
    return (per_user[0] if per_user else None, total[0] if total else None)


def describe(policy: Policy) -> list[str]:
    """Lines for ``oi policy show``."""
    if policy.empty:
        return [f"no admin policy ({SYSTEM_POLICY} does not exist and OI_POLICY_FILE is not set)"]
    lines = []
    for key, meaning in KNOWN_KEYS.items():
        for rule in policy.get(key):
            lines.append(f"{rule.where():<70}  # {meaning}")
    return lines
