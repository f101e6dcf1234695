"""Loading settings: every source, its trust, narrowing, the policy, in one path.

``load(...)`` reads the user config, the project file (``./oi.toml``), the ``OI_*`` environment,
the flags and any extra untrusted layers (a batch task, a replayed record), applies what each
may set (see ``orchestrator.settings`` for the trust model), validates once, applies the admin
policy once, and returns a ``Loaded``: the settings, the policy and the source of each value.
``Loaded.sandbox_config()`` is what the sandbox layer receives.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from orchestrator.errors import ConfigError
from orchestrator.fsafe import read_owned, read_regular
from orchestrator.instruction_sources import resolve as resolve_instructions
from orchestrator.llm.instructions import InstructionPiece, Instructions
from orchestrator.policy import Policy, apply_policy, load_policy
from orchestrator.presets import expand_hosts
from orchestrator.sandbox.config import (
    NETWORK_ORDER,
    SESSION_ENV_ORDER,
    NetworkTier,
    SandboxConfig,
)
from orchestrator.sandbox.hosts import split_entries
from orchestrator.sandbox.toolbox import TOOLBOX_ORDER
from orchestrator.settings import (
    FIELDS,
    Settings,
    SourceKind,
    field_meta,
    project_config_path,
    shown_value,
    user_config_path,
)
from orchestrator.trust import TrustStore

# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``kind`` and the file, variable or flag that set it."""

    kind: SourceKind
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.where}".strip()


DEFAULT = Source("default")


@dataclass(frozen=True)
class Layer:
    """One source's values (raw, as written), with its trust."""

    source: Source
    values: Mapping[str, Any]
    trusted: bool = True  # False: a project file, only narrowing accepted
    content: bytes = b""  # the file's bytes, exactly as parsed (what trust is checked on)
    file: str = ""  # the file to name in "oi trust FILE" (default: the source's)


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_toml_layer(path: Path, kind: SourceKind) -> Layer | None:
    """A config file as a layer, or None when there is no file."""
    try:
        if kind == "user config":  # yours: it may set everything, so only you may write it
            content = read_owned(path, owners=frozenset({os.geteuid()}), what="user config")
        else:
            content = read_regular(path, limit=1 << 20, follow=True)
        text = content.decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}; fix it there") from None
    return Layer(Source(kind, str(path)), data, content=content)


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """The ``OI_*`` variables that name settings (values decoded as pydantic-settings does)."""
    source = EnvSettingsSource(Settings, env_prefix="OI_", case_sensitive=False)
    if environ is not None:
        source.env_vars = {k.lower(): v for k, v in environ.items()}
    try:
        values = source()
    except Exception as exc:  # pydantic-settings' own decoding error (e.g. a bad JSON list)
        raise ConfigError(f"an OI_* variable cannot be read: {exc}") from None
    return Layer(Source("env", "OI_*"), values)


def _where(layer: Layer, key: str) -> str:
    if layer.source.kind == "env":
        return f"OI_{key.upper()}"
    if layer.source.kind == "flag":
        return f"--{key.replace('_', '-')}"
    return f"{layer.source.where}: {key}"


PROFILES = "profiles"
"""The user config's table of named profiles (``[profiles.NAME]``)."""


def check_keys(layer: Layer) -> None:
    """Unknown keys (with a hint) and admin-only keys are refused, naming where; profiles are
    defined only in the user config, and chosen only by the user."""
    kind = layer.source.kind
    for key in layer.values:
        if key == PROFILES and kind == "user config":
            continue
        if key == PROFILES or (key == "profile" and kind in ("project", "profile")):
            where = layer.file or layer.source.where or kind
            raise ConfigError(
                f"{where}: {key} is refused here: profiles are defined in your user config "
                f"({user_config_path()}) and chosen with --profile NAME or OI_PROFILE"
            )
        if key not in Settings.model_fields:
            where = layer.source.where or layer.source.kind
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key)}")
        trust, _policy = field_meta(key)
        if trust == "admin":
            raise ConfigError(
                f"{_where(layer, key)}: {key} can be set only by the admin policy "
                f"(/etc/oi/policy.toml); remove it there"
            )


# --- narrowing -------------------------------------------------------------------------------


def _network_rank(tier: str) -> int:
    return NETWORK_ORDER.index(cast("NetworkTier", tier))


Expander = Callable[[list[str]], tuple[str, ...]]


