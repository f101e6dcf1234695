"""oi's seccomp profile, checked against a model of how runc and libseccomp evaluate it.

``decide`` is that model, kept small: runc drops a rule whose action is the default action and
splits a rule with several conditions on one argument into one rule per condition; libseccomp
lets an unconditional rule for a syscall override its conditional ones. The engine tests in
``tests/security/test_seccomp.py`` check the same properties on the real kernel.
"""

from __future__ import annotations

import errno
import hashlib
import json
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from orchestrator.sandbox import seccomp
from orchestrator.sandbox.seccomp import (
    GOVERNED,
    MODE_ARGUMENT,
    SUPPORTED_ARCHES,
    build_profile,
    docker_security_opt,
    gvisor_profile,
    load_moby_profile,
    seccomp_profile,
)

ALLOW = "allow"
EPERM, ENOSYS, EAFNOSUPPORT = errno.EPERM, errno.ENOSYS, errno.EAFNOSUPPORT
MASK64 = 2**64 - 1
AT_FDCWD = 2**64 - 100  # -100 as the register holds it
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TMPFILE = 0, 1, 2, 0o100, 0o20200000
AF_UNSPEC, AF_KEY, AF_PACKET, AF_TIPC, AF_BLUETOOTH, AF_ALG, AF_VSOCK = 0, 15, 17, 30, 31, 38, 40


def _matches(arg: dict[str, Any], args: tuple[int, ...]) -> bool:
    value = args[arg["index"]] if arg["index"] < len(args) else 0
    op, datum = arg["op"], arg["value"]
    if op == "SCMP_CMP_MASKED_EQ":
        return value & datum == arg.get("valueTwo", 0)
    return {
        "SCMP_CMP_EQ": value == datum,
        "SCMP_CMP_NE": value != datum,
        "SCMP_CMP_LT": value < datum,
        "SCMP_CMP_LE": value <= datum,
        "SCMP_CMP_GT": value > datum,
        "SCMP_CMP_GE": value >= datum,
    }[op]


def _outcome(rule: dict[str, Any], default: int) -> str | int:
    if rule["action"] == "SCMP_ACT_ALLOW":
        return ALLOW
    assert rule["action"] == "SCMP_ACT_ERRNO", rule
    return int(rule.get("errnoRet", default))


def _rules_for(profile: dict[str, Any], name: str, arch: str) -> list[dict[str, Any]]:
    """The rules runc hands libseccomp for ``name`` on ``arch`` (minKernel taken as met)."""
    default = profile.get("defaultErrnoRet", EPERM)
    rules = []
    for rule in profile["syscalls"]:
        arches = (rule.get("includes") or {}).get("arches")
        if name not in rule["names"] or (arches and arch not in arches):
            continue
        assert not (rule.get("includes") or {}).get("caps"), "capability rules must be resolved"
        if _outcome(rule, default) == default:
            continue  # runc: same action as the default, silently skipped
        args = rule.get("args") or []
        indices = [arg["index"] for arg in args]
        if len(set(indices)) < len(indices):  # runc: one rule per condition (an OR)
            rules += [{**rule, "args": [arg]} for arg in args]
        else:
            rules.append(rule)
    return rules


def decide(profile: dict[str, Any], name: str, args: tuple[int, ...] = (), arch: str = "amd64"):
    """ALLOW or the errno the filter returns for ``name(*args)``."""
    default = int(profile.get("defaultErrnoRet", EPERM))
    rules = _rules_for(profile, name, arch)
    unconditional = [rule for rule in rules if not rule.get("args")]
    if unconditional:  # libseccomp: an unconditional rule wins over every conditional one
        return _outcome(unconditional[-1], default)
    outcomes = {
        _outcome(rule, default) for rule in rules if all(_matches(a, args) for a in rule["args"])
    }
    assert len(outcomes) <= 1, f"{name}{args}: overlapping rules decide {outcomes}"
    return outcomes.pop() if outcomes else default


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    return seccomp_profile()


@pytest.fixture(scope="module")
def moby() -> dict[str, Any]:
    return load_moby_profile()


