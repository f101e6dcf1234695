"""Read a blocking stream in a worker thread, so its reader can give up on time.

A socket read timeout cannot tell the first chunk of a reply from the next ones (vLLM sends
its headers at once and the first chunk only after the prompt is processed), and it cannot
bound a whole reply. So the reply is read by a daemon thread that hands each item over a
queue; the reader waits on the queue with whatever deadline applies at that moment and, when
it gives up, cancels: the producer registers how to interrupt its blocking read
(``on_cancel``, e.g. shutting the socket down) as soon as it has something to interrupt.

Until then (a server that accepted the connection but sent no headers) the thread is only
bounded by its own socket timeout; it holds no lock and is a daemon, so at worst it lingers
that long after the reader has moved on.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ended:
    """The producer finished: no more items."""


class StreamPump(Generic[T]):
    """Runs ``produce(pump)`` in a daemon thread; ``get(timeout)`` takes its items in order.

    ``get`` returns an item, or ``Ended()`` once the producer is done; it re-raises the
    producer's exception, and raises ``TimeoutError`` when nothing arrives in time (the pump
    stays usable: call ``cancel`` to give up). ``cancel`` is idempotent and never blocks.
    """

    def __init__(
        self, produce: Callable[[StreamPump[T]], Generator[T, None, None]], *, name: str
    ) -> None:
        self._produce = produce
        self._items: queue.SimpleQueue[tuple[T | Ended | None, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._cancelled = False
        self._canceller: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> StreamPump[T]:
        self._thread.start()
        return self

    def get(self, timeout: float) -> T | Ended:
        try:
            item, error = self._items.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError from None
        if error is not None:
            raise error
        return item  # type: ignore[return-value]  # None only travels with an error

    def on_cancel(self, canceller: Callable[[], None]) -> None:
        """Producer side: how to interrupt the read in progress. Runs now if already cancelled."""
        with self._lock:
            cancelled = self._cancelled
            self._canceller = None if cancelled else canceller
        if cancelled:
            _quietly(canceller)

    def cancel(self) -> None:
        """Reader side: stop the producer; its pending and later items are dropped."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            canceller, self._canceller = self._canceller, None
        if canceller is not None:
            _quietly(canceller)

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def _finished(self) -> None:
        # Nothing is being read any more: a late cancel must not touch the connection, which
        # may be back in the pool (the pool would drop it as disconnected, but need not).
        with self._lock:
            self._canceller = None

    def _run(self) -> None:
        items = self._produce(self)
        try:
            for item in items:
                if self.cancelled:
                    return
                self._items.put((item, None))
            self._finished()
            self._items.put((Ended(), None))
        except Exception as exc:  # handed to the reader, which raises it in its own thread
            self._finished()
            if not self.cancelled:
                self._items.put((None, exc))
        finally:
            # The producer's cleanup closes the HTTP response; if that fails nobody is left to
            # tell, and a thread's traceback on stderr would only be noise.
            with contextlib.suppress(Exception):
                items.close()


def _quietly(action: Callable[[], None]) -> None:
    with contextlib.suppress(OSError):  # the connection is already gone: nothing to interrupt
        action()
