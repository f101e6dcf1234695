"""Workdir quota: the bytes and files a session's blocks may add to the workdir.

``--max-file-size`` bounds one file; nothing else bounded the workdir, where one block wrote
2 GiB in 2.2 s. This module bounds the *net growth* of the workdir over a session (bytes as
allocated blocks, ``st_blocks * 512``; files as directory entries) and stops the block that
takes it past the bound.

Why a watcher. Filesystem project quotas (ext4/XFS ``prjquota``) would be exact, but they need
root and a filesystem mounted for them, which a user's working directory almost never is; a
size-limited scratch filesystem synced back would copy every byte a block writes (a 2 GB CSV
job pays it twice), break in-place appends to big files and hold the data in memory (tmpfs).
So oi watches:

- **O(1) trigger.** During a block, every 50 ms (down to 2 ms when little is left), the
  session's watcher thread reads ``statvfs`` of the workdir's filesystem(s). The drop in free
  blocks and inodes since the last exact count is an upper bound of what the workdir grew by
  (anyone's writes on the filesystem lower it). While the last count plus that drop stays
  under the limit, nothing else happens.
- **Exact confirmation.** When it might be over, the block's container is frozen (``docker
  pause``: a frozen block writes, renames and deletes nothing, so the walk sees one state), the
  workdir is walked (bytes and entries), the deleted files the block's processes still hold
  open are added (their blocks stay allocated until closed; read from ``/proc``), and then the
  block is killed while still frozen, or thawed. Walks take at most a quarter of a block's
  time (a cool-down of 3 x the walk), so other writers on the filesystem cannot stall it, except
  when the estimate is far past the bound (``COOLDOWN_MARGIN``): that is counted at once.
- **Session.** One walk before the session's first block is the baseline; each exact count
  re-anchors the trigger, and the anchor follows the filesystem's free space up (space freed
  elsewhere cannot hide the workdir's growth later). A block may take the workdir to the limit,
  or, if the session is already past it, no further than where the block began (so a block
  that deletes files can run).

What it guarantees and what not is in the README ("Workdir quota"). Pure parts
(``Usage``, ``WorkdirLimits``, ``Ledger``, ``poll_interval``) are table-tested; I/O sits behind
``Walker``, ``FreeReader`` and ``BlockControl``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from orchestrator.errors import ConfigError, SandboxError
from orchestrator.fsafe import Descent, descend, open_up

if TYPE_CHECKING:
    import docker

WORKDIR_EXIT = 73
"""``oi exec``'s exit code when the workdir limit stopped (or was passed by) the block:
sysexits' EX_CANTCREAT, "an output file cannot be created"."""

LimitKind = Literal["bytes", "files"]
Bounded = Literal["workdir", "environment"]

MIN_INTERVAL = 0.002
MAX_INTERVAL = 0.05
# How fast a block may start writing without warning: bursts into the page cache reach 3 GB/s
# here (dd, python), file creation ~30,000/s. Near the bound the polls come often enough that
# at this speed at most half of what is left is written between two of them.
ASSUMED_BYTES_PER_S = 4 * 1024**3
ASSUMED_FILES_PER_S = 100_000
WALK_COOLDOWN = 3.0  # after a walk taking w seconds, none for 3w: walks take <= 1/4 of a block
# ... unless the estimate is this far past the allowance (64 MiB / 1,000 files, or 1% of the
# limit): a cool-down is for others' small writes near the bound, never a window for a bomb.
COOLDOWN_MARGIN = (64 * 1024**2, 1000)
IDLE_EXIT = 60.0  # a session's watcher thread ends after this long without a block


@dataclass(frozen=True)
class Usage:
    """Bytes (allocated blocks) and files (directory entries), absolute or as a growth."""

    bytes: int = 0
    files: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.bytes + other.bytes, self.files + other.files)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.bytes - other.bytes, self.files - other.files)

    def part(self, kind: LimitKind) -> int:
        return self.bytes if kind == "bytes" else self.files

    def most(self, other: Usage) -> Usage:
        """The larger of each part."""
        return Usage(max(self.bytes, other.bytes), max(self.files, other.files))


