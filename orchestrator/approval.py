"""Approvers decide whether a proposed block runs. The interactive one lives in the CLI.

An approver returns an ``Approval``; the code in it is exactly what runs (an edit replaces the
code, and the hash recorded is the hash of the edited bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.events import CodeProposed

ApprovalKind = Literal["run", "decline", "always", "quit", "edit"]


@dataclass(frozen=True)
class Approval:
    """An answer to ``CodeProposed``. ``sha256``, when given (a client that approves from afar),
    must be the hash of the code it showed: a mismatch is refused, never run."""

    kind: ApprovalKind
    code: str | None = None  # for "edit": the edited code, which must be shown and approved again
    reason: str = ""
    sha256: str | None = None


class Approver(Protocol):
    def decide(self, proposal: CodeProposed) -> Approval: ...


class AutoApprover:
    """Runs everything (``--auto-run``): the sandbox is what makes that safe."""

    def decide(self, proposal: CodeProposed) -> Approval:
        return Approval("run")


class DenyApprover:
    """Declines everything (dry runs, tests)."""

    def decide(self, proposal: CodeProposed) -> Approval:
        return Approval("decline")


def parse_answer(answer: str | None) -> ApprovalKind | None:
    """Map a typed answer to a decision; EOF (``None``) means no. Unknown input -> ``None``."""
    if answer is None:
        return "decline"
    word = answer.strip().lower()
    table: dict[str, ApprovalKind] = {
        "y": "run",
        "yes": "run",
        "n": "decline",
        "no": "decline",
        "e": "edit",
        "edit": "edit",
        "a": "always",
        "always": "always",
        "q": "quit",
        "quit": "quit",
    }
    return table.get(word)
