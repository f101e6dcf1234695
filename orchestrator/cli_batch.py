"""`oi batch` and `oi replay` commands (registered on the main Typer app by cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the batch and replay commands to ``app``."""
