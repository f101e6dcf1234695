"""Pure helpers for block output: the attach-stream frame decoder, a capped buffer and the
terminal sanitizer."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from orchestrator.safe_text import clean_output

STDOUT = 1
STDERR = 2


class FrameDecoder:
    """Incremental decoder of Docker's multiplexed attach stream (non-TTY).

    Each frame is an 8-byte header ``[stream, 0, 0, 0, size (big-endian u32)]`` and a payload.
    Feed it raw socket bytes in any chunking; it returns whole ``(stream, payload)`` pieces.
    """

    _HEADER = struct.Struct(">BxxxL")

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= self._HEADER.size:
            stream, size = self._HEADER.unpack_from(self._buffer)
            end = self._HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[self._HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


class CappedBuffer:
    """Keeps the first and last bytes of a stream, at most ``limit`` in total.

    Memory stays bounded however much is written: a block printing gigabytes costs oi
    ``limit`` bytes. ``cut`` counts the bytes dropped from the middle.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        if len(data) >= self._tail_limit:
            self._tail = bytearray(data[len(data) - self._tail_limit :])
        else:
            self._tail += data
            overflow = len(self._tail) - self._tail_limit
            if overflow > 0:
                del self._tail[:overflow]

    @property
    def cut(self) -> int:
        return self.total - len(self._head) - len(self._tail)

    def text(self) -> str:
        """Head and tail as text, with a marker saying how much was cut."""
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if self.cut:
            return f"{head}\n[... {self.cut} bytes cut by oi ...]\n{tail}"
        return head + tail


@dataclass
class TerminalSanitizer:
    """Neutralises terminal control sequences in block output before display.

    Keeps printable text, newlines, tabs and carriage returns (progress bars), and SGR colour
    codes when ``keep_color``; everything else (cursor movement, OSC titles/hyperlinks, screen
    clears, DCS) is dropped so hostile output cannot rewrite the terminal or the approval prompt.
    The rules live in ``orchestrator.safe_text.clean_output``, the one sanitizer for everything
    oi shows; this class keeps the setting with the stream.
    """

    keep_color: bool = True

    def clean(self, text: str) -> str:
        return clean_output(text, keep_color=self.keep_color)
