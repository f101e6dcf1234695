"""The workdir quota without Docker: the pure account (tables), the walk on a real folder, the
watcher driven by a fake filesystem and a fake container, and the words the model and the
person get. The real engine is in tests/security/test_workdir_quota.py."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.approval import Approval
from orchestrator.drive import drive
from orchestrator.errors import SandboxError
from orchestrator.events import BlockResult, Event
from orchestrator.languages import Language
from orchestrator.llm.prompts import format_result_for_model, workdir_limit_words
from orchestrator.render import HumanRenderer
from orchestrator.sandbox.container import ExecResult
from orchestrator.sandbox.workdir_quota import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    WORKDIR_EXIT,
    FsFree,
    Ledger,
    Snapshot,
    Usage,
    WorkdirLimits,
    WorkdirOverrun,
    WorkdirQuota,
    poll_interval,
    walk,
)
from orchestrator.session import Session
from orchestrator.settings import Settings
from tests.deep import DEPTH, nest, shallow_stack
from tests.fakes import FakeRunner, ScriptedModel

MiB = 1024**2
BIG = 1 << 62

# --- the pure account -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "start", "allowed"),
    [
        (WorkdirLimits(64 * MiB, 2000), Usage(), Usage(64 * MiB, 2000)),
        (WorkdirLimits(64 * MiB, 2000), Usage(10 * MiB, 5), Usage(64 * MiB, 2000)),
        # Past the limit already: the block may not grow the workdir beyond where it began.
        (WorkdirLimits(64 * MiB, 2000), Usage(70 * MiB, 2500), Usage(70 * MiB, 2500)),
        (WorkdirLimits(64 * MiB, None), Usage(1, 10**9), Usage(64 * MiB, BIG)),
        (WorkdirLimits(None, 10), Usage(10**12, 0), Usage(BIG, 10)),
    ],
)
def test_a_blocks_allowance(limits: WorkdirLimits, start: Usage, allowed: Usage) -> None:
    assert limits.allowance(start) == allowed


@pytest.mark.parametrize(
    ("growth", "passed"),
    [
        (Usage(64 * MiB, 2000), None),  # at the limit is within it
        (Usage(64 * MiB + 1, 0), "bytes"),
        (Usage(0, 2001), "files"),
        (Usage(65 * MiB, 3000), "bytes"),  # bytes are named first
        (Usage(-5 * MiB, -10), None),  # a session that deleted files
    ],
)
def test_which_limit_is_passed(growth: Usage, passed: str | None) -> None:
    limits = WorkdirLimits(64 * MiB, 2000)
    assert limits.passed(growth, limits.allowance(Usage())) == passed


def test_unbounded_parts_are_never_passed() -> None:
    assert WorkdirLimits(None, None).unlimited
    assert WorkdirLimits(None, 5).passed(Usage(BIG - 1, 5), Usage(BIG, 5)) is None


# (events in order: ("free", bytes, files) is a statvfs reading, ("record", growth, held, at)
#  an exact count; then the expected estimate after the last reading)
LEDGER_CASES = [
    ("nothing changed", [("free", 1000, 100)], Usage(0, 0)),
    ("the workdir grew", [("free", 900, 90)], Usage(100, 10)),
    (
        "space freed elsewhere cannot hide later growth (the anchor follows free space up)",
        [("free", 5000, 100), ("free", 4000, 100)],
        Usage(1000, 0),
    ),
    (
        "an exact count re-anchors",
        [("free", 500, 50), ("record", Usage(20, 2), Usage(), FsFree(500, 50)), ("free", 490, 49)],
        Usage(30, 3),
    ),
    (
        "deleted files held open count until released",
        [
            ("record", Usage(300, 1), Usage(300, 1), FsFree(700, 99)),
            ("release",),
            ("free", 1000, 100),
        ],
        Usage(0, 0),
    ),
]


@pytest.mark.parametrize(
    ("name", "events", "estimate"), LEDGER_CASES, ids=[c[0] for c in LEDGER_CASES]
)
def test_the_ledger_is_an_upper_bound(name: str, events: list, estimate: Usage) -> None:
    ledger = Ledger(baseline=Usage(10_000, 50), anchor=FsFree(1000, 100))
    result = Usage()
    for event in events:
        if event[0] == "free":
            result = ledger.estimate(FsFree(event[1], event[2]))
        elif event[0] == "record":
            ledger.record(*event[1:])
        else:
            ledger.release_held()
    assert result == estimate


@pytest.mark.parametrize(
    ("remaining", "bytes_rate", "interval"),
    [
        (Usage(4 * 1024**3, 100_000), 0.0, MAX_INTERVAL),  # plenty left: 50 ms
        (Usage(64 * MiB, 100_000), 0.0, 64 * MiB / (4 * 1024**3) / 2),  # ~8 ms, assumed rate
        (Usage(128 * MiB, 100_000), 8 * 1024**3, 128 * MiB / (8 * 1024**3) / 2),  # faster seen
        (Usage(1, 100_000), 0.0, MIN_INTERVAL),  # never busier than 5 ms
        (Usage(-5, -5), 0.0, MIN_INTERVAL),
        (
            Usage(4 * 1024**3, 100),
            0.0,
            max(MIN_INTERVAL, 100 / 100_000 / 2),
        ),
    ],
)
def test_poll_interval(remaining: Usage, bytes_rate: float, interval: float) -> None:
    assert poll_interval(remaining, bytes_rate) == pytest.approx(interval)


# --- the walk, on a real folder -----------------------------------------------------------------


def test_the_walk_counts_allocated_blocks_and_entries(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    before = walk(root)
    (root / "data").write_bytes(b"x" * 1_000_000)
    (root / "sub").mkdir()
    (root / "sub" / "small").write_bytes(b"y")
    after = walk(root)
    grown = after.usage - before.usage
    assert grown.files == 3
    on_disk = sum(
        os.lstat(p).st_blocks * 512 for p in (root / "data", root / "sub", root / "sub" / "small")
    )
    assert grown.bytes == on_disk >= 1_000_000


def test_sparse_files_count_what_they_allocate(tmp_path: Path) -> None:
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB apparent, nothing allocated
    assert walk(tmp_path).usage.bytes < MiB


def test_hard_links_are_names_but_their_data_counts_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"z" * 200_000)
    one = walk(tmp_path).usage
    for i in range(5):
        os.link(tmp_path / "a", tmp_path / f"link{i}")
    six = walk(tmp_path).usage
    assert six.files == one.files + 5
    assert six.bytes - one.bytes < 8192  # only directory space, not 5 more copies


def test_symlinks_are_entries_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"b" * 2_000_000)
    root = tmp_path / "w"
    root.mkdir()
    (root / "to-big").symlink_to(outside / "big")
    (root / "to-dir").symlink_to(outside)
    usage = walk(root).usage
    assert usage.files == 2 and usage.bytes < 100_000


def test_a_new_unreadable_directory_makes_the_walk_incomplete() -> None:
    seen = Snapshot(Usage(), {}, frozenset({(1, 5)}))
    assert seen.complete({(1, 5)})  # unreadable already at the baseline (another uid's)
    assert not seen.complete(set())
    # One of the blocks' uid: a block can unlock it, write, and lock it again.
    assert not Snapshot(Usage(), {}, frozenset({(1, 5)}), partial=True).complete({(1, 5)})


def test_a_tree_deeper_than_path_max_is_counted_to_the_bottom(tmp_path: Path) -> None:
    """A block may nest folders past PATH_MAX to hide a file from a path-based walk."""
    from orchestrator.fsafe import remove_tree

    root = tmp_path / "w"
    root.mkdir()
    fd = nest(root)
    with os.fdopen(os.open("big", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), "wb") as out:
        out.write(os.urandom(3 * MiB))
    os.close(fd)
    try:
        with shallow_stack():
            snapshot = walk(root)
        assert snapshot.usage.files == DEPTH + 1 and snapshot.usage.bytes >= 3 * MiB
        assert snapshot.complete(set())
    finally:
        remove_tree(root)


# --- the watcher, with a fake filesystem and a fake container -----------------------------------


class FakeDisk:
    """A filesystem: the workdir's files (bytes, entries) and writes by others."""

    def __init__(self, free: int = 10**12, inodes: int = 10**7) -> None:
        self.lock = threading.Lock()
        self.work = Usage()
        self.others = Usage()
        self.unlinked = Usage()  # deleted files still open: on the disk, not in the folder
        self.size, self.inodes = free, inodes

    def write(self, nbytes: int = 0, files: int = 0, *, other: bool = False) -> None:
        with self.lock:
            if other:
                self.others += Usage(nbytes, files)
            else:
                self.work += Usage(nbytes, files)

    def free(self, _paths: Iterable[str]) -> FsFree:
        with self.lock:
            used = self.work + self.others + self.unlinked
            return FsFree(self.size - used.bytes, self.inodes - used.files)

    def walker(self, _root: Path) -> Snapshot:
        with self.lock:
            return Snapshot(self.work, {1: "/w"}, frozenset())


