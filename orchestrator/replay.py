"""Replay: re-run a recorded session's approved blocks, without the model, and compare.

A record is untrusted input (it may come from anyone): its limits may only narrow the
replaying person's (``record_layer``), and what it will run is shown and asked about unless
the person says ``--yes``.

Pure parts (tested by table): ``recorded_blocks`` finds, in order, every block the record says
ran (decision "run") with exactly the code that ran (looked up by its sha256 among the code
the record showed, so an edited block replays as edited), and its recorded result;
``compare_block`` says whether a new result matches (exit code, limits hit, output) with a
unified diff; ``recorded_limits`` takes the sandbox limits of the record so captured output
is comparable. I/O: ``load_records`` (a session id or a file; never follows a symlink or
opens a FIFO) and ``replay_blocks``, which runs each block in a fresh sandbox.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import ConfigError
from orchestrator.records import (
    BadRecord,
    CodeProposedRecord,
    DecisionRecord,
    Record,
    ResultRecord,
    parse_record,
)
from orchestrator.settings import field_meta, keys_with_trust

if TYPE_CHECKING:
    from orchestrator.loading import Layer
    from orchestrator.sandbox.runner import Sandbox

ReplayAnswer = Literal["run", "skip", "quit"]

NOT_REPLAYED: dict[str, str] = {
    "pool_size": "how many containers wait ready, not what a block may do",
    "max_model_requests": "a replay asks no model",
}
"""Capped settings a replay does not take from the record, and why."""

LIMIT_KEYS: tuple[str, ...] = tuple(
    name
    for name in keys_with_trust("narrow")
    if field_meta(name)[1].startswith("cap ") and name not in NOT_REPLAYED
)
"""Recorded settings that replay reuses (they shape results and the captured output), as an
untrusted layer: a recorded limit above the replaying person's own is not applied. They are
the settings the admin policy caps (``cap KEY`` in their metadata), so a new limit is replayed
unless ``NOT_REPLAYED`` says why not. The network, isolation and passed-in variables are the
replaying person's choice, never the record's."""

DIFF_LINES = 60


@dataclass(frozen=True)
class RecordedBlock:
    """A block the record says ran."""

    number: int  # 1-based position among the replayed blocks
    index: int  # the block's index in its session (may repeat in a resumed chat)
    language: str
    code: str
    sha256: str
    recorded: Mapping[str, Any] | None  # the ExecResult as recorded; None if it has none
    note: str = ""  # why it will not be compared, when ``recorded`` is None


def _sha256(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def recorded_blocks(records: Sequence[Mapping[str, Any]], source: str) -> list[RecordedBlock]:
    """The blocks that ran, in order, each with the exact code that ran and its result.

    Raises ``ConfigError`` when the record is not one oi wrote or is inconsistent (a line of
    the wrong shape, code whose hash does not match, a run decision whose code is missing).
    """
    events: list[Record] = []
    for data in records:
        try:
            record = parse_record(dict(data))
        except BadRecord as exc:
            raise ConfigError(f"{source}: {exc}; the record was altered or is not oi's") from None
        if isinstance(record, CodeProposedRecord | DecisionRecord | ResultRecord):
            events.append(record)
    code_by_sha: dict[str, tuple[str, str]] = {}
    blocks: list[RecordedBlock] = []
    for position, event in enumerate(events):
        if isinstance(event, CodeProposedRecord):
            if _sha256(event.code) != event.sha256:
                raise ConfigError(
                    f"{source}: block {event.index}: its code does not hash to its "
                    f"recorded sha256 {event.sha256[:12]}; the record was altered"
                )
            code_by_sha[event.sha256] = (event.language, event.code)
        elif isinstance(event, DecisionRecord) and event.decision == "run":
            if event.sha256 not in code_by_sha:
                raise ConfigError(
                    f"{source}: block {event.index} ran code with sha256 {event.sha256[:12]}, "
                    "but the record holds no such code; the file is incomplete or was edited"
                )
            language, code = code_by_sha[event.sha256]
            result = _result_after(events, position, event.index, event.sha256)
            recorded: Mapping[str, Any] | None = None
            note = ""
            if result is None:
                note = "no result in the record (oi stopped during the block)"
            elif result.interrupted:
                note = "interrupted in the record (Ctrl-C), so there is nothing to compare"
            elif not result.result:
                note = "the record has no full result for this block"
            else:
                recorded = result.result
            blocks.append(
                RecordedBlock(
                    len(blocks) + 1, event.index, language, code, event.sha256, recorded, note
                )
            )
    return blocks


def _result_after(
    events: Sequence[Record], position: int, index: int, sha: str
) -> ResultRecord | None:
    """The result event of the run decision at ``position``: the next result of the same
    block, before the next run decision."""
    for event in events[position + 1 :]:
        if isinstance(event, DecisionRecord) and event.decision == "run":
            return None
        if isinstance(event, ResultRecord) and event.index == index and event.sha256 == sha:
            return event
    return None


def session_info(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The first ``session`` record (settings, model, notes), or an empty mapping."""
    return next((r for r in records if r.get("type") == "session"), {})


