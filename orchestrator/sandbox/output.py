"""Pure helpers for block output: the attach-stream frame decoder and a capped buffer."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

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
    """

    keep_color: bool = True

    _CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
    _OSC_DCS = re.compile(r"\x1b[\]P^_X].*?(?:\x07|\x1b\\|$)", re.DOTALL)
    _C0 = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f\x80-\x9f]")

    def clean(self, text: str) -> str:
        text = self._OSC_DCS.sub("", text)
        if self.keep_color:
            text = self._CSI.sub(lambda m: m.group(0) if m.group(0).endswith("m") else "", text)
        else:
            text = self._CSI.sub("", text)
        # Remove lone ESC and two-byte escapes, but not the CSI colour codes kept above.
        text = re.sub(r"\x1b(?!\[[0-9;]*m)[@-Z\\-_]?", "", text)
        return self._C0.sub("", text)
