"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_vllm import FakeVllm


@pytest.fixture
def fake_vllm() -> Iterator[FakeVllm]:
    """A fake vLLM server on 127.0.0.1 (see ``tests/fake_vllm.py``); script it with
    ``fake_vllm.script(Reply(text=...))`` and point clients at ``fake_vllm.base_url``."""
    with FakeVllm() as server:
        yield server
