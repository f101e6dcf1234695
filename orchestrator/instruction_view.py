"""``%instructions`` in chat: the standing instructions in force, where each comes from, shown
as text (a project wrote some of them: nothing in them acts on the screen)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from orchestrator.llm.instructions import Instructions
from orchestrator.safe_text import clean_line, clean_text


def show_instructions(instructions: Instructions, console: Console) -> None:
    """Each piece in a panel titled with its source; a line when there are none."""
    pieces = [piece for piece in instructions.pieces if piece.text.strip()]
    if not pieces:
        console.print(
            Text(
                "no standing instructions (set instructions in your config, a profile, "
                "OI_INSTRUCTIONS or --instructions TEXT|@FILE)"
            )
        )
        return
    for piece in pieces:
        title = ("project: " if piece.project else "") + piece.source
        console.print(
            Panel(
                Text(clean_text(piece.text.strip())),
                title=Text(clean_line(title)),
                title_align="left",
                border_style="yellow" if piece.project else "none",
            )
        )
    console.print(
        Text(
            "they come after oi's own facts in the system prompt and cannot change where code "
            "runs, the network or the limits",
            style="dim",
        )
    )
