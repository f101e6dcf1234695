"""Admin policy for shared servers: caps and fixed values for what any user may ask of a sandbox.

The policy file is TOML (``/etc/oi/policy.toml``); its keys are declared by ``PolicyFile``.
When the system file exists it always applies. A file named by ``$OI_POLICY_FILE`` can only add
restrictions (lower caps, smaller sets, permissions turned off): keys that *grant* something
(egress ranges, preset tables, runtime names, the image prefix) are read from the system file
alone, so a user cannot widen the admin's policy through their environment.

Flags, environment and config files can lower what the policy allows, never raise it: a value
nobody asked for is lowered to the cap silently; a value someone asked for above the cap is
refused with a ``PolicyError`` that names the policy file and line. Every ``Settings`` key has
a policy decision (its ``oi_policy`` metadata), checked by a test.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError, PolicyError
from orchestrator.fsafe import read_owned
from orchestrator.presets import expand_hosts
from orchestrator.sandbox.hosts import split_entries
from orchestrator.units import format_size, parse_size

SettingsT = TypeVar("SettingsT", bound=BaseModel)
"""``orchestrator.settings.Settings`` (this module sits below it and knows only its keys)."""

SYSTEM_POLICY = Path("/etc/oi/policy.toml")


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a size such as 512m or 1g, got {value!r}")
    return parse_size(value)


class PolicyFile(BaseModel):
    """The keys of a policy file, with what each means (``oi policy show`` prints these)."""

    model_config = ConfigDict(extra="forbid")

    max_memory: int | None = Field(None, description="largest --memory")
    max_cpus: float | None = Field(None, gt=0, description="largest --cpus")
    max_pids: int | None = Field(None, gt=0, description="largest --pids")
    max_timeout: float | None = Field(
        None, gt=0, description="longest a block may run, seconds (timeout + kill_grace)"
    )
    max_output: int | None = Field(None, gt=0, description="largest --max-output (bytes)")
    max_tmp_size: int | None = Field(None, description="largest /tmp of a sandbox")
    max_file_size: int | None = Field(None, description="largest file a block may write")
    max_nofile: int | None = Field(None, gt=0, description="most open files per process")
    max_workdir_bytes: int | None = Field(
        None, description="most bytes a session may add to its workdir"
    )
    max_workdir_files: int | None = Field(
        None, gt=0, description="most files a session may add to its workdir"
    )
    max_env_bytes: int | None = Field(
        None, description="most bytes a session's environment (installed packages) may hold"
    )
    max_pool_size: int | None = Field(
        None, ge=1, description="most pre-started containers per shape"
    )
    allowed_networks: list[Literal["none", "allowlist", "open"]] | None = Field(
        None, description="network tiers users may choose (none, allowlist, open)"
    )
    allowed_hosts: list[str] | None = Field(
        None, description="hosts or presets users may allow in the allowlist tier"
    )
    allowed_tcp_ports: list[int] | None = Field(
        None, description="ports --allow-host HOST:PORT may name ([]: no plain TCP at all)"
    )
    allowed_toolboxes: list[Literal["standard", "full"]] | None = Field(
        None, description="toolboxes (sandbox images) users may choose: standard, full"
    )
    presets: dict[str, list[str]] | None = Field(
        None, description='host presets (e.g. pypi = ["pypi.internal"]); system file only'
    )
    egress_ranges: list[str] | None = Field(
        None, description="private ranges the allowlist proxy may reach; system file only"
    )
    required_isolation: Literal["runc", "gvisor"] | None = Field(
        None, description="runc or gvisor: the runtime every sandbox must use"
    )
    gvisor_runtime: str | None = Field(
        None, description="Docker runtime name of gVisor (no network); system file only"
    )
    gvisor_network_runtime: str | None = Field(
        None, description="Docker runtime name of networked gVisor; system file only"
    )
    max_concurrent_per_user: int | None = Field(
        None, ge=1, description="sandboxes one user may run at once (across processes)"
    )
    max_model_requests: int | None = Field(
        None, ge=1, description="model requests one user may have in flight to one endpoint"
    )
    max_concurrent_total: int | None = Field(
        None, ge=1, description="sandboxes all users together may run at once"
    )
    allow_extra_mounts: bool | None = Field(
        None, description="whether users may mount more than their workdir (--mount)"
    )
    allow_env: bool | None = Field(
        None, description="whether users may pass host variables into sandboxes (--env)"
    )
    allowed_ca_bundles: list[str] | None = Field(
        None, description="CA bundles --ca-bundle may name (default: the system's bundles)"
    )
    audit_log: str | None = Field(None, description="file receiving one JSON audit line per block")
    image_prefix: str | None = Field(None, description="sandbox image names; system file only")

    @field_validator(
        "max_memory",
        "max_tmp_size",
        "max_file_size",
        "max_workdir_bytes",
        "max_env_bytes",
        mode="before",
    )
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        return None if value is None else _size(value)

    @field_validator("egress_ranges")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for cidr in value or []:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address range (CIDR)") from None
        return value


KNOWN_KEYS: dict[str, str] = {
    name: str(info.description) for name, info in PolicyFile.model_fields.items()
}
SYSTEM_ONLY = (
    "presets",
    "egress_ranges",
    "gvisor_runtime",
    "gvisor_network_runtime",
    "image_prefix",
)
"""Keys that grant or redirect: honoured only in the system policy file. (An ``audit_log`` in
``$OI_POLICY_FILE`` only adds a trail: allowed, and the system file's wins.)"""


@dataclass(frozen=True)
class PolicyRule:
    key: str
    value: Any  # parsed (sizes in bytes)
    path: Path
    line: int
    raw: Any = None  # as written, for messages

    def where(self) -> str:
        shown = self.value if self.raw is None else self.raw
        return f"{self.path} line {self.line}: {self.key} = {_toml_value(shown)}"


@dataclass(frozen=True)
class Policy:
    """The rules in force (possibly from two files; the stricter wins)."""

    rules: dict[str, list[PolicyRule]] = field(default_factory=dict)

    def get(self, key: str) -> list[PolicyRule]:
        return self.rules.get(key, [])

    @property
    def empty(self) -> bool:
        return not self.rules

    def number_cap(self, key: str) -> tuple[Any, PolicyRule] | None:
        """The smallest cap for ``key`` and the rule that sets it."""
        caps = [(rule.value, rule) for rule in self.get(key)]
        return min(caps, key=lambda item: item[0]) if caps else None

    def allowed_set(self, key: str) -> tuple[set[str], PolicyRule] | None:
        """Intersection of the lists for ``key`` (each file can only narrow it)."""
        rules = self.get(key)
        if not rules:
            return None
        allowed = set.intersection(*({str(v) for v in rule.value} for rule in rules))
        return allowed, rules[-1]

    def refusing(
        self, key: str, member: str, expand: Callable[[list[str]], Iterable[str]] = list
    ) -> PolicyRule:
        """The rule for ``key`` whose list leaves out ``member`` (the one a refusal names)."""
        rules = self.get(key)
        for rule in rules:
            if member not in set(expand([str(v) for v in rule.value])):
                return rule
        return rules[-1]

    def flag(self, key: str) -> tuple[bool, PolicyRule] | None:
        """A boolean permission: False if any file says False."""
        rules = self.get(key)
        if not rules:
            return None
        denying = [rule for rule in rules if not rule.value]
        return (False, denying[0]) if denying else (True, rules[-1])

    def fixed(self, key: str) -> Any:
        """A value the admin fixes (system file only), or None."""
        rules = self.get(key)
        return rules[0].value if rules else None

    def presets(self) -> dict[str, tuple[str, ...]]:
        table = self.fixed("presets") or {}
        return {str(name).lower(): tuple(hosts) for name, hosts in table.items()}

    def concurrency_caps(self) -> tuple[int | None, int | None]:
        """(per user, total) concurrent sandboxes, or None where the policy sets no cap."""
        per_user = self.number_cap("max_concurrent_per_user")
        total = self.number_cap("max_concurrent_total")
        return (per_user[0] if per_user else None, total[0] if total else None)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def parse_policy(text: str, path: Path, *, system: bool = True) -> dict[str, PolicyRule]:
    """Rules of one policy file, each with its line number (pure)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(
            f"policy {path} is not valid TOML: {exc}; fix it (ask your admin)"
        ) from None
    for key in data:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PolicyError(
                f"policy {path}: unknown key {key!r}; {hint}known keys: "
                f"{', '.join(sorted(KNOWN_KEYS))}"
            )
        if not system and key in SYSTEM_ONLY:
            raise PolicyError(
                f"policy {path} (OI_POLICY_FILE) sets {key}, which only {SYSTEM_POLICY} may "
                "set: a policy named by the environment can only add restrictions"
            )
    try:
        parsed = PolicyFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise PolicyError(f"policy {path}: {key}: {message}; fix it (ask your admin)") from None
    rules: dict[str, PolicyRule] = {}
    for key in data:
        match = re.search(rf"(?m)^\s*(\[\s*)?{re.escape(key)}\s*(=|\])", text)
        line = text.count("\n", 0, match.start()) + 1 if match else 0
        rules[key] = PolicyRule(key, getattr(parsed, key), path, line, data[key])
    return rules


def load_policy() -> Policy:
    """The system policy plus ``$OI_POLICY_FILE`` (when set); an absent file is no policy."""
    paths: list[tuple[Path, bool]] = []
    if SYSTEM_POLICY.is_file():
        paths.append((SYSTEM_POLICY, True))
    explicit = os.environ.get("OI_POLICY_FILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise PolicyError(f"OI_POLICY_FILE={explicit}: no such file")
        if path.resolve() != SYSTEM_POLICY.resolve():
            paths.append((path, False))
    merged: dict[str, list[PolicyRule]] = {}
    for path, system in paths:
        try:
            if system:  # the grants and caps of everyone: only root may have written them
                data = read_owned(path, owners=frozenset({0}), what="admin policy")
            else:
                data = path.read_bytes()
            text = data.decode("utf-8")
        except ConfigError as exc:
            raise PolicyError(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise PolicyError(f"cannot read policy {path}: {reason}") from None
        for key, rule in parse_policy(text, path, system=system).items():
            merged.setdefault(key, []).append(rule)
    return Policy(merged)


def _more_than(what: str, rule: PolicyRule) -> PolicyError:
    return PolicyError(f"{what} is more than the admin policy allows ({rule.where()})")


def _not_allowed(what: str, rule: PolicyRule) -> PolicyError:
    return PolicyError(f"{what} is not allowed by the admin policy ({rule.where()})")


NUMBER_CAPS: tuple[tuple[str, str, Any], ...] = (
    ("max_memory", "memory", format_size),
    ("max_cpus", "cpus", lambda v: f"{v:g} CPUs"),
    ("max_pids", "pids", lambda v: f"{v} pids"),
    ("max_timeout", "timeout", lambda v: f"{v:g} s"),
    ("max_output", "max_output", lambda v: f"{v} bytes"),
    ("max_tmp_size", "tmp_size", format_size),
    ("max_file_size", "max_file_size", format_size),
    ("max_nofile", "nofile", lambda v: f"{v} open files"),
    ("max_workdir_bytes", "workdir_max_bytes", format_size),
    ("max_workdir_files", "workdir_max_files", lambda v: f"{v} files"),
    ("max_pool_size", "pool_size", lambda v: f"{v} containers"),
    ("max_env_bytes", "env_max_bytes", format_size),
    ("max_model_requests", "max_model_requests", lambda v: f"{v} requests"),
)
"""(policy key, setting, how to show a value): settings capped by a number."""


def apply_policy(
    settings: SettingsT, policy: Policy, explicit: set[str] | None = None
) -> SettingsT:
    """Settings capped and fixed by the policy (pure): lower silent defaults, refuse what was
    asked above a cap. ``explicit`` names the settings someone asked for (default: the ones set
    when ``settings`` was built)."""
    if policy.empty:
        return settings
    asked = set(settings.model_fields_set) if explicit is None else explicit
    updates: dict[str, Any] = {}

    def value(key: str) -> Any:
        return updates.get(key, getattr(settings, key))

    for key, setting, show in NUMBER_CAPS:
        cap = policy.number_cap(key)
        if cap is None:
            continue
        limit, rule = cap
        if value(setting) > limit:
            if setting in asked:
                raise _more_than(f"--{setting.replace('_', '-')} {show(value(setting))}", rule)
            updates[setting] = limit

    _cap_kill_grace(policy, asked, value, updates)
    _apply_sets(policy, asked, value, updates)

    for key, setting, flag in (
        ("allow_extra_mounts", "mounts", "--mount"),
        ("allow_env", "env", "--env"),
    ):
        permission = policy.flag(key)
        if permission is not None and not permission[0] and value(setting):
            raise _not_allowed(flag, permission[1])

    for key in ("egress_ranges", "gvisor_runtime", "gvisor_network_runtime", "image_prefix"):
        fixed = policy.fixed(key)
        if fixed is not None:
            updates[key] = list(fixed) if isinstance(fixed, list) else fixed
    audit = policy.fixed("audit_log")
    if audit is not None:
        updates["audit_log"] = Path(str(audit))
    return settings.model_copy(update=updates) if updates else settings


def _cap_kill_grace(policy: Policy, asked: set[str], value: Any, updates: dict[str, Any]) -> None:
    """``max_timeout`` bounds the whole time a block may run: its timeout plus the grace
    between SIGTERM and SIGKILL (a block that traps SIGTERM runs until the SIGKILL)."""
    cap = policy.number_cap("max_timeout")
    if cap is None:
        return
    limit, rule = cap
    if value("timeout") + value("kill_grace") <= limit:
        return
    if "kill_grace" in asked:
        raise _more_than(
            f"kill_grace {value('kill_grace'):g} s after a {value('timeout'):g} s timeout", rule
        )
    updates["kill_grace"] = max(0.0, limit - value("timeout"))


def _apply_sets(policy: Policy, asked: set[str], value: Any, updates: dict[str, Any]) -> None:
    networks = policy.allowed_set("allowed_networks")
    if networks is not None:
        allowed, _ = networks
        if value("network") not in allowed:
            if "network" in asked or not allowed:
                rule = policy.refusing("allowed_networks", value("network"))
                raise _not_allowed(f"--network {value('network')}", rule)
            updates["network"] = next(t for t in ("none", "allowlist", "open") if t in allowed)

    _check_tcp_ports(policy, value)
    toolboxes = policy.allowed_set("allowed_toolboxes")
    if toolboxes is not None and value("toolbox") not in toolboxes[0]:
        rule = policy.refusing("allowed_toolboxes", value("toolbox"))
        if "toolbox" in asked or "standard" not in toolboxes[0]:
            raise _not_allowed(f"--toolbox {value('toolbox')}", rule)
        updates["toolbox"] = "standard"

    hosts = policy.allowed_set("allowed_hosts")
    if hosts is not None and value("allow_hosts"):
        allowed, _ = hosts
        table = policy.presets()
        permitted = set(expand_hosts(sorted(allowed), table)) if allowed else set()
        for host in expand_hosts(list(value("allow_hosts")), table):
            if host not in permitted:
                rule = policy.refusing(
                    "allowed_hosts", host, lambda names: expand_hosts(names, table)
                )
                raise _not_allowed(f"--allow-host {host}", rule)

    required = policy.get("required_isolation")
    if required:
        wanted = "gvisor" if any(r.value == "gvisor" for r in required) else str(required[-1].value)
        rule = next(r for r in required if r.value == wanted)
        if value("isolation") != wanted:
            if "isolation" in asked:
                raise _not_allowed(f"--isolation {value('isolation')}", rule)
            updates["isolation"] = wanted

    bundle = value("ca_bundle")
    if bundle is not None:
        _check_ca_bundle(Path(bundle), policy)


def _check_tcp_ports(policy: Policy, value: Any) -> None:
    """``HOST:PORT`` entries only on the ports every policy file lists."""
    ports = policy.allowed_set("allowed_tcp_ports")
    if ports is None or not value("allow_hosts"):
        return
    _, targets = split_entries(expand_hosts(list(value("allow_hosts")), policy.presets()))
    for target in targets:
        if str(target.port) not in ports[0]:
            rule = policy.refusing("allowed_tcp_ports", str(target.port))
            raise _not_allowed(f"--allow-host {target} (plain TCP to port {target.port})", rule)


SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS
)


def _check_ca_bundle(bundle: Path, policy: Policy) -> None:
    """A CA bundle is a mount: when the admin restricts mounts, only the system's bundles
    (or the ones the policy lists) may be named."""
    listed = policy.allowed_set("allowed_ca_bundles")
    mounts = policy.flag("allow_extra_mounts")
    if listed is None and (mounts is None or mounts[0]):
        return
    allowed = listed[0] if listed is not None else set(SYSTEM_CA_BUNDLES)
    rule = listed[1] if listed is not None else mounts[1]  # type: ignore[index]
    resolved = {str(Path(p).resolve()) for p in allowed}
    if str(bundle.expanduser().resolve()) not in resolved:
        raise _not_allowed(f"--ca-bundle {bundle}", rule)


def describe(policy: Policy) -> list[str]:
    """Lines for ``oi policy show``."""
    if policy.empty:
        return [f"no admin policy ({SYSTEM_POLICY} does not exist and OI_POLICY_FILE is not set)"]
    lines = []
    for key, meaning in KNOWN_KEYS.items():
        for rule in policy.get(key):
            lines.append(f"{rule.where():<70}  # {meaning}")
    return lines