def narrows(key: str, value: Any, base: Settings, expand: Expander) -> bool:
    """Does ``value`` (already validated) ask for no more than ``base`` allows?"""
    current = getattr(base, key)
    if key == "network":
        return _network_rank(value) <= _network_rank(current)
    if key == "session_env":
        return SESSION_ENV_ORDER.index(value) <= SESSION_ENV_ORDER.index(current)
    if key == "allow_hosts":
        if base.network == "open":
            return True  # any allowlist is narrower than the open internet
        if base.network == "none":
            return not value
        return set(expand(list(value))) <= set(expand(list(current)))
    if key in ("env", "mounts"):
        return set(value) <= set(current)
    if key == "isolation":
        return value in (current, "gvisor")
    if key == "toolbox":
        return TOOLBOX_ORDER.index(value) <= TOOLBOX_ORDER.index(current)
    if key == "auto_run":
        return (not value) or bool(current)
    if isinstance(current, int | float) and isinstance(value, int | float):
        return value <= current
    return bool(value == current)


@dataclass(frozen=True)
class Refusal:
    where: str
    key: str
    value: Any

    def _why(self) -> str:
        if field_meta(self.key)[0] == "user":
            return f"{self.key} is yours alone to set"
        return "this would widen it"

    def message(self, fix: str) -> str:
        return (
            f"{self.where} = {shown_value(self.key, self.value)!r} is refused: a project file "
            "may only narrow what "
            f"you allow ({self._why()}); {fix}"
        )


def narrowing_layer(
    layer: Layer, base: Settings, expand: Expander
) -> tuple[dict[str, Any], list[Refusal]]:
    """The values of an untrusted layer that may apply over ``base``, and the refused ones."""
    accepted: dict[str, Any] = {}
    refused: list[Refusal] = []
    for key, value in layer.values.items():
        trust, _ = field_meta(key)
        if trust == "any":
            accepted[key] = value
            continue
        if trust == "narrow":
            candidate = _validate({**_explicit_values(base), key: value}, {key: _where(layer, key)})
            if narrows(key, getattr(candidate, key), base, expand):
                accepted[key] = value
                continue
        refused.append(Refusal(_where(layer, key), key, value))
    return accepted, refused


def _explicit_values(settings: Settings) -> dict[str, Any]:
    return {key: getattr(settings, key) for key in settings.model_fields_set}


# --- loading ---------------------------------------------------------------------------------