DENIED_OR_CONDITIONED = [
    # (syscall, arguments, expected) -- what the brief asks oi's profile to change
    ("io_uring_setup", (8, 0), ENOSYS),
    ("io_uring_enter", (3, 1, 0, 0, 0, 0), ENOSYS),
    ("io_uring_register", (3, 0, 0, 0), ENOSYS),
    ("openat2", (AT_FDCWD, 0, 0, 24), ENOSYS),
    ("socket", (1, 1, 0), ALLOW),  # AF_UNIX
    ("socket", (2, 1, 0), ALLOW),  # AF_INET
    ("socket", (10, 2, 0), ALLOW),  # AF_INET6
    ("socket", (16, 3, 0), ALLOW),  # AF_NETLINK (if_nameindex, getifaddrs)
    ("socket", (AF_VSOCK, 1, 0), EAFNOSUPPORT),
    ("socket", (AF_ALG, 5, 0), EAFNOSUPPORT),
    ("socket", (AF_PACKET, 3, 0), EAFNOSUPPORT),
    ("socket", (AF_BLUETOOTH, 1, 0), EAFNOSUPPORT),
    ("socket", (AF_KEY, 3, 2), EAFNOSUPPORT),
    ("socket", (AF_TIPC, 5, 0), EAFNOSUPPORT),
    ("socket", (AF_UNSPEC, 1, 0), EAFNOSUPPORT),
    ("socket", (46, 1, 0), EAFNOSUPPORT),  # a family newer than this profile
    ("socket", (2**32 + 1, 1, 0), EAFNOSUPPORT),  # garbage above the int: refused
    ("socket", (MASK64, 1, 0), EAFNOSUPPORT),
    ("socketpair", (1, 1, 0, 0), ALLOW),
    ("socketpair", (AF_VSOCK, 1, 0, 0), EAFNOSUPPORT),
    ("socketpair", (AF_TIPC, 5, 0, 0), EAFNOSUPPORT),
    ("chmod", (0, 0o755), ALLOW),
    ("chmod", (0, 0o1777), ALLOW),  # the sticky bit is fine
    ("chmod", (0, 0o4755), EPERM),
    ("chmod", (0, 0o2755), EPERM),
    ("chmod", (0, 0o6000), EPERM),
    ("chmod", (0, 2**32 | 0o4755), EPERM),  # upper bits do not hide the setuid bit
    ("fchmod", (3, 0o644), ALLOW),
    ("fchmod", (3, 0o4711), EPERM),
    ("fchmodat", (AT_FDCWD, 0, 0o755, 0), ALLOW),
    ("fchmodat", (AT_FDCWD, 0, 0o2775, 0), EPERM),
    ("fchmodat2", (AT_FDCWD, 0, 0o755, 0), ALLOW),
    ("fchmodat2", (AT_FDCWD, 0, 0o4755, 0x100), EPERM),
    ("creat", (0, 0o644), ALLOW),
    ("creat", (0, 0o4755), EPERM),
    ("open", (0, O_RDONLY, 0o4755), ALLOW),  # creates nothing: the kernel ignores the mode
    ("open", (0, O_CREAT | O_WRONLY, 0o644), ALLOW),
    ("open", (0, O_CREAT | O_WRONLY, 0o4755), EPERM),
    ("open", (0, O_TMPFILE | O_RDWR, 0o2755), EPERM),
    ("openat", (AT_FDCWD, 0, O_RDONLY, 0), ALLOW),
    ("openat", (AT_FDCWD, 0, O_RDWR, 0o6777), ALLOW),
    ("openat", (AT_FDCWD, 0, O_CREAT | O_RDWR, 0o666), ALLOW),
    ("openat", (AT_FDCWD, 0, O_CREAT | O_RDWR, 0o4755), EPERM),
    ("openat", (AT_FDCWD, 0, O_TMPFILE | O_RDWR, 0o4700), EPERM),
    ("mkdir", (0, 0o777), ALLOW),
    ("mkdir", (0, 0o2775), EPERM),
    ("mkdirat", (AT_FDCWD, 0, 0o755), ALLOW),
    ("mkdirat", (AT_FDCWD, 0, 0o2755), EPERM),
    ("mknod", (0, stat.S_IFIFO | 0o644, 0), ALLOW),
    ("mknod", (0, stat.S_IFREG | 0o4755, 0), EPERM),
    ("mknodat", (AT_FDCWD, 0, stat.S_IFREG | 0o644, 0), ALLOW),
    ("mknodat", (AT_FDCWD, 0, stat.S_IFREG | 0o2755, 0), EPERM),
]

UNCHANGED = [
    # moby's own decisions, kept: a sample (test_superset_of_moby checks every rule)
    ("read", (), ALLOW),
    ("execve", (), ALLOW),
    ("clone", (0x01200011,), ALLOW),  # fork: SIGCHLD | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
    ("clone", (0x10000000,), EPERM),  # CLONE_NEWUSER
    ("clone3", (), ENOSYS),  # glibc falls back to clone, whose flags are checked
    ("personality", (0,), ALLOW),
    ("personality", (0x0040000,), EPERM),  # ADDR_NO_RANDOMIZE
    ("ptrace", (), ALLOW),  # minKernel 4.8, left to the engine
    ("unshare", (0,), EPERM),
    ("mount", (), EPERM),
    ("bpf", (), EPERM),
    ("keyctl", (), EPERM),
    ("open_by_handle_at", (), EPERM),
    ("arch_prctl", (), ALLOW),
]


