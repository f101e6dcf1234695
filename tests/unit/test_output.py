import struct

import pytest

from orchestrator.sandbox.output import CappedBuffer, FrameDecoder, TerminalSanitizer


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_frame_decoder_handles_every_split_position() -> None:
    wire = frame(1, b"hello ") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"world\n")
    expected = [(1, b"hello "), (2, b"oops\n"), (1, b""), (1, b"world\n")]
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert got == expected, cut
        assert decoder.pending == 0


def test_frame_decoder_byte_by_byte() -> None:
    wire = frame(2, b"x" * 300) + frame(1, b"y")
    decoder = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == [(2, b"x" * 300), (1, b"y")]


@pytest.mark.parametrize(
    ("chunks", "limit", "text", "cut"),
    [
        ([b"abc"], 10, "abc", 0),
        ([b"0123456789"], 10, "0123456789", 0),
        ([b"0123456789AB"], 10, "01234\n[... 2 bytes cut by oi ...]\n789AB", 2),
        (
            [b"01", b"23", b"45", b"67", b"89", b"AB"],
            10,
            "01234\n[... 2 bytes cut by oi ...]\n789AB",
            2,
        ),
        (
            [b"a" * 5, b"b" * 1000, b"c" * 5],
            10,
            "aaaaa\n[... 1000 bytes cut by oi ...]\nccccc",
            1000,
        ),
        ([b""], 4, "", 0),
    ],
)
def test_capped_buffer(chunks: list[bytes], limit: int, text: str, cut: int) -> None:
    buf = CappedBuffer(limit)
    for chunk in chunks:
        buf.write(chunk)
    assert buf.text() == text
    assert buf.cut == cut
    assert buf.total == sum(len(c) for c in chunks)


def test_capped_buffer_memory_is_bounded() -> None:
    buf = CappedBuffer(1000)
    chunk = b"y\n" * 32768
    for _ in range(200):  # 12.5 MiB through it
        buf.write(chunk)
    assert len(buf._head) + len(buf._tail) <= 1000
    assert buf.total == 200 * len(chunk)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text\n", "plain text\n"),
        ("\x1b[31mred\x1b[0m", "\x1b[31mred\x1b[0m"),
        ("\x1b[2J\x1b[Hcleared", "cleared"),
        ("\x1b]0;evil title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("bell\x07 and backspace\x08", "bell and backspace"),
        ("progress 10%\rprogress 20%\n", "progress 10%\rprogress 20%\n"),
        ("tab\tok", "tab\tok"),
        ("\x1bPdevice control\x1b\\x", "x"),
        ("\x1b[?1049h alt screen", " alt screen"),
        ("lone escape \x1b", "lone escape "),
        ("\x9b31m C1 CSI", "31m C1 CSI"),
    ],
)
def test_terminal_sanitizer(raw: str, clean: str) -> None:
    assert TerminalSanitizer().clean(raw) == clean


def test_terminal_sanitizer_can_drop_colour() -> None:
    assert TerminalSanitizer(keep_color=False).clean("\x1b[1;32mok\x1b[0m") == "ok"