def _validate(values: Mapping[str, Any], wheres: Mapping[str, str]) -> Settings:
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = wheres.get(key, key or "settings")
            problems.append(f"{where}: {plain_problem(key, err)}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


_LIMIT_WORDS = {
    "greater_than_equal": ("ge", "small", "at least"),
    "greater_than": ("gt", "small", "more than"),
    "less_than_equal": ("le", "large", "at most"),
    "less_than": ("lt", "large", "less than"),
}


def plain_problem(key: str, err: Mapping[str, Any]) -> str:
    """A pydantic error in the words of a person setting ``key`` (pure): what was given and
    what is wanted, never a secret's value."""
    kind = str(err.get("type", ""))
    given = shown_value(key, err.get("input"))
    ctx = err.get("ctx") or {}
    if kind in ("float_parsing", "int_parsing", "float_type", "int_type", "int_from_float"):
        whole = "a whole " if kind.startswith("int") else "a "
        return f"{given!r} is not {whole}number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{given!r} is not true or false"
    if kind in _LIMIT_WORDS:
        bound, too, words = _LIMIT_WORDS[kind]
        return f"{given!r} is too {too}: it must be {words} {ctx.get(bound)}"
    if kind == "literal_error":
        return f"{given!r} is not one of {ctx.get('expected')}"
    if kind == "finite_number":
        return f"{given!r} is not a finite number"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


@dataclass(frozen=True)
class Loaded:
    """Settings with the policy applied, the policy itself, and where each value came from."""

    settings: Settings
    policy: Policy
    sources: Mapping[str, Source] = field(default_factory=dict)
    instructions: Instructions = field(default_factory=Instructions)

    def source_of(self, key: str) -> Source:
        return self.sources.get(key, DEFAULT)

    def sandbox_config(self) -> SandboxConfig:
        return sandbox_config(self.settings, self.policy)

    def replace(self, **updates: Any) -> Loaded:
        """The same load with some settings replaced (by the adapter itself, e.g. batch's
        workdir per task); the policy is applied again."""
        settings = apply_policy(self.settings.model_copy(update=updates), self.policy, set())
        return replace(self, settings=settings)


def project_refusal_fix(path: str) -> str:
    return f"if you wrote {path}, trust it with 'oi trust {path}', or remove the key"


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    untrusted: Iterable[Layer] = (),
    untrusted_top: Iterable[Layer] = (),
    policy: Policy | None = None,
    environ: Mapping[str, str] | None = None,
    read_project: bool = True,
    trust_store: TrustStore | None = None,
    on_refusal: Literal["error", "drop"] = "error",
    notes: list[str] | None = None,
) -> Loaded:
    """The one path from every source to settings (see the module docstring).

    ``flags`` are the values a person gave on the command line (``None`` means "not given").
    ``untrusted`` are extra project-level layers (a replayed record) applied like ``./oi.toml``,
    below the environment and flags; ``untrusted_top`` ones (a task of a tasks file) above
    everything, each narrowing what the layers below allow. A refused key is a ``ConfigError``
    naming the file and the key, or (``on_refusal="drop"``) left out with a line in ``notes``.
    """
    policy = policy if policy is not None else load_policy()
    store = trust_store or TrustStore.default()
    user = read_toml_layer(user_config_path(), "user config")
    project = read_toml_layer(project_config_path(), "project") if read_project else None
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    changed: set[str] = set()
    if project is not None:
        status = store.status(Path(project.source.where), project.content)
        if status == "changed":
            changed.add(project.source.where)
        project = replace(project, trusted=status == "trusted")
    env = env_layer(environ)
    flag = Layer(Source("flag", "command line"), given)
    for layer in (user, project, *untrusted, env, flag, *untrusted_top):
        if layer is not None:
            check_keys(layer)
    user, profile = split_profile(user, flag, env)
    layers = [
        *(layer for layer in (user, profile, project) if layer is not None),
        *untrusted,
        env,
        flag,
        *untrusted_top,
    ]
    added: list[InstructionPiece] = []
    layers = [_take_project_instructions(layer, added) for layer in layers]
    merged = _Merged(_expander(policy))
    for layer in layers:
        if layer.trusted:
            merged.take(layer, layer.values)
            continue
        refused = merged.narrow(layer)
        if refused and on_refusal == "error":
            where = layer.file or layer.source.where
            fix = project_refusal_fix(where)
            if where in changed:
                fix = f"{where} changed since you trusted it: review it, then 'oi trust {where}'"
            raise ConfigError(refused[0].message(fix))
        for refusal in refused:
            if notes is not None:
                shown = shown_value(refusal.key, refusal.value)
                notes.append(f"{refusal.where} = {shown!r} not applied: wider than yours")
    settings = merged.settings()
    capped = apply_policy(settings, policy, set(merged.sources))
    sources = dict(merged.sources)
    for key in FIELDS:
        if getattr(capped, key) != getattr(settings, key):
            sources[key] = policy_source(policy, key)
    instructions = Instructions((*merged.user_instructions(), *added))
    return Loaded(capped, policy, sources, instructions)


# --- profiles and instructions ----------------------------------------------------------------


def split_profile(user: Layer | None, flag: Layer, env: Layer) -> tuple[Layer | None, Layer | None]:
    """The user config without its profiles, and the profile chosen (``--profile``, else
    ``OI_PROFILE``, else the config's own ``profile = NAME``) as a layer of its own."""
    table: Any = user.values.get(PROFILES, {}) if user is not None else {}
    where = user.source.where if user is not None else str(user_config_path())
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError(
            f"{where}: profiles must be tables, e.g. [profiles.data] with settings under it"
        )
    if user is not None and PROFILES in user.values:
        user = replace(user, values={k: v for k, v in user.values.items() if k != PROFILES})
    name = next(
        (
            layer.values["profile"]
            for layer in (flag, env, user)
            if layer and "profile" in layer.values
        ),
        None,
    )
    if name is None:
        return user, None
    if name not in table:
        known = ", ".join(sorted(table)) or "none defined"
        raise ConfigError(
            f"profile {name!r} is not in your user config {where} (profiles there: {known}); "
            f"add a [profiles.{name}] table to it, or choose another"
        )
    layer = Layer(Source("profile", f"{name} ({where} [profiles.{name}])"), table[name])
    check_keys(layer)
    return user, layer


def _base_dir(layer: Layer) -> Path:
    """The folder a relative @FILE of ``layer`` is relative to."""
    if layer.source.kind in ("user config", "profile", "project"):
        named = layer.file or layer.source.where
        if layer.source.kind == "profile":
            named = str(user_config_path())
        return Path(named).absolute().parent
    return Path.cwd()