def recorded_files(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The inline files a batch task's workdir began with (``files:`` in its tasks file), so a
    replay starts where the task did. Untrusted like the rest: only (text, text) pairs, and
    written without leaving the workdir (``fsafe.write_inline_files``)."""
    batch = session_info(records).get("batch")
    entries = batch.get("files") if isinstance(batch, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        (str(entry[0]), str(entry[1]))
        for entry in entries
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
    ]


def recorded_limits(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sandbox limits the session ran with (``LIMIT_KEYS`` only), and whether it kept
    Python state (a record made before oi kept any did not: its blocks ran without)."""
    settings = session_info(records).get("settings")
    if not isinstance(settings, dict):
        return {}
    limits = {key: settings[key] for key in LIMIT_KEYS if settings.get(key) is not None}
    limits["python_state"] = settings.get("python_state") is True
    return limits


def record_layer(records: Sequence[Mapping[str, Any]], source: str) -> Layer:
    """The record's limits as an untrusted settings layer (they may only narrow yours)."""
    from orchestrator.loading import Layer, Source  # noqa: PLC0415

    return Layer(Source("project", f"record {source}"), recorded_limits(records), trusted=False)


MatchStatus = Literal["match", "mismatch", "not_compared", "not_run"]


@dataclass(frozen=True)
class BlockComparison:
    """A replayed block against its record."""

    block: RecordedBlock
    status: MatchStatus
    differences: list[str] = field(default_factory=list)  # one line each
    diff: str = ""  # unified diff of stdout/stderr
    replayed: Mapping[str, Any] | None = None  # the new ExecResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.block.number,
            "index": self.block.index,
            "language": self.block.language,
            "sha256": self.block.sha256,
            "status": self.status,
            "note": self.block.note,
            "differences": self.differences,
            "diff": self.diff,
            "recorded": dict(self.block.recorded) if self.block.recorded else None,
            "replayed": dict(self.replayed) if self.replayed else None,
        }


def _outcome(result: Mapping[str, Any]) -> str:
    if result.get("timed_out"):
        return "timed out"
    if result.get("oom_killed"):
        return "killed (memory limit)"
    return f"exit {result.get('exit_code')}"