@dataclass(frozen=True)
class WorkdirLimits:
    """How much the workdir may grow in one session (None: that part is not bounded)."""

    max_bytes: int | None = None
    max_files: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.max_bytes is None and self.max_files is None

    def allowance(self, at_start: Usage) -> Usage:
        """What a block starting at ``at_start`` may take the session's growth to: the limit,
        or where it began if the session is already past it (a clean-up block can run)."""
        big = 1 << 62
        return Usage(
            big if self.max_bytes is None else max(self.max_bytes, at_start.bytes),
            big if self.max_files is None else max(self.max_files, at_start.files),
        )

    def passed(self, growth: Usage, allowed: Usage) -> LimitKind | None:
        """Which part of ``growth`` is past what is ``allowed`` (bytes first), if any."""
        if self.max_bytes is not None and growth.bytes > allowed.bytes:
            return "bytes"
        if self.max_files is not None and growth.files > allowed.files:
            return "files"
        return None

    def limit_of(self, kind: LimitKind) -> int:
        value = self.max_bytes if kind == "bytes" else self.max_files
        assert value is not None
        return value


@dataclass(frozen=True)
class WorkdirOverrun:
    """The workdir passed its session limit during a block.

    ``grown`` is the session's growth (in ``kind`` units) when it was seen, exactly;
    ``earlier_blocks`` how many of the session's blocks ran before this one (their part of
    ``grown`` is not known exactly without a walk per block); ``stopped`` whether oi killed the
    block (False: it ended by itself first). For the session's ``environment`` (an absolute
    bound), ``grown`` is what it holds.
    """

    kind: LimitKind
    limit: int
    grown: int
    earlier_blocks: int
    stopped: bool
    where: Bounded = "workdir"


@dataclass(frozen=True)
class FsFree:
    """Free blocks (in bytes) and free inodes summed over the workdir's filesystems."""

    bytes: int
    files: int


@dataclass(frozen=True)
class Snapshot:
    """One walk of the workdir."""

    usage: Usage
    devices: dict[int, str]  # st_dev -> a directory on it: the filesystems to poll
    unreadable: frozenset[tuple[int, int]]  # (dev, ino) of directories it could not list
    # Something the walk could not see may hold what a block wrote: a folder of the walking
    # uid it could not list (blocks run as that uid: one may have locked it, and can unlock,
    # write and lock it again), or the tree changed under the walk.
    partial: bool = False

    def complete(self, known_unreadable: Collection[tuple[int, int]]) -> bool:
        """Did it see everything a block could have added? A directory that was unreadable
        at the baseline and that no block can open (another uid's) holds nothing new oi could
        count; a new one, or one of the blocks' uid, might."""
        return not self.partial and self.unreadable <= frozenset(known_unreadable)


class TreeCounter(Descent):
    """Counts a tree for a quota (``fsafe.descend``: any depth, no link followed): entries,
    and the blocks of every inode once (a hard link adds a name, no data). Entries vanishing
    meanwhile are skipped; folders it may not open are noted. ``reopen``: the tree is oi's own
    (a session's environment), so a folder a block locked is opened back up and counted."""

    def __init__(self, *, reopen: bool = False) -> None:
        self.reopen = reopen
        self.bytes = self.files = 0
        self.seen: set[tuple[int, int]] = set()
        self.devices: dict[int, str] = {}
        self.unreadable: set[tuple[int, int]] = set()
        self.partial = False

    def enter(self, fd: int, path: Path) -> list[str]:
        folders = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                self.files += 1
                if stat.S_ISDIR(info.st_mode):
                    folders.append(entry.name)
                    self.devices.setdefault(info.st_dev, str(path / entry.name))
                elif info.st_nlink > 1:
                    key = (info.st_dev, info.st_ino)
                    if key in self.seen:
                        continue
                    self.seen.add(key)
                self.bytes += info.st_blocks * 512
        return folders

    def open_child(self, fd: int, name: str, path: Path) -> int | None:
        try:
            return super().open_child(fd, name, path)
        except PermissionError:
            if self.reopen:
                with contextlib.suppress(OSError):
                    open_up(fd, name)
                with contextlib.suppress(OSError):
                    return super().open_child(fd, name, path)
        except OSError:
            pass
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None  # gone meanwhile
        self.unreadable.add((info.st_dev, info.st_ino))
        if info.st_uid == os.geteuid():
            self.partial = True
        return None

    def snapshot(self, root: Path, *, one_device: bool = False) -> Snapshot:
        """Walk ``root`` and say what it holds (a walk the tree changed under is partial)."""
        top = os.lstat(root)
        self.devices[top.st_dev] = str(root)
        try:
            descend(root, self)
        except FileNotFoundError:
            if not os.path.lexists(root):
                raise
            self.partial = True
        except (ConfigError, OSError):
            self.partial = True
        devices = {top.st_dev: str(root)} if one_device else self.devices
        usage = Usage(self.bytes + top.st_blocks * 512, self.files)
        return Snapshot(usage, devices, frozenset(self.unreadable), self.partial)