@pytest.mark.parametrize(("name", "args", "expected"), DENIED_OR_CONDITIONED + UNCHANGED)
@pytest.mark.parametrize("arch", list(SUPPORTED_ARCHES))
def test_profile_decides(profile, arch: str, name: str, args: tuple[int, ...], expected) -> None:
    if arch == "arm64" and name == "arch_prctl":
        expected = EPERM  # x86 only: moby allows it on amd64 alone
    assert decide(profile, name, args, arch) == expected


def test_the_model_sees_what_libseccomp_would(moby) -> None:
    # Positive controls for ``decide``: moby's profile allows what oi's refuses...
    plain = {**moby, "syscalls": seccomp.resolve_for_sandbox(moby)}
    assert decide(plain, "chmod", (0, 0o4755)) == ALLOW
    assert decide(plain, "socket", (AF_TIPC, 5, 0)) == ALLOW
    assert decide(plain, "socket", (AF_VSOCK, 1, 0)) == EPERM  # moby denies these two now
    # ...and an unconditional allow left next to oi's conditions would undo them.
    leaky = seccomp_profile()
    leaky["syscalls"].append({"names": ["chmod"], "action": "SCMP_ACT_ALLOW"})
    assert decide(leaky, "chmod", (0, 0o4755)) == ALLOW
    # An EPERM deny rule would be dropped by runc, so it cannot be what refuses.
    dropped = {**plain, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}
    assert decide(dropped, "read", ()) == EPERM and not _rules_for(dropped, "read", "amd64")


@pytest.mark.parametrize("family", range(64))
def test_every_socket_family_has_one_decision(profile, family: int) -> None:
    expected = ALLOW if family in seccomp.SOCKET_FAMILIES else EAFNOSUPPORT
    for name in ("socket", "socketpair"):
        assert decide(profile, name, (family, 1, 0)) == expected


def test_governed_syscalls_are_in_no_unconditional_allow(profile) -> None:
    for rule in profile["syscalls"]:
        governed = GOVERNED.intersection(rule["names"])
        if governed and rule["action"] == "SCMP_ACT_ALLOW":
            assert rule.get("args"), f"{governed} allowed unconditionally: {rule}"


def _effective(profile: dict[str, Any], arch: str) -> dict[str, list[str]]:
    """name -> the rules libseccomp gets for it on ``arch``, canonical (for comparison)."""
    names = {name for rule in profile["syscalls"] for name in rule["names"]}
    return {
        name: sorted(
            json.dumps(
                {
                    "action": rule["action"],
                    "errnoRet": rule.get("errnoRet"),
                    "args": rule.get("args") or [],
                    "minKernel": (rule.get("includes") or {}).get("minKernel"),
                },
                sort_keys=True,
            )
            for rule in _rules_for(profile, name, arch)
        )
        for name in names
    }


def _moby_no_caps(moby: dict[str, Any], arch: str) -> dict[str, Any]:
    """moby's profile as Docker resolves it for a container without capabilities on ``arch``,
    written out independently of seccomp.py: drop rules for other arches or needing a cap."""
    kept = []
    for rule in moby["syscalls"]:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("caps") or arch in (excludes.get("arches") or []):
            continue
        if includes.get("arches") and arch not in includes["arches"]:
            continue
        minimal = {k: rule[k] for k in ("names", "action", "errnoRet", "args") if rule.get(k)}
        if includes.get("minKernel"):
            minimal["includes"] = {"minKernel": includes["minKernel"]}
        kept.append(minimal)
    return {**moby, "syscalls": kept}


@pytest.mark.parametrize("arch", list(SUPPORTED_ARCHES))
def test_superset_of_moby_apart_from_governed(profile, moby, arch: str) -> None:
    ours = _effective(profile, arch)
    theirs = _effective(_moby_no_caps(moby, arch), arch)
    assert len(theirs) > 300
    for name, rules in theirs.items():
        if name not in GOVERNED:
            assert ours.get(name) == rules, name
    # beyond moby's rules, oi adds rules only for the syscalls it governs
    assert {name for name, rules in ours.items() if rules and rules != theirs.get(name)} <= GOVERNED


def test_moby_denials_oi_keeps_or_extends(profile, moby) -> None:
    # moby's socket rules refuse AF_ALG and AF_VSOCK; oi refuses those and more.
    plain = _moby_no_caps(moby, "amd64")
    for family in range(64):
        if decide(plain, "socket", (family, 1, 0)) != ALLOW:
            assert decide(profile, "socket", (family, 1, 0)) != ALLOW


