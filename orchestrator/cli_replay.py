"""The work of ``oi replay`` behind the command (cli_batch.py): its workdir, its settings
(the record may only narrow yours), showing and asking before each block, the JSON report."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from orchestrator.cli_common import docker_client, err_console
from orchestrator.cli_options import SettingFlags
from orchestrator.errors import ConfigError, PolicyError
from orchestrator.fsafe import adopted_owner, copy_tree, remove_tree, write_inline_files
from orchestrator.replay import (
    BlockComparison,
    RecordedBlock,
    ReplayAnswer,
    ReplaySummary,
    record_layer,
    recorded_blocks,
    recorded_files,
    replay_blocks,
    session_info,
)
from orchestrator.safe_text import clean_line, clean_text


def claim_empty_folder(path: Path) -> None:
    """``--out`` must be new or empty: replay never mixes its files with others'."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"--out {path} exists and is not a folder; choose a new folder")
    if path.is_dir():
        if any(path.iterdir()):
            raise ConfigError(f"--out {path} is not empty; remove it or choose a new folder")
        path.rmdir()
    path.parent.mkdir(parents=True, exist_ok=True)


class Replayer:
    """One replay: prepared on construction, cleaned up on exit (the sandbox, a temp folder)."""

    def __init__(
        self,
        path: Path,
        records: Sequence[Mapping[str, Any]],
        flags: SettingFlags,
        *,
        out: Path | None,
        workdir_from: Path | None,
    ) -> None:
        from orchestrator.sandbox.container import new_session_id  # noqa: PLC0415
        from orchestrator.sandbox.runner import Sandbox  # noqa: PLC0415
        from orchestrator.wiring import session_config  # noqa: PLC0415

        self.path = path
        self.records = records
        self.recorded = recorded_blocks(records, str(path))
        self.info = session_info(records)
        self.kept = out.expanduser().absolute() if out is not None else None
        self.notes: list[str] = []
        self._temp: Path | None = None
        self._env_root: Path | None = None
        self.workdir = self._prepare_workdir(workdir_from)
        try:
            self.loaded = self._settings(flags)
            session_id = new_session_id() + "-replay"
            # Its own environment, as the recorded session had: Python state and installs
            # carry from block to block again; removed with the replay.
            self._env_root = Path(tempfile.mkdtemp(prefix="oi-replay-env-"))
            self.sandbox = Sandbox.from_config(
                session_config(self.loaded, session_id, self._env_root),
                session_id=session_id,
                client=docker_client(),
            )
        except BaseException:
            self._cleanup()
            raise

    def _prepare_workdir(self, workdir_from: Path | None) -> Path:
        if self.kept is not None:
            workdir = self.kept
            claim_empty_folder(workdir)
        else:
            self._temp = Path(tempfile.mkdtemp(prefix="oi-replay-"))
            workdir = self._temp / "workdir"
        try:
            owner = None
            if workdir_from is not None:
                owner = adopted_owner(workdir_from)
                copy_tree(workdir_from, workdir, owner=owner)
            else:
                workdir.mkdir(mode=0o755)
                owner = adopted_owner(workdir.parent) if self.kept is not None else None
                if owner is not None:
                    os.chown(workdir, *owner)
            # A batch task's inline files, as its workdir began (after its template).
            write_inline_files(workdir, recorded_files(self.records), owner=owner)
        except BaseException:
            self._cleanup()
            raise
        return workdir

    def _settings(self, flags: SettingFlags) -> Any:
        from orchestrator.loading import load  # noqa: PLC0415

        layer = record_layer(self.records, str(self.path))
        values = {**flags.values, "workdir": self.workdir}
        try:
            return load(values, untrusted=[layer], on_refusal="drop", notes=self.notes)
        except PolicyError as exc:
            raise PolicyError(
                f"{exc} (limits not given as flags come from the session record; "
                "pass lower ones, e.g. --memory, --timeout)"
            ) from None

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        sandbox = getattr(self, "sandbox", None)
        try:
            if sandbox is not None:
                sandbox.close()
        finally:
            for attribute in ("_temp", "_env_root"):
                folder = getattr(self, attribute)
                if folder is not None:
                    remove_tree(folder)
                    setattr(self, attribute, None)

    def announce(self, console: Console) -> None:
        clean = clean_line  # the record may come from anyone
        settings = self.loaded.settings
        where = (
            str(self.workdir) if self.kept else "a temporary folder (removed after; --out keeps it)"
        )

        def say(text: str, style: str = "") -> None:
            console.print(clean(text), markup=False, highlight=False, soft_wrap=True, style=style)

        say(
            f"oi replay: {len(self.recorded)} block(s) of session "
            f"{self.info.get('session_id', self.path.stem)} (model {self.info.get('model', '?')}) "
            f"from {self.path}, without the model, in {where}"
        )
        note = self.info.get("note")
        if isinstance(note, str) and note:
            say(f"oi replay: note: {note}", "cyan")
        for line in self.notes:
            hint = " (pass it as a flag to use it)" if "not applied" in line else ""
            say(f"oi replay: {line}{hint}", "yellow")
        recorded_network = (self.info.get("settings") or {}).get("network")
        if recorded_network and recorded_network != settings.network:
            say(
                f"oi replay: the session ran with network {recorded_network}; replaying with "
                f"{settings.network} (pass --network {recorded_network} to match)",
                "yellow",
            )
        if self.sandbox.identity.warning:
            say(f"oi: {self.sandbox.identity.warning}", "yellow")

    def asker(self) -> Callable[[RecordedBlock], ReplayAnswer]:
        """Show each block as the approval screen does and ask (EOF on stdin means no)."""
        from orchestrator.events import CodeProposed  # noqa: PLC0415
        from orchestrator.languages import parse_language  # noqa: PLC0415
        from orchestrator.render import HumanRenderer, InteractiveApprover  # noqa: PLC0415

        renderer = HumanRenderer(markdown=False)
        approver = InteractiveApprover()
        always = False

        def ask(block: RecordedBlock) -> ReplayAnswer:
            nonlocal always
            language = parse_language(block.language)
            proposal = CodeProposed(
                block.number,
                language.value,
                block.code,
                block.sha256,
                self.sandbox.describe(language),
                "record",
                awaits_approval=not always,
            )
            renderer.render(proposal)
            if always:
                return "run"
            while True:
                kind = approver.decide(proposal).kind
                if kind == "edit":
                    err_console.print("a replay runs the recorded code as it is: answer y, n or q")
                    continue
                always = kind == "always"
                return {"run": "run", "always": "run", "decline": "skip"}.get(kind, "quit")  # type: ignore[return-value]

        return ask

    def blocks(
        self,
        *,
        compare_output: bool,
        ask: Callable[[RecordedBlock], ReplayAnswer] | None,
        show: bool,
    ) -> tuple[list[BlockComparison], bool]:
        """Run the recorded blocks; (comparisons, interrupted)."""
        comparisons: list[BlockComparison] = []
        try:
            for comparison in replay_blocks(
                self.recorded, self.sandbox, compare_output=compare_output, ask=ask
            ):
                comparisons.append(comparison)
                if show:
                    show_comparison(comparison)
        except KeyboardInterrupt:
            err_console.print("oi: interrupted", style="yellow")
            return comparisons, True
        return comparisons, False

    def report(
        self, comparisons: list[BlockComparison], totals: ReplaySummary, interrupted: bool
    ) -> dict[str, Any]:
        return {
            "source": str(self.path),
            "session_id": self.info.get("session_id"),
            "workdir": str(self.workdir) if self.kept is not None else None,
            "blocks": [c.to_dict() for c in comparisons],
            "matched": totals.matched,
            "mismatched": totals.mismatched,
            "not_compared": totals.not_compared,
            "not_run": totals.not_run,
            "interrupted": interrupted,
            "ok": totals.ok and not interrupted,
        }


def show_comparison(comparison: BlockComparison) -> None:
    block = comparison.block
    head = f"block {block.number} (#{block.index}, {clean_line(block.language)})"
    if comparison.status == "not_compared":
        typer.echo(f"{head}: not compared: {clean_line(block.note)}")
        return
    if comparison.status == "not_run":
        typer.echo(f"{head}: not run (declined)")
        return
    replayed = comparison.replayed or {}
    took = f"{float(replayed.get('duration_s', 0.0)):.2f} s"
    if comparison.status == "match":
        typer.echo(f"{head}: match · exit {replayed.get('exit_code')} · {took}")
        return
    differences = "; ".join(clean_line(d) for d in comparison.differences)
    typer.echo(f"{head}: MISMATCH: {differences} · {took}")
    for line in clean_text(comparison.diff).splitlines():
        typer.echo(f"    {line}")
