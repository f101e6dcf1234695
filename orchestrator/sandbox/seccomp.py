"""oi's seccomp profile: moby's default, resolved for a sandbox, with oi's own denials. Pure.

Docker 20.10's built-in profile lets a block call ``io_uring_setup`` (a frequent path to kernel
escapes; newer Docker denies it), create ``AF_VSOCK`` sockets (on a VM they reach the
hypervisor's agents) and set the setuid/setgid bits on files it writes into the bind-mounted
workdir, where the bit is real on the host. So every runc sandbox gets this profile instead:

1. moby's current default (``profiles/moby-default.json``, vendored, see ``profiles/NOTICE``),
   resolved for a container with **no capabilities** (rules that need one drop out, rules that
   a capability would exclude stay) on the architectures oi supports, x86_64 and aarch64. Only
   native syscalls: the 32-bit compat ABIs (i386 ``int 0x80``, arm32) are left out of the
   filter, so the kernel refuses them outright; on i386 ``socketcall(SYS_SOCKET)`` takes the
   address family behind a pointer that seccomp cannot read, which would bypass rule 3;
   ``minKernel`` conditions stay for the engine to check against the running kernel;
2. ``io_uring_setup``/``_enter``/``_register`` and ``openat2`` fail with ENOSYS, the answer of
   a kernel without them, so libuv, liburing, tokio and glibc-less ``openat2`` users fall back
   (to a thread pool, or to ``openat``, whose mode argument rule 4 inspects; ``openat2`` takes
   it inside a struct). ENOSYS also differs from the default errno, which matters: runc
   silently drops a rule whose action equals the profile's default action;
3. ``socket`` and ``socketpair`` only for AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (glibc's
   ``if_nameindex``/``getifaddrs``, Python's ``socket.if_nameindex``, Node's
   ``os.networkInterfaces()`` and Chromium's address tracker read interfaces over
   NETLINK_ROUTE); every other family (AF_VSOCK, AF_ALG, AF_PACKET, AF_BLUETOOTH, AF_KEY, ...)
   fails with EAFNOSUPPORT, what a kernel without the family says, so programs that probe one
   take their fallback (as systemd's ``RestrictAddressFamilies`` and flatpak do);
4. no setuid/setgid bit: ``chmod``, ``fchmod``, ``fchmodat``, ``fchmodat2``, ``creat``,
   ``mkdir``, ``mkdirat``, ``mknod`` and ``mknodat`` are allowed only when
   ``(mode & 06000) == 0``; ``open``/``openat`` also when they create nothing (neither
   ``O_CREAT`` nor ``O_TMPFILE``: the kernel ignores the mode then, and callers may leave it
   unset). Anything else gets the default EPERM. These syscalls appear in no unconditional
   rule: libseccomp drops a conditional rule for a syscall that already has an unconditional
   one (and an unconditional rule added later erases the conditions). A syscall the host's
   libseccomp does not know (``fchmodat2`` in 2.5.4) is skipped by runc, then answered ENOSYS
   by runc's stub for syscalls newer than the filter: refused as well.

Everything else moby's profile allows stays allowed, so the profile is a superset of Docker's
default (what Python, Node, coreutils and headless Chromium with ``--no-sandbox`` run under)
apart from the denials above. ``docker_security_opt()`` is what ``build_spec`` passes: the
engine takes the profile's JSON text in ``security_opt``, not a path.
"""

from __future__ import annotations

import copy
import errno
import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from orchestrator.errors import SandboxError

Rule = dict[str, Any]

MOBY_PROFILE = "moby-default.json"
"""moby/profiles ``seccomp/default.json`` as vendored under ``orchestrator/sandbox/profiles``."""

SUPPORTED_ARCHES: Mapping[str, str] = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}
"""moby's names for the architectures oi supports (as in ``includes.arches``) -> libseccomp's."""

ENOSYS_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register", "openat2")
"""Denied with ENOSYS: io_uring's kernel surface, and calls whose arguments sit in a struct."""

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
SOCKET_SYSCALLS = ("socket", "socketpair")  # the family is argument 0 of both