def walk(root: Path) -> Snapshot:
    """Count the workdir (``TreeCounter``). Crosses into filesystems mounted below it and names
    them in ``devices``; folders it may not open are reported, not an error."""
    return TreeCounter().snapshot(root)


def read_free(paths: Iterable[str]) -> FsFree:
    """``statvfs`` of each filesystem: free blocks in bytes, free inodes. A filesystem that
    keeps no inode count (btrfs reports 0) adds nothing to ``files``: there the file trigger
    is blind and only walks count files (the README says so)."""
    free_bytes = free_files = 0
    for path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        free_bytes += st.f_bfree * st.f_frsize
        free_files += st.f_ffree
    return FsFree(free_bytes, free_files)


Walker = Callable[[Path], Snapshot]
FreeReader = Callable[[Iterable[str]], FsFree]


@dataclass
class Ledger:
    """The session's account (pure): an upper bound of how much the workdir grew.

    ``used`` is the growth at the last exact count (the ``anchor``: the filesystems' free
    space then). Any further growth lowers free space, so ``used + (anchor - now)`` stays an
    upper bound; free space rising above the anchor (space freed anywhere) moves the anchor up,
    since nothing the workdir gains later may hide behind it. ``held`` is the part of ``used``
    in deleted files a running block keeps open; they go when its processes do.
    """

    baseline: Usage
    anchor: FsFree
    used: Usage = field(default_factory=Usage)
    held: Usage = field(default_factory=Usage)

    def estimate(self, now: FsFree) -> Usage:
        self.anchor = FsFree(max(self.anchor.bytes, now.bytes), max(self.anchor.files, now.files))
        return self.used + Usage(self.anchor.bytes - now.bytes, self.anchor.files - now.files)

    def record(self, growth: Usage, held: Usage, at: FsFree) -> None:
        """An exact count (or a safe upper bound of one) taken when free space was ``at``."""
        self.used, self.held, self.anchor = growth, held, at

    def release_held(self) -> None:
        """The block's processes are gone, and with them its deleted-but-open files."""
        self.used, self.held = self.used - self.held, Usage()


def poll_interval(remaining: Usage, bytes_rate: float = 0.0, files_rate: float = 0.0) -> float:
    """Seconds to the next ``statvfs``: 50 ms, sooner when what is left of the allowance could
    be used up before then (at the observed rate, and at least at the assumed one), so that the
    overshoot stays a fraction of what is left."""
    soonest = MAX_INTERVAL
    for left, rate, assumed in (
        (remaining.bytes, bytes_rate, ASSUMED_BYTES_PER_S),
        (remaining.files, files_rate, ASSUMED_FILES_PER_S),
    ):
        soonest = min(soonest, max(left, 0) / max(rate, assumed) / 2)
    return max(MIN_INTERVAL, soonest)


class BlockControl(Protocol):
    """What the watcher may do to the block's container."""

    def freeze(self) -> bool:
        """Stop every process of the block where it is; False if that failed."""
        ...

    def thaw(self) -> None: ...

    def kill(self) -> None:
        """SIGKILL the block (called while frozen, so it writes nothing more)."""
        ...

    def held(self, devices: Collection[int]) -> Usage:
        """Deleted files on ``devices`` that the block's processes still hold open."""
        ...


