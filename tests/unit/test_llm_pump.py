"""The worker-thread pump the client reads replies through: order, errors, deadlines, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import pytest

from orchestrator.llm.pump import Ended, StreamPump


def test_items_then_ended_in_order() -> None:
    def produce(pump: StreamPump[int]) -> Generator[int, None, None]:
        yield from range(3)

    pump = StreamPump(produce, name="test").start()
    assert [pump.get(1.0) for _ in range(4)] == [0, 1, 2, Ended()]


def test_the_producers_error_is_raised_to_the_reader() -> None:
    def produce(pump: StreamPump[int]) -> Generator[int, None, None]:
        yield 1
        raise ValueError("garbled")

    pump = StreamPump(produce, name="test").start()
    assert pump.get(1.0) == 1
    with pytest.raises(ValueError, match="garbled"):
        pump.get(1.0)


def test_get_times_out_while_the_producer_blocks_and_cancel_interrupts_it() -> None:
    release = threading.Event()
    closed = threading.Event()

    def produce(pump: StreamPump[int]) -> Generator[int, None, None]:
        pump.on_cancel(release.set)  # what shutting the socket down does to a blocked read
        try:
            release.wait(5)
            yield 1  # dropped: the reader has gone
        finally:
            closed.set()

    pump = StreamPump(produce, name="test").start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pump.get(0.1)
    assert 0.1 <= time.monotonic() - started < 0.5
    pump.cancel()
    assert closed.wait(1.0)  # the producer ran its cleanup (closes the HTTP response)
    pump.cancel()  # idempotent


def test_a_cancel_before_the_producer_can_be_interrupted_runs_when_it_can() -> None:
    registered = threading.Event()
    interrupted = threading.Event()

    def produce(pump: StreamPump[int]) -> Generator[int, None, None]:
        registered.wait(5)
        pump.on_cancel(interrupted.set)
        yield 1

    pump = StreamPump(produce, name="test").start()
    pump.cancel()
    registered.set()
    assert interrupted.wait(1.0)


def test_a_finished_producer_is_not_interrupted_later() -> None:
    interrupted = threading.Event()

    def produce(pump: StreamPump[int]) -> Generator[int, None, None]:
        pump.on_cancel(interrupted.set)
        yield 1

    pump = StreamPump(produce, name="test").start()
    assert pump.get(1.0) == 1
    assert pump.get(1.0) == Ended()
    pump.cancel()  # the connection may be back in the pool by now: leave it alone
    assert not interrupted.is_set()