SETID_BITS = 0o6000  # S_ISUID | S_ISGID
MODE_ARGUMENT: Mapping[str, int] = {
    # syscall -> index of its mode argument (x86_64 and aarch64 agree; aarch64 has only *at)
    "chmod": 1,  # chmod(path, mode)
    "fchmod": 1,  # fchmod(fd, mode)
    "fchmodat": 2,  # fchmodat(dirfd, path, mode)
    "fchmodat2": 2,  # fchmodat2(dirfd, path, mode, flags); Linux 6.6
    "creat": 1,  # creat(path, mode)
    "open": 2,  # open(path, flags, mode)
    "openat": 3,  # openat(dirfd, path, flags, mode)
    "mkdir": 1,  # mkdir(path, mode)
    "mkdirat": 2,  # mkdirat(dirfd, path, mode)
    "mknod": 1,  # mknod(path, mode, dev)
    "mknodat": 2,  # mknodat(dirfd, path, mode, dev)
}
OPEN_FLAGS_ARGUMENT: Mapping[str, int] = {"open": 1, "openat": 2}
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE; O_TMPFILE adds O_DIRECTORY. Same on x86_64, aarch64.

GOVERNED = frozenset((*ENOSYS_SYSCALLS, *SOCKET_SYSCALLS, *MODE_ARGUMENT))
"""Syscalls whose every rule is oi's: moby's rules for them are dropped."""


def _arg(index: int, op: str, value: int, value_two: int | None = None) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op}
    if value_two is not None:
        arg["valueTwo"] = value_two
    return arg


def _applies(rule: Rule, arch: str) -> bool:
    """Whether moby's rule holds for a container with no capabilities on ``arch``, the way
    Docker's ``setupSeccomp`` decides (minKernel aside, which the engine still checks)."""
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if arch in (excludes.get("arches") or ()):
        return False
    if includes.get("caps"):  # needs a capability the sandbox never has
        return False
    arches = includes.get("arches")
    return not arches or arch in arches


def resolve_for_sandbox(
    profile: Mapping[str, Any], arches: Iterable[str] = tuple(SUPPORTED_ARCHES)
) -> list[Rule]:
    """moby's rules that hold for a capability-less container on ``arches``.

    Capability conditions are gone from the result; a rule that holds on some of ``arches``
    only keeps ``includes.arches`` naming those, and ``minKernel`` conditions are kept.
    """
    wanted = list(arches)
    resolved: list[Rule] = []
    for rule in profile["syscalls"]:
        holds = [arch for arch in wanted if _applies(rule, arch)]
        if not holds:
            continue
        names = list(rule.get("names") or [rule["name"]])
        out: Rule = {"names": names, "action": rule["action"]}
        for key in ("errnoRet", "args", "comment"):
            if rule.get(key):
                out[key] = copy.deepcopy(rule[key])
        includes: dict[str, Any] = {}
        if len(holds) < len(wanted):
            includes["arches"] = holds
        if (rule.get("includes") or {}).get("minKernel"):
            includes["minKernel"] = rule["includes"]["minKernel"]
        if includes:
            out["includes"] = includes
        if (rule.get("excludes") or {}).get("minKernel"):
            out["excludes"] = {"minKernel": rule["excludes"]["minKernel"]}
        resolved.append(out)
    return resolved


def _without_governed(rules: list[Rule]) -> list[Rule]:
    """moby's rules minus every syscall oi governs (rules left with no name are dropped)."""
    kept: list[Rule] = []
    for rule in rules:
        names = [name for name in rule["names"] if name not in GOVERNED]
        if names:
            kept.append({**rule, "names": names})
    return kept


def _socket_rules() -> list[Rule]:
    """Allow the named families; every other value of the family argument (including ones
    with garbage in the upper 32 bits, which the kernel would truncate) gets EAFNOSUPPORT.
    One rule per value: runc turns several conditions on one argument into separate rules."""
    names = list(SOCKET_SYSCALLS)
    rules: list[Rule] = [
        {"names": names, "action": "SCMP_ACT_ALLOW", "args": [_arg(0, "SCMP_CMP_EQ", family)]}
        for family in SOCKET_FAMILIES
    ]
    refused = [value for value in range(max(SOCKET_FAMILIES)) if value not in SOCKET_FAMILIES]
    denial = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT}
    rules += [
        {"names": names, **denial, "args": [_arg(0, "SCMP_CMP_EQ", value)]} for value in refused
    ]
    rules.append(
        {
            "names": names,
            **denial,
            "args": [_arg(0, "SCMP_CMP_GT", max(SOCKET_FAMILIES))],
            "comment": "oi: socket families other than AF_UNIX, AF_INET, AF_INET6, AF_NETLINK",
        }
    )
    return rules