def test_capability_rules_are_resolved_and_only_supported_arches_remain(profile) -> None:
    assert profile["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
    ]
    for rule in profile["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args", "comment", "includes"}
        includes = rule.get("includes") or {}
        assert set(includes) <= {"arches", "minKernel"}, rule
        assert set(includes.get("arches") or []) <= set(SUPPORTED_ARCHES)


def test_no_rule_runc_would_drop_or_split(profile) -> None:
    default = profile["defaultErrnoRet"]
    for rule in profile["syscalls"]:
        assert _outcome(rule, default) != default, f"runc skips {rule}"
        indices = [arg["index"] for arg in rule.get("args") or []]
        assert len(set(indices)) == len(indices), f"runc splits {rule}"


def test_json_is_what_docker_20_10_reads(profile) -> None:
    # Docker 20.10's types.Seccomp: these keys, these actions and operators; it reads
    # defaultErrnoRet from 23.0 on (runc's default errno is EPERM either way).
    assert set(profile) == {"defaultAction", "defaultErrnoRet", "archMap", "syscalls"}
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == EPERM
    operators = {"SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT",
                 "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ"}  # fmt: skip
    for rule in profile["syscalls"]:
        assert rule["names"] and all(isinstance(n, str) for n in rule["names"])
        assert rule["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO")
        for arg in rule.get("args") or []:
            assert arg["op"] in operators and 0 <= arg["index"] < 6
            assert 0 <= arg["value"] <= MASK64 and 0 <= arg.get("valueTwo", 0) <= MASK64
    option = docker_security_opt()
    assert option.startswith("seccomp={") and json.loads(option[len("seccomp=") :]) == profile
    assert option is docker_security_opt(), "built once per process"
    assert len(option) < 16_000  # it travels in every container-create request


def test_mode_argument_indices_follow_the_syscall_signatures() -> None:
    # Each syscall's mode argument (see man 2 chmod, open, mkdir, mknod): dirfd shifts it by one.
    assert seccomp.MODE_ARGUMENT == {
        "chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "creat": 1, "open": 2,
        "openat": 3, "mkdir": 1, "mkdirat": 2, "mknod": 1, "mknodat": 2,
    }  # fmt: skip
    assert seccomp.OPEN_FLAGS_ARGUMENT == {"open": 1, "openat": 2}


def test_build_profile_is_pure(moby) -> None:
    before = json.dumps(moby, sort_keys=True)
    assert build_profile(moby) == build_profile(moby) == seccomp_profile()
    assert json.dumps(moby, sort_keys=True) == before


def test_vendored_moby_profile_is_the_recorded_one() -> None:
    folder = resources.files("orchestrator.sandbox") / "profiles"
    data = (folder / "moby-default.json").read_bytes()
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert hashlib.sha256(data).hexdigest() in notice
    assert "Apache License" in (folder / "LICENSE.moby").read_text(encoding="utf-8")


def test_profile_files_ship_as_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "orchestrator.sandbox.profiles" in setuptools["packages"]
    shipped = setuptools["package-data"]["orchestrator.sandbox.profiles"]
    folder = resources.files("orchestrator.sandbox") / "profiles"
    assert sorted(shipped) == sorted(p.name for p in folder.iterdir() if p.is_file())


# --- gVisor: only the setuid/setgid denials ----------------------------------------------------


def test_gvisor_profile_allows_everything_but_setid_bits() -> None:
    profile = gvisor_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    rules = profile["syscalls"]
    assert {r["action"] for r in rules} == {"SCMP_ACT_ERRNO"}
    assert {r["errnoRet"] for r in rules} == {errno.EPERM}  # runsc answers EPERM anyway
    denied = {name for r in rules for name in r["names"]}
    assert denied == set(MODE_ARGUMENT)
    for name, index in MODE_ARGUMENT.items():
        masks = sorted(
            a["valueTwo"]
            for r in rules
            if r["names"] == [name]
            for a in r["args"]
            if a["index"] == index
        )
        expected = [0o2000, 0o4000, 0o6000] * (2 if name in ("open", "openat") else 1)
        assert masks == sorted(expected), name
    for r in rules:  # open/openat: only when creating (else the mode is ignored, may be junk)
        if r["names"][0] in ("open", "openat"):
            flags = [a for a in r["args"] if a["index"] != MODE_ARGUMENT[r["names"][0]]]
            assert len(flags) == 1 and flags[0]["value"] == flags[0]["valueTwo"]