class FakeBlock:
    """A container: writes to the disk from a thread until frozen or killed."""

    def __init__(
        self,
        disk: FakeDisk,
        per_step: Usage | None = None,
        held: Usage | None = None,
        freeze_takes: float = 0.0,
    ) -> None:
        self.freeze_takes = freeze_takes
        self.disk = disk
        self.per_step = per_step or Usage()
        self.held_files = held or Usage()
        self.calls: list[str] = []
        self.frozen = threading.Event()
        self.killed = threading.Event()

    def freeze(self) -> bool:
        self.calls.append("freeze")
        self.frozen.set()
        time.sleep(self.freeze_takes)  # docker pause takes 20-90 ms
        return True

    def thaw(self) -> None:
        self.calls.append("thaw")
        self.frozen.clear()

    def kill(self) -> None:
        self.calls.append("kill")
        self.killed.set()

    def held(self, devices: Collection[int]) -> Usage:
        return self.held_files

    def run(self, seconds: float) -> None:
        """Write ``per_step`` every ms for ``seconds`` unless frozen; stop when killed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.killed.is_set():
            if not self.frozen.is_set():
                self.disk.write(self.per_step.bytes, self.per_step.files)
            time.sleep(0.001)


def quota(disk: FakeDisk, **limits: int | None) -> WorkdirQuota:
    return WorkdirQuota(Path("/w"), WorkdirLimits(**limits), walker=disk.walker, free=disk.free)


def run_block(q: WorkdirQuota, block: FakeBlock, seconds: float) -> WorkdirOverrun | None:
    watch = q.watch(block)
    watch.start()
    block.run(seconds)
    watch.stop()
    return watch.result()


def test_a_block_under_the_bound_is_never_frozen() -> None:
    disk = FakeDisk()
    block = FakeBlock(disk, per_step=Usage(10_000, 0))
    assert run_block(quota(disk, max_bytes=64 * MiB, max_files=2000), block, 0.2) is None
    assert block.calls == []


def test_a_byte_bomb_is_frozen_counted_and_killed_without_a_thaw() -> None:
    disk = FakeDisk()
    block = FakeBlock(disk, per_step=Usage(MiB, 0))  # ~1 GiB/s
    overrun = run_block(quota(disk, max_bytes=64 * MiB, max_files=2000), block, 5)
    assert overrun is not None and overrun.stopped and overrun.kind == "bytes"
    assert overrun.limit == 64 * MiB < overrun.grown < 64 * MiB + 32 * MiB
    assert block.calls == ["freeze", "kill"]
    assert disk.work.bytes == overrun.grown  # nothing written after the freeze


def test_a_file_bomb_is_stopped_on_inodes() -> None:
    disk = FakeDisk()
    block = FakeBlock(disk, per_step=Usage(0, 30))
    overrun = run_block(quota(disk, max_bytes=64 * MiB, max_files=2000), block, 5)
    assert overrun is not None and overrun.kind == "files" and 2000 < overrun.grown < 3000


def test_other_writers_cost_a_walk_but_never_a_stop() -> None:
    disk = FakeDisk()
    block = FakeBlock(disk, per_step=Usage(1000, 0))
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    watch = q.watch(block)
    watch.start()
    disk.write(500 * MiB, 50_000, other=True)  # a download elsewhere on the filesystem
    block.run(0.3)
    watch.stop()
    assert watch.result() is None
    assert block.calls[:2] == ["freeze", "thaw"] and "kill" not in block.calls
    assert watch.walks >= 1


def test_a_bomb_right_after_a_false_alarm_gets_no_cool_down_window() -> None:
    """After a walk that others' writes caused, walks wait 3x as long as it took (here 0.6 s)
    unless the estimate is far past the bound: a bomb then is stopped within that margin,
    not after the cool-down (which would let it write ~600 MiB more)."""
    disk = FakeDisk()
    block = FakeBlock(disk, freeze_takes=0.2)
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    watch = q.watch(block)
    watch.start()
    disk.write(500 * MiB, other=True)
    deadline = time.monotonic() + 5
    while block.calls[-1:] != ["thaw"] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert block.calls == ["freeze", "thaw"]  # a false alarm: not the workdir's growth
    block.per_step = Usage(MiB, 0)
    block.run(5)
    watch.stop()
    overrun = watch.result()
    assert overrun is not None and overrun.stopped
    assert overrun.grown < 64 * MiB + 64 * MiB + 40 * MiB


def test_deleted_files_held_open_count() -> None:
    """``f = open('x', 'wb'); os.unlink('x'); f.write(...)``: the walk sees nothing, the space is
    taken until the block ends, and the fds of its processes show it."""
    disk = FakeDisk()
    block = FakeBlock(disk, held=Usage(100 * MiB, 1))
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    watch = q.watch(block)
    watch.start()
    disk.unlinked = Usage(100 * MiB, 1)  # the filesystem sees it, the walk does not
    block.run(0.3)
    watch.stop()
    overrun = watch.result()
    assert overrun is not None and overrun.stopped and overrun.grown >= 100 * MiB


def test_the_bound_is_the_sessions_and_accumulates_across_blocks() -> None:
    disk = FakeDisk()
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    for _ in range(2):
        block = FakeBlock(disk)
        watch = q.watch(block)
        disk.write(30 * MiB, 1)  # each block writes 30 MiB and ends
        watch.stop()
        assert watch.result() is None
    third = FakeBlock(disk, per_step=Usage(MiB, 0))
    overrun = run_block(q, third, 5)
    assert overrun is not None and overrun.earlier_blocks == 2 and overrun.grown > 64 * MiB
    assert disk.work.bytes < 64 * MiB + 32 * MiB


def test_a_block_that_passes_the_bound_and_ends_at_once_is_reported() -> None:
    disk = FakeDisk()
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    watch = q.watch(FakeBlock(disk))
    disk.write(80 * MiB, 1)  # faster than any poll
    watch.stop()
    overrun = watch.result()
    assert overrun is not None and not overrun.stopped and overrun.grown == 80 * MiB + 0


def test_past_the_bound_a_clean_up_block_runs_and_a_growing_one_does_not() -> None:
    disk = FakeDisk()
    q = quota(disk, max_bytes=64 * MiB, max_files=2000)
    watch = q.watch(FakeBlock(disk))
    disk.write(80 * MiB, 1)
    watch.stop()
    assert watch.result() is not None
    cleanup = FakeBlock(disk, per_step=Usage(-MiB, 0))
    assert run_block(q, cleanup, 0.05) is None and "kill" not in cleanup.calls
    grower = FakeBlock(disk, per_step=Usage(MiB, 0))
    overrun = run_block(q, grower, 5)
    assert overrun is not None and overrun.stopped


def test_without_the_quota_the_same_block_writes_past_the_bound() -> None:
    """Positive control for the fake: the bomb does write past 64 MiB when nothing watches."""
    disk = FakeDisk()
    FakeBlock(disk, per_step=Usage(MiB, 0)).run(0.3)
    assert disk.work.bytes > 64 * MiB


def test_a_baseline_that_cannot_be_taken_is_an_error(tmp_path: Path) -> None:
    q = WorkdirQuota(tmp_path / "gone", WorkdirLimits(64 * MiB, None))
    with pytest.raises(SandboxError, match=r"measuring the workdir .*gone"):
        q.watch(FakeBlock(FakeDisk()))


# --- the words ----------------------------------------------------------------------------------


def overrun(**changes: object) -> WorkdirOverrun:
    return dataclasses.replace(WorkdirOverrun("bytes", 2 * 1024**3, 2254857830, 0, True), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hit", "words"),
    [
        (
            overrun(),
            "stopped: the workdir limit of 2 GiB was reached (the block added 2.1 GiB); the block "
            "was killed. Delete files you do not need, or write less.",
        ),
        (
            overrun(kind="files", limit=2000, grown=2105),
            "stopped: the workdir limit of 2,000 files was reached (the block added 2,105 files)",
        ),
        (
            overrun(earlier_blocks=2, grown=70 * MiB + 200 * 1024, limit=64 * MiB),
            "stopped: the workdir limit of 64 MiB for this session was reached (the workdir grew by "
            "70.2 MiB in this session: this block and 2 before it)",
        ),
        (
            overrun(stopped=False),
            "the workdir limit of 2 GiB was passed (the block added 2.1 GiB). Delete files you "
            "do not need before writing more.",
        ),
    ],
)
def test_the_words_for_the_model(hit: WorkdirOverrun, words: str) -> None:
    assert workdir_limit_words(hit).startswith(words)


def test_the_result_line_names_the_limit_first_when_oi_stopped_the_block() -> None:
    text = format_result_for_model(exit_code=137, stdout="10\n", workdir_overrun=overrun())
    first, *rest = text.splitlines()
    assert first.startswith("stopped: the workdir limit of 2 GiB was reached")
    assert rest == ["stdout:", "10"]
    passed = format_result_for_model(exit_code=0, workdir_overrun=overrun(stopped=False))
    assert passed.startswith("exit code 0; the workdir limit of 2 GiB was passed")
    timed = format_result_for_model(
        exit_code=137, timed_out=True, timeout_s=5, workdir_overrun=overrun(stopped=False)
    )
    assert timed.startswith("timed out after 5 s") and "was passed" in timed


def result_with(hit: WorkdirOverrun | None, code: str = "print(1)") -> ExecResult:
    import hashlib

    return ExecResult(
        "python", 137, "", "", 0, 0, 0, 0, 0.5, False, False, "c", "img", "sha256:x",
        hashlib.sha256(code.encode()).hexdigest(), workdir_overrun=hit,
    )  # fmt: skip


def test_exec_result_flags_and_exit_code() -> None:
    hit = result_with(overrun())
    assert hit.workdir_exceeded and hit.shell_exit_code == WORKDIR_EXIT == 73
    data = hit.to_dict()
    assert data["workdir_exceeded"] is True and data["workdir_overrun"]["kind"] == "bytes"
    assert not result_with(None).workdir_exceeded and result_with(None).shell_exit_code == 137


class OverrunRunner(FakeRunner):
    def run(self, language: Language, code: str | bytes, on_output=None, on_status=None):  # type: ignore[no-untyped-def]
        base = super().run(language, code, on_output, on_status)
        return dataclasses.replace(base, exit_code=137, workdir_overrun=overrun())


def test_the_session_reports_it_to_the_model_and_the_person(tmp_path: Path) -> None:
    model = ScriptedModel("```python\nopen('x','wb').write(b'0' * 2**31)\n```\n", "Too big.")
    session = Session(
        model=model,
        runner=OverrunRunner(workdir=tmp_path),
        settings=Settings(workdir=tmp_path, tool_mode="markdown"),
    )
    events: list[Event] = []
    drive(session.send("fill it"), render=events.append, approve=lambda _p: Approval("run"))
    (result,) = [e for e in events if isinstance(e, BlockResult)]
    assert result.for_model.startswith("stopped: the workdir limit of 2 GiB was reached")
    assert result.result["workdir_exceeded"] is True  # in the --json event too
    told = model.requests[1]["messages"][-1]["content"]
    assert "stopped: the workdir limit of 2 GiB was reached (the block added 2.1 GiB)" in told
    console = Console(record=True, width=200)
    renderer = HumanRenderer(markdown=False)
    renderer.err = console
    renderer.render(result)
    assert "block 1: stopped: the workdir limit of 2 GiB was reached" in console.export_text()


def test_an_absolute_bound_counts_what_the_folder_already_holds() -> None:
    """The session environment's bound is on what it holds, not on the session's growth:
    40 MiB there already leave a block 24 MiB of a 64 MiB bound."""
    disk = FakeDisk()
    disk.write(40 * MiB, 100)
    q = WorkdirQuota(
        Path("/env"),
        WorkdirLimits(max_bytes=64 * MiB),
        walker=disk.walker,
        free=disk.free,
        where="environment",
        absolute=True,
    )
    block = FakeBlock(disk, per_step=Usage(MiB, 0))
    overrun = run_block(q, block, 5)
    assert overrun is not None and overrun.stopped and overrun.where == "environment"
    assert 64 * MiB < overrun.grown < 64 * MiB + 32 * MiB  # what it holds, not what it added
    assert disk.work.bytes < 64 * MiB + 32 * MiB


def test_a_growth_bound_ignores_what_the_folder_already_held() -> None:
    disk = FakeDisk()
    disk.write(40 * MiB, 100)
    block = FakeBlock(disk, per_step=Usage(MiB, 0))
    overrun = run_block(quota(disk, max_bytes=64 * MiB), block, 5)
    assert overrun is not None and overrun.where == "workdir"
    assert disk.work.bytes > 40 * MiB + 64 * MiB  # the block itself added the 64 MiB