def compare_block(
    block: RecordedBlock, replayed: Mapping[str, Any], *, compare_output: bool = True
) -> BlockComparison:
    """Does ``replayed`` match the record: same exit code (or the same limit hit) and, with
    ``compare_output``, the same captured stdout and stderr."""
    recorded = block.recorded
    if recorded is None:
        return BlockComparison(block, "not_compared", replayed=replayed)
    differences: list[str] = []
    if _outcome(recorded) != _outcome(replayed):
        differences.append(f"recorded {_outcome(recorded)}, replayed {_outcome(replayed)}")
    diffs: list[str] = []
    if compare_output:
        for stream in ("stdout", "stderr"):
            before, after = str(recorded.get(stream, "")), str(replayed.get(stream, ""))
            if before != after:
                differences.append(f"{stream} differs")
                diffs.append(output_diff(stream, before, after))
    status: MatchStatus = "mismatch" if differences else "match"
    return BlockComparison(block, status, differences, "".join(diffs), replayed)


def output_diff(stream: str, recorded: str, replayed: str, limit: int = DIFF_LINES) -> str:
    """A unified diff of one stream, at most ``limit`` lines (with a note of what was cut)."""
    lines = list(
        difflib.unified_diff(
            recorded.splitlines(keepends=True),
            replayed.splitlines(keepends=True),
            fromfile=f"recorded {stream}",
            tofile=f"replayed {stream}",
        )
    )
    lines = [line if line.endswith("\n") else line + "\n" for line in lines]
    if len(lines) > limit:
        cut = len(lines) - limit
        lines = [*lines[:limit], f"... {cut} more diff line(s)\n"]
    return "".join(lines)


@dataclass(frozen=True)
class ReplaySummary:
    matched: int
    mismatched: int
    not_compared: int
    not_run: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.not_run == 0


def summarize(comparisons: Sequence[BlockComparison]) -> ReplaySummary:
    return ReplaySummary(
        sum(c.status == "match" for c in comparisons),
        sum(c.status == "mismatch" for c in comparisons),
        sum(c.status == "not_compared" for c in comparisons),
        sum(c.status == "not_run" for c in comparisons),
    )


# --- I/O ------------------------------------------------------------------------------------------


def load_records(
    source: str, sessions_dir: Path, notes: list[str] | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """A session's records from a file path, or from a session id (or unique prefix) in
    ``sessions_dir``. The file is opened without following a symlink and must be regular.
    Lines skipped as incomplete are described in ``notes``."""
    notes = notes if notes is not None else []
    from orchestrator.transcript import find_session, scan_records  # noqa: PLC0415

    candidate = Path(source).expanduser()
    looks_like_path = "/" in source or source.endswith(".jsonl")
    if looks_like_path or candidate.exists():
        path = candidate
    else:
        path = find_session(sessions_dir, source)
    try:
        scan = scan_records(path)
        records = scan.records
        notes.extend(scan.notes())
    except FileNotFoundError:
        raise ConfigError(
            f"no session record at {path}; give a file or a session id ('oi sessions list')"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the session record {path}: {exc.strerror} "
            "(a symlink or special file is not read); give the real file"
        ) from None
    return path, records


def replay_blocks(
    blocks: Sequence[RecordedBlock],
    sandbox: Sandbox,
    *,
    compare_output: bool = True,
    ask: Callable[[RecordedBlock], ReplayAnswer] | None = None,
) -> Generator[BlockComparison, None, None]:
    """Run each block in a fresh container, in order, and compare it with its record.

    Blocks without a recorded result are not run (what they did is unknown), and say why.
    ``ask`` (when given) decides for each block before it runs: run it, skip it, or stop.
    """
    from orchestrator.languages import parse_language  # noqa: PLC0415

    for block in blocks:
        if block.recorded is None:
            yield BlockComparison(block, "not_compared")
            continue
        answer = ask(block) if ask is not None else "run"
        if answer == "quit":
            return
        if answer == "skip":
            yield BlockComparison(block, "not_run", ["declined: not run"])
            continue
        result = sandbox.run(parse_language(block.language), block.code)
        if result.code_sha256 != block.sha256:  # the product rule, also for replays
            raise ConfigError(
                f"internal error: block {block.index} ran code that differs from its sha256"
            )
        yield compare_block(block, result.to_dict(), compare_output=compare_output)