def _mode_rules() -> list[Rule]:
    """Allow file creation and mode changes only without the setuid/setgid bits."""
    rules: list[Rule] = [
        {
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [_arg(index, "SCMP_CMP_MASKED_EQ", SETID_BITS, 0)],
            "comment": "oi: no setuid/setgid bit (mode & 06000 == 0)",
        }
        for name, index in MODE_ARGUMENT.items()
    ]
    rules += [
        {
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [_arg(index, "SCMP_CMP_MASKED_EQ", O_CREAT | O_TMPFILE_BIT, 0)],
            "comment": "oi: opening without creating ignores the mode",
        }
        for name, index in OPEN_FLAGS_ARGUMENT.items()
    ]
    return rules


def build_profile(moby: Mapping[str, Any]) -> dict[str, Any]:
    """oi's profile from moby's default (see the module docstring for what changes and why)."""
    rules = _without_governed(resolve_for_sandbox(moby))
    rules.append(
        {
            "names": list(ENOSYS_SYSCALLS),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.ENOSYS,
            "comment": "oi: io_uring, and openat2 whose mode sits in a struct; ENOSYS: fall back",
        }
    )
    rules += _socket_rules()
    rules += _mode_rules()
    return {
        "defaultAction": moby["defaultAction"],
        "defaultErrnoRet": moby.get("defaultErrnoRet", errno.EPERM),
        "archMap": [
            {"architecture": native, "subArchitectures": []} for native in SUPPORTED_ARCHES.values()
        ],
        "syscalls": rules,
    }


def gvisor_profile() -> dict[str, Any]:
    """The profile for gVisor sandboxes: everything allowed (gVisor's own kernel is the
    barrier) but setting the setuid/setgid bits, which gVisor's gofer writes to the host.
    Only the runtime registered with ``--oci-seccomp`` applies it (``make setup`` does), and
    every rule is a denial with EPERM: Debian's runsc (2022-12) answers any errno rule with
    EPERM (gVisor issue 14688), so no rule here may want another errno."""
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    setid = (0o2000, 0o4000, 0o6000)  # each value of mode & 06000 that has a bit set
    rules: list[Rule] = [
        {"names": [name], **deny, "args": [_arg(index, "SCMP_CMP_MASKED_EQ", SETID_BITS, bits)]}
        for name, index in MODE_ARGUMENT.items()
        if name not in OPEN_FLAGS_ARGUMENT
        for bits in setid
    ]
    rules += [
        {
            "names": [name],
            **deny,
            "args": [
                _arg(OPEN_FLAGS_ARGUMENT[name], "SCMP_CMP_MASKED_EQ", creating, creating),
                _arg(index, "SCMP_CMP_MASKED_EQ", SETID_BITS, bits),
            ],
        }
        for name, index in MODE_ARGUMENT.items()
        if name in OPEN_FLAGS_ARGUMENT
        for creating in (O_CREAT, O_TMPFILE_BIT)
        for bits in setid
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [
            {"architecture": native, "subArchitectures": []} for native in SUPPORTED_ARCHES.values()
        ],
        "syscalls": rules,
    }


def load_moby_profile() -> dict[str, Any]:
    """The vendored moby default profile (package data)."""
    where = resources.files("orchestrator.sandbox") / "profiles" / MOBY_PROFILE
    try:
        profile: dict[str, Any] = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"cannot read oi's seccomp base profile {where}: {exc}; reinstall oi"
        ) from exc
    return profile


@cache
def _profile_json() -> str:
    return json.dumps(build_profile(load_moby_profile()), separators=(",", ":"))


def seccomp_profile() -> dict[str, Any]:
    """oi's profile as a dict (a fresh copy: callers may change it)."""
    profile: dict[str, Any] = json.loads(_profile_json())
    return profile


@cache
def docker_security_opt(isolation: str = "runc") -> str:
    """The ``security_opt`` entry that applies the profile for ``isolation`` (built once)."""
    if isolation == "gvisor":
        return "seccomp=" + json.dumps(gvisor_profile(), separators=(",", ":"))
    return "seccomp=" + _profile_json()
