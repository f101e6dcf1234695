"""The seams the agent loop depends on. ``Session`` knows these Protocols, not their makers.

Production: ``ChatModel`` is ``llm.client.ModelClient`` (the openai SDK against vLLM);
``BlockRunner`` is ``sandbox.runner.Sandbox`` (Docker). Tests drive the loop with scripted fakes
(``tests/fakes.py``), and a server drives the same loop over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from orchestrator.languages import Language
from orchestrator.llm.client import StreamEvent
from orchestrator.sandbox.config import SandboxDescription
from orchestrator.sandbox.container import ExecResult

OutputCallback = Callable[[str, bytes], None]
StatusCallback = Callable[[str], None]


class ChatModel(Protocol):
    """A model that streams one reply at a time (see ``llm.client`` for the event types)."""

    @property
    def api_base(self) -> str: ...

    def stream_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Iterator[StreamEvent]:
        """Text deltas, complete tool calls, usage, then ``Finished``; raises ``ModelError``."""
        ...

    def model_max_len(self) -> int | None:
        """The context length the server reports, or None."""
        ...


class OutputStore(Protocol):
    """Keeps a block's whole output when the model is given only part of it."""

    def save(self, name: str, data: bytes) -> str | None:
        """Store ``data`` as ``name``; the path a later block sees it at (None: not kept)."""
        ...


class BlockRunner(Protocol):
    """Runs one block of code at a time, each in a fresh sandbox."""

    def warm(self, language: Language) -> None:
        """A block in ``language`` is likely soon (pre-start if you can); returns at once."""
        ...

    def describe(self, language: Language) -> SandboxDescription:
        """Where a block in ``language`` would run (shown for approval)."""
        ...

    def run(
        self,
        language: Language,
        code: str | bytes,
        on_output: OutputCallback | None = None,
        on_status: StatusCallback | None = None,
    ) -> ExecResult:
        """Run it to its end; failed code is data in the result, engine failures raise."""
        ...

    def cancel(self) -> None:
        """Kill the blocks running now (from another thread); their ``run`` returns."""
        ...