class DockerBlockControl:
    """``BlockControl`` for a container: docker pause/unpause/kill, and ``/proc`` for the
    deleted files its processes hold (readable when oi runs as the block's uid or as root;
    under gVisor only as root, since the files are held by gVisor's own processes)."""

    def __init__(
        self,
        api: docker.APIClient,
        container_id: str,
        proc: Path = Path("/proc"),
        *,
        thaw_to_kill: bool = False,
    ) -> None:
        self._api = api
        self._id = container_id
        self._proc = proc
        # gVisor cannot signal a paused sandbox: Docker then reports the container exited,
        # but the sandbox stays paused and its shim lives on after removal (measured: one
        # leaked shim per kill). There, thaw first and kill at once.
        self._thaw_to_kill = thaw_to_kill

    def freeze(self) -> bool:
        try:
            self._api.pause(self._id)
        except Exception:  # exited already, or the engine refused: walk without freezing
            return False
        return True

    def thaw(self) -> None:
        with contextlib.suppress(Exception):
            self._api.unpause(self._id)

    def kill(self) -> None:
        if self._thaw_to_kill:
            self.thaw()
        with contextlib.suppress(Exception):  # it may have ended on its own meanwhile
            self._api.kill(self._id)

    def held(self, devices: Collection[int]) -> Usage:
        found: dict[tuple[int, int], int] = {}
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for fd in os.scandir(self._proc / pid / "fd"):
                    with contextlib.suppress(OSError):
                        st = os.stat(fd.path)  # follows the magic link to the open inode
                        if st.st_nlink == 0 and st.st_dev in devices and stat.S_ISREG(st.st_mode):
                            found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        return Usage(sum(found.values()), len(found))

    def _pids(self) -> list[str]:
        """Host processes in the container's cgroup (its id is in their cgroup path, with
        cgroup v1 and v2, and the cgroupfs and systemd drivers alike)."""
        pids = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._proc):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        if self._id in (self._proc / entry.name / "cgroup").read_text():
                            pids.append(entry.name)
        return pids