def _take_project_instructions(layer: Layer, added: list[InstructionPiece]) -> Layer:
    """A project's instructions (``./oi.toml``, a task) are added to the user's, never replace
    them: read them here and leave them out of the merge."""
    if layer.source.kind != "project" or "instructions" not in layer.values:
        return layer
    added.append(
        resolve_instructions(
            layer.values["instructions"],
            where=_where(layer, "instructions"),
            source=f"project {layer.source.where}",
            base_dir=_base_dir(layer),
            project=True,
            confined=not layer.trusted,
        )
    )
    rest = {k: v for k, v in layer.values.items() if k != "instructions"}
    return replace(layer, values=rest)


class _Merged:
    """The values of the layers taken so far, with where each came from."""

    def __init__(self, expand: Expander) -> None:
        self.expand = expand
        self.values: dict[str, Any] = {}
        self.wheres: dict[str, str] = {}
        self.sources: dict[str, Source] = {}
        self.layers: dict[str, Layer] = {}

    def take(self, layer: Layer, values: Mapping[str, Any]) -> None:
        if values.get("allow_hosts") and "network" not in values:
            # Naming hosts means the allowlist tier, over whatever a lower layer chose.
            values = {**values, "network": "allowlist"}
        for key, value in values.items():
            self.values[key] = value
            self.wheres[key] = _where(layer, key)
            self.sources[key] = layer.source
            self.layers[key] = layer

    def settings(self) -> Settings:
        return _validate(self.values, self.wheres)

    def user_instructions(self) -> tuple[InstructionPiece, ...]:
        """The user's own instructions (the highest source that sets them wins)."""
        if "instructions" not in self.values or self.values["instructions"] is None:
            return ()
        layer = self.layers["instructions"]
        piece = resolve_instructions(
            self.values["instructions"],
            where=self.wheres["instructions"],
            source=f"{layer.source.kind} {self.wheres['instructions']}"
            if layer.source.kind in ("env", "flag")
            else str(layer.source),
            base_dir=_base_dir(layer),
            project=False,
            confined=False,
        )
        return (piece,)

    def narrow(self, layer: Layer) -> list[Refusal]:
        """Take what an untrusted layer may set over what is here; return what it may not."""
        accepted, refused = narrowing_layer(layer, self.settings(), self.expand)
        self.take(layer, accepted)
        return refused


def policy_source(policy: Policy, key: str) -> Source:
    """The policy line that decided ``key`` (for ``oi config show``)."""
    decision = field_meta(key)[1].split()
    rules = policy.get(decision[1]) if len(decision) > 1 else []
    return Source("policy", rules[0].where() if rules else "admin policy")


def load_settings(**flags: Any) -> Settings:
    """Settings from the flags a person gave, every other source and the admin policy."""
    return load(flags).settings


def _expander(policy: Policy) -> Expander:
    def expand(names: list[str]) -> tuple[str, ...]:
        return expand_hosts(names, policy.presets())

    return expand


def sandbox_config(settings: Settings, policy: Policy) -> SandboxConfig:
    """What the sandbox layer is told (presets expanded; admin-only values from the policy).
    A session's ``HOST:PORT`` entries are checked here (one host per port)."""
    per_user, total = policy.concurrency_caps()
    allow_hosts = (
        expand_hosts(settings.allow_hosts, policy.presets())
        if settings.network == "allowlist"
        else ()
    )
    split_entries(allow_hosts)
    return SandboxConfig(
        workdir=settings.workdir,
        memory=settings.memory,
        cpus=settings.cpus,
        pids=settings.pids,
        timeout=settings.timeout,
        max_output=settings.max_output,
        tmp_size=settings.tmp_size,
        max_file_size=settings.max_file_size,
        nofile=settings.nofile,
        workdir_max_bytes=settings.workdir_max_bytes,
        workdir_max_files=settings.workdir_max_files,
        kill_grace=settings.kill_grace,
        env=tuple(settings.env),
        network=settings.network,
        allow_hosts=allow_hosts,
        egress_ranges=tuple(settings.egress_ranges),
        ca_bundle=settings.ca_bundle,
        mounts=tuple(settings.mounts),
        isolation=settings.isolation,
        toolbox=settings.toolbox,
        gvisor_runtime=settings.gvisor_runtime,
        gvisor_network_runtime=settings.gvisor_network_runtime,
        pool=settings.pool,
        pool_size=settings.pool_size,
        pool_idle=settings.pool_idle,
        image_prefix=settings.image_prefix,
        base_image=settings.base_image,
        audit_log=settings.audit_log,
        quota_per_user=per_user,
        quota_total=total,
        session_env=settings.session_env,
        env_max_bytes=settings.env_max_bytes,
        python_state=settings.python_state,
    )