class WorkdirQuota:
    """One session's workdir bound. ``prepare()`` starts its watcher thread, whose first job is
    the baseline walk; ``watch(control)`` gives a ``BlockWatch`` per block, which that thread
    polls while the block runs. One thread per session, not per block: starting and joining a
    thread costs 0.1-0.8 ms, a block ``print(1)`` 12 ms. Thread-safe."""

    def __init__(
        self,
        root: Path,
        limits: WorkdirLimits,
        *,
        walker: Walker = walk,
        free: FreeReader = read_free,
        clock: Callable[[], float] = time.monotonic,
        where: Bounded = "workdir",
        absolute: bool = False,
    ) -> None:
        self.root = root
        self.limits = limits
        self.where = where
        self._absolute = absolute  # bound what it holds, not what it grew by in the session
        self._walker = walker
        self._free = free
        self._clock = clock
        self._lock = threading.Lock()  # the ledger
        self._cond = threading.Condition()  # the watched blocks and the thread
        self._active: set[BlockWatch] = set()
        self._thread: threading.Thread | None = None
        self._baselined = threading.Event()
        self._baseline_error: BaseException | None = None
        self._ledger: Ledger | None = None
        self._devices: dict[int, str] = {}
        self._unreadable: frozenset[tuple[int, int]] = frozenset()
        self._blocks = 0

    def prepare(self) -> None:
        """Start the watcher thread (and with it the baseline walk) if it is not running; blocks
        wait for the baseline before their program starts."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"oi-{self.where}-watch", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        if not self._baselined.is_set():
            self._take_baseline()
        if self._ledger is None:  # no baseline: the blocks are refused (``_ready``)
            with self._cond:
                self._thread = None
            return
        while True:
            with self._cond:
                due = self._due_watches()
                if due is None:
                    self._thread = None  # idle: the next block starts a new one
                    return
            for watch in due:
                watch.poll()

    def _due_watches(self) -> list[BlockWatch] | None:
        """Wait (holding ``_cond``) until some watch is due; None after IDLE_EXIT with none."""
        while True:
            if not self._active:
                if not self._cond.wait(IDLE_EXIT) and not self._active:
                    return None
                continue
            now = self._clock()
            soonest = min(watch.due for watch in self._active)
            if soonest <= now:
                return [watch for watch in self._active if watch.due <= now]
            self._cond.wait(min(soonest - now, IDLE_EXIT))

    def _take_baseline(self) -> None:
        try:
            # No block runs yet: what others write during the walk is not the session's.
            snapshot = self._walker(self.root)
            free = self._free(snapshot.devices.values())
            if self._absolute:
                ledger = Ledger(Usage(), free, used=snapshot.usage)
            else:
                ledger = Ledger(snapshot.usage, free)
        except Exception as exc:  # handed to the block that waits for it
            self._baseline_error = exc
        else:
            with self._lock:
                self._devices = dict(snapshot.devices)
                self._unreadable = snapshot.unreadable
                self._ledger = ledger
        finally:
            self._baselined.set()

    def _ready(self) -> Ledger:
        self.prepare()
        self._baselined.wait()
        if self._ledger is None:
            error = self._baseline_error
            raise SandboxError(
                f"measuring the {self.where} {self.root} for its quota failed: {error}; check "
                "that it exists and is readable"
            ) from error
        return self._ledger

    def watch(self, control: BlockControl) -> BlockWatch:
        """A watch for one block, measured as it starts (call before sending the program)."""
        ledger = self._ready()
        now = self.free_now()
        with self._lock:
            start = ledger.estimate(now)
        if self.limits.passed(start, self.limits.allowance(Usage())):
            # Past the limit already (or others wrote): the block's allowance depends on
            # exactly where it starts. Nothing runs in its container yet, so no freeze.
            start = self.count(Usage(), now)
        with self._lock:
            earlier, self._blocks = self._blocks, self._blocks + 1
        return BlockWatch(self, control, start, earlier)

    def _activate(self, watch: BlockWatch) -> None:
        with self._cond:
            self._active.add(watch)
            self._cond.notify()
        self.prepare()  # a thread that went idle comes back

    def _deactivate(self, watch: BlockWatch) -> None:
        with self._cond:
            self._active.discard(watch)

    # --- shared by the watches ---------------------------------------------------------------

    def free_now(self) -> FsFree:
        return self._free(self._devices.values())

    def estimate(self, now: FsFree) -> Usage:
        assert self._ledger is not None
        with self._lock:
            return self._ledger.estimate(now)

    def count(self, held: Usage, at: FsFree) -> Usage:
        """Walk now, record the exact growth (plus ``held``), and return it. If the walk could
        not list a directory that is new since the baseline, the estimate at ``at`` stands
        in for it (an upper bound): a block cannot hide files from oi by chmod 000."""
        assert self._ledger is not None
        snapshot = self._walker(self.root)
        with self._lock:
            growth = snapshot.usage - self._ledger.baseline + held
            if not snapshot.complete(self._unreadable):
                growth = growth.most(self._ledger.estimate(at))
            self._ledger.record(growth, held, at)
        return growth

    def release_held(self) -> None:
        assert self._ledger is not None
        with self._lock:
            self._ledger.release_held()

    @property
    def devices(self) -> frozenset[int]:
        return frozenset(self._devices)

    def clock(self) -> float:
        return self._clock()


class BlockWatch:
    """Watches one block: ``start()`` when its program is sent, ``stop()`` before the runner
    stops or waits for the container, ``result()`` once it has ended. The session's watcher
    thread calls ``poll()`` whenever ``due``."""

    def __init__(
        self, quota: WorkdirQuota, control: BlockControl, start: Usage, earlier_blocks: int = 0
    ) -> None:
        self._quota = quota
        self._control = control
        self.earlier_blocks = earlier_blocks
        self.start_growth = start  # an upper bound (exact when the session was already past)
        self.allowed = quota.limits.allowance(start)
        limits = quota.limits
        self._urgent = self.allowed + Usage(
            max(COOLDOWN_MARGIN[0], (limits.max_bytes or 0) // 100),
            max(COOLDOWN_MARGIN[1], (limits.max_files or 0) // 100),
        )
        self.overrun: WorkdirOverrun | None = None  # set by the watcher when it killed the block
        self.walks = 0
        self.due = 0.0
        self._busy = threading.Lock()  # held by a poll (and its walk): stop() waits for it
        self._stopped = False
        self._next_walk = 0.0
        self._last: tuple[FsFree, float] | None = None

    def start(self) -> None:
        quota = self._quota
        now = quota.free_now()
        self._last = (now, quota.clock())
        self.due = quota.clock() + poll_interval(self.allowed - quota.estimate(now))
        quota._activate(self)

    def stop(self) -> None:
        """Stop watching (waits for a walk under way, so the container is thawed or killed)."""
        self._quota._deactivate(self)
        with self._busy:
            self._stopped = True

    @property
    def stopped_the_block(self) -> bool:
        return self.overrun is not None

    def result(self) -> WorkdirOverrun | None:
        """After the block ended: the overrun, if the watcher stopped it or it passed the bound
        in its last moments (one ``statvfs``; a walk only when that says it may have)."""
        quota = self._quota
        quota.release_held()
        if self.overrun is not None:
            # Count again now that it is gone: the kill may have let a last write through
            # (the engine thaws a frozen container to kill it). Deleted files it held are
            # freed by now, so the count at the decision stays if it is larger.
            final = quota.count(Usage(), quota.free_now()).part(self.overrun.kind)
            self.overrun = replace(self.overrun, grown=max(final, self.overrun.grown))
            return self.overrun
        now = quota.free_now()
        if quota.limits.passed(quota.estimate(now), self.allowed) is None:
            return None
        growth = quota.count(Usage(), now)
        kind = quota.limits.passed(growth, self.allowed)
        return None if kind is None else self._overrun(kind, growth, stopped=False)

    def _overrun(self, kind: LimitKind, growth: Usage, *, stopped: bool) -> WorkdirOverrun:
        return WorkdirOverrun(
            kind,
            self._quota.limits.limit_of(kind),
            growth.part(kind),
            self.earlier_blocks,
            stopped,
            self._quota.where,
        )

    def poll(self) -> None:
        """One ``statvfs``; a walk if it may be past the bound; the next poll's time."""
        with self._busy:
            if not self._stopped and self.overrun is None:
                try:
                    self._poll()
                except Exception:  # the workdir vanished, say: nothing left to protect in it
                    self._stopped = True
            done = self._stopped or self.overrun is not None
        if done:
            self._quota._deactivate(self)

    def _poll(self) -> None:
        quota = self._quota
        now, now_time = quota.free_now(), quota.clock()
        estimate = quota.estimate(now)
        if quota.limits.passed(estimate, self.allowed) and (
            now_time >= self._next_walk or quota.limits.passed(estimate, self._urgent)
        ):
            if self._confirm():
                return
            now, now_time = quota.free_now(), quota.clock()
            estimate = quota.estimate(now)
        assert self._last is not None
        last_free, last_time = self._last
        elapsed = max(now_time - last_time, 1e-6)
        interval = poll_interval(
            self.allowed - estimate,
            (last_free.bytes - now.bytes) / elapsed,
            (last_free.files - now.files) / elapsed,
        )
        self._last = (now, now_time)
        self.due = now_time + interval

    def _confirm(self) -> bool:
        """Freeze, count exactly, then kill (still frozen) or thaw. True if it killed."""
        quota = self._quota
        began = quota.clock()
        frozen = self._control.freeze()
        try:
            at = quota.free_now()
            growth = quota.count(self._control.held(quota.devices), at)
            self.walks += 1
            kind = quota.limits.passed(growth, self.allowed)
            if kind is not None:
                self._control.kill()
                self.overrun = self._overrun(kind, growth, stopped=True)
                return True
            return False
        finally:
            if frozen and self.overrun is None:
                self._control.thaw()
            self._next_walk = quota.clock() + WALK_COOLDOWN * (quota.clock() - began)


def quota_for(root: Path, max_bytes: int | None, max_files: int | None) -> WorkdirQuota | None:
    """The production quota of a session, or None when nothing is bounded."""
    limits = WorkdirLimits(max_bytes, max_files)
    return None if limits.unlimited else WorkdirQuota(root, limits)
