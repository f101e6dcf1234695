"""Images for a vision model (``orchestrator/vision.py``): which images a block made, what an
image is, reading them without being redirected, making them small, and the messages."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orchestrator.context import TRIMMED_IMAGE, estimate_tokens, fit_context, is_result
from orchestrator.errors import ConfigError
from orchestrator.records import ChatMessage
from orchestrator.vision import (
    MAX_IMAGES,
    MAX_SEND_BYTES,
    ImagePart,
    SessionImages,
    Stamp,
    changed_images,
    image_size,
    image_tokens,
    pillow_shrinker,
    prepare,
    read_user_image,
    read_workdir_image,
    recordable,
    snapshot,
    strip_images,
    text_of,
    tokens_for,
    user_message,
)


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def encoded(fmt: str, width: int, height: int, **options: Any) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if options.pop("alpha", False) else "RGB"
    Image.new(mode, (width, height), (10, 120, 200)).save(out, fmt, **options)
    return out.getvalue()


def tiny_png(width: int, height: int) -> bytes:
    """A PNG whose header claims any size (its pixels are not there): a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


# --- what an image is ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encoded("PNG", 640, 480), ("image/png", 640, 480)),
        (encoded("JPEG", 320, 200), ("image/jpeg", 320, 200)),
        (encoded("JPEG", 33, 17, progressive=True), ("image/jpeg", 33, 17)),
        (encoded("WEBP", 300, 150), ("image/webp", 300, 150)),  # VP8 (lossy)
        (encoded("WEBP", 300, 151, lossless=True), ("image/webp", 300, 151)),  # VP8L
        (encoded("WEBP", 64, 65, alpha=True), ("image/webp", 64, 65)),  # VP8X
        (tiny_png(100_000, 100_000), ("image/png", 100_000, 100_000)),
        (b"GIF89a....", None),
        (b"not an image at all", None),
        (b"\x89PNG\r\n\x1a\n", None),  # cut short
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", None),  # a JPEG cut before its frame
        (b"", None),
    ],
)
def test_image_size_reads_headers(data: bytes, expected: tuple[str, int, int] | None) -> None:
    assert image_size(data) == expected


def test_a_jpeg_frame_after_exif_data_is_found() -> None:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription: pushes the frame header far in
    Image.new("RGB", (90, 60)).save(out, "JPEG", exif=exif.tobytes())
    assert image_size(out.getvalue()) == ("image/jpeg", 90, 60)


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((28, 28), 3), ((29, 28), 4), ((768, 432), 28 * 16 + 2), ((1, 1), 3)],
)
def test_tokens_for(size: tuple[int, int], tokens: int) -> None:
    assert tokens_for(*size) == tokens


# --- which images a block made ------------------------------------------------------------


S = Stamp


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ({}, {}, []),
        ({}, {"a.png": S(1, 10, 1)}, ["a.png"]),
        ({"a.png": S(1, 10, 1)}, {"a.png": S(1, 10, 1)}, []),  # untouched
        ({"a.png": S(1, 10, 1)}, {"a.png": S(2, 10, 1)}, ["a.png"]),  # rewritten, same mtime
        ({"a.png": S(1, 10, 1)}, {"a.png": S(1, 11, 1)}, ["a.png"]),  # touched
        ({"a.png": S(1, 10, 1)}, {"a.png": S(1, 10, 2)}, ["a.png"]),  # replaced by a rename
        ({"a.png": S(1, 10, 1)}, {}, []),  # deleted
        (  # newest first, then by name
            {},
            {"b.png": S(1, 5, 1), "a.png": S(1, 5, 2), "c.jpg": S(1, 9, 3)},
            ["c.jpg", "a.png", "b.png"],
        ),
    ],
)
def test_changed_images(
    before: dict[str, Stamp], after: dict[str, Stamp], changed: list[str]
) -> None:
    assert changed_images(before, after) == changed


def test_snapshot_lists_images_only_never_through_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(4, 4))
    work = tmp_path / "work"
    (work / "plots" / "deep").mkdir(parents=True)
    (work / "chart.PNG").write_bytes(png(4, 4))
    (work / "plots" / "deep" / "x.jpeg").write_bytes(b"jpeg")
    (work / "notes.txt").write_text("not an image")
    (work / "node_modules").mkdir()
    (work / "node_modules" / "icon.png").write_bytes(png(2, 2))
    (work / "link.png").symlink_to(outside / "secret.png")
    (work / "linked-dir").symlink_to(outside)
    os.mkfifo(work / "fifo.png")
    listing = snapshot(work)
    assert sorted(listing) == ["chart.PNG", "plots/deep/x.jpeg"]


def test_snapshot_stops_after_its_entry_limit(tmp_path: Path) -> None:
    for number in range(30):
        (tmp_path / f"{number:02}.png").write_bytes(b"x")
    assert len(snapshot(tmp_path, limit=10)) == 10
    assert len(snapshot(tmp_path)) == 30  # control


# --- reading ---------------------------------------------------------------------------------


def test_read_workdir_image_refuses_links_fifos_and_big_files(tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa.png"
    secret.write_bytes(png(3, 3))
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "ok.png").write_bytes(png(3, 3))
    assert read_workdir_image(work, "ok.png")[:4] == b"\x89PNG"  # control
    (work / "link.png").symlink_to(secret)
    (work / "dirlink").symlink_to(tmp_path)
    os.mkfifo(work / "pipe.png")
    (work / "big.png").write_bytes(b"x" * 2048)
    with pytest.raises(ConfigError, match="symlink"):
        read_workdir_image(work, "link.png")
    with pytest.raises(ConfigError, match="symlink is never followed"):
        read_workdir_image(work, "dirlink/id_rsa.png")
    with pytest.raises(ConfigError, match="FIFO"):
        read_workdir_image(work, "pipe.png")
    with pytest.raises(ConfigError, match="larger than 1024 bytes"):
        read_workdir_image(work, "big.png", limit=1024)
    with pytest.raises(ConfigError, match=r"without '\.\.'"):
        read_workdir_image(work, "../id_rsa.png")


def test_read_user_image(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png(5, 5))
    link = tmp_path / "link.png"
    link.symlink_to(path)
    assert read_user_image(link) == path.read_bytes()  # a person's own link is followed
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_user_image(tmp_path / "fifo.png")
    with pytest.raises(ConfigError, match="more than"):
        read_user_image(path, limit=10)
    with pytest.raises(ConfigError, match="No such file"):
        read_user_image(tmp_path / "missing.png")


# --- making them small --------------------------------------------------------------------


def test_pillow_shrinks_to_the_side_limit_and_keeps_the_format_family() -> None:
    shrink = pillow_shrinker()
    assert shrink is not None
    part = prepare("chart.png", png(1600, 1200), shrink, max_side=768)
    assert isinstance(part, ImagePart)
    assert (part.width, part.height, part.original) == (768, 576, (1600, 1200))
    assert part.mime == "image/png" and image_size(part.data) == ("image/png", 768, 576)
    photo = prepare("p.jpg", encoded("JPEG", 2000, 1000), shrink, max_side=500)
    assert isinstance(photo, ImagePart) and photo.mime == "image/jpeg"
    assert (photo.width, photo.height) == (500, 250)
    small = prepare("s.webp", encoded("WEBP", 50, 40), shrink)
    assert isinstance(small, ImagePart) and (small.width, small.height) == (50, 40)
    assert small.describe() == f"s.webp (50x40, {len(small.data)} B)"
    assert part.describe().startswith("chart.png (768x576 from 1600x1200, ")


@pytest.mark.parametrize("shrink", [None, "pillow"])
def test_prepare_refuses_what_is_not_an_image_or_too_big(shrink: str | None) -> None:
    shrinker = pillow_shrinker() if shrink else None
    assert prepare("x.png", b"hello", shrinker) == "x.png: not a PNG, JPEG or WebP image"
    bomb = prepare("bomb.png", tiny_png(100_000, 100_000), shrinker)
    assert bomb == "bomb.png: 100000x100000 pixels is more than oi decodes"


def test_without_pillow_small_images_go_as_they_are_and_big_ones_are_named() -> None:
    data = png(40, 30)
    part = prepare("a.png", data, None)
    assert (
        isinstance(part, ImagePart)
        and part.data == data
        and (part.width, part.height)
        == (
            40,
            30,
        )
    )
    big = tiny_png(100, 100) + b"\0" * MAX_SEND_BYTES
    reason = prepare("big.png", big, None)
    assert isinstance(reason, str) and "install Pillow" in reason


def test_a_broken_image_is_named_not_raised() -> None:
    broken = png(50, 50)[:60]  # a real header, then nothing
    reason = prepare("broken.png", broken, pillow_shrinker())
    assert isinstance(reason, str) and reason.startswith("broken.png: cannot be decoded")


# --- messages and the context ----------------------------------------------------------------


def part_of(name: str = "c.png", size: tuple[int, int] = (280, 140)) -> ImagePart:
    data = png(*size)
    return ImagePart(name, "image/png", data, size[0], size[1], size)


def test_user_message_and_image_tokens() -> None:
    assert user_message("hi", []) == {"role": "user", "content": "hi"}
    message = user_message("what is this?", [part_of()])
    text, image = message["content"]
    assert text == {"type": "text", "text": "what is this?"}
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert image_tokens(image) == tokens_for(280, 140) == 10 * 5 + 2
    assert text_of(message) == "what is this?" and not is_result(message)


def test_estimate_counts_images_by_size_not_by_base64_length() -> None:
    big = part_of(size=(2000, 2000))  # ~10 KB of PNG, ~5,000 tokens of a vision model
    plain = [{"role": "user", "content": "x"}]
    with_image = [user_message("x", [big])]
    extra = estimate_tokens(with_image, None) - estimate_tokens(plain, None)
    assert tokens_for(2000, 2000) <= extra <= tokens_for(2000, 2000) + 20


def test_fit_context_drops_older_images_first_then_the_newest() -> None:
    messages = [
        {"role": "system", "content": "s"},
        user_message("task", [part_of("old.png", (560, 560))]),  # ~400 tokens
        {"role": "assistant", "content": "ok"},
        user_message("[oi] images the block made, attached", [part_of("new.png", (560, 560))]),
    ]
    image_cost = tokens_for(560, 560)
    total = estimate_tokens(messages, None)
    notes = fit_context(messages, None, total - image_cost // 2)
    assert notes == ["removed the images of 1 message(s) to fit the context"]
    assert TRIMMED_IMAGE in text_of(messages[1]) and "image_url" not in str(messages[1])
    assert "image_url" in str(messages[3])  # the newest kept
    fit_context(messages, None, estimate_tokens(messages, None) - image_cost // 2)
    assert "image_url" not in str(messages)


def test_strip_and_recordable() -> None:
    messages = [user_message("a", [part_of(), part_of()]), {"role": "user", "content": "b"}]
    record = recordable(messages[0])
    assert record["content"].startswith("a\n[image image/png sha256:")
    assert "base64" not in str(record) and record["content"].count("[image ") == 2
    assert ChatMessage.model_validate(record).content == record["content"]  # a valid record
    assert recordable(messages[1]) is messages[1]
    assert strip_images(messages, "gone") == 2
    assert messages[0]["content"][1] == {"type": "text", "text": "[gone]"}
    assert strip_images(messages) == 0


# --- a session's images --------------------------------------------------------------------


def test_session_images_collects_what_a_block_made(tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(png(10, 10))
    images = SessionImages(tmp_path, pillow_shrinker())
    before = images.before_block()
    (tmp_path / "chart.png").write_bytes(png(1000, 500))
    (tmp_path / "fake.png").write_text("not a png")
    (tmp_path / "link.png").symlink_to(tmp_path / "old.png")
    images.after_block(before)
    ((message, note),) = images.take_block_messages()
    assert note.startswith("sent to the model: chart.png (768x384 from 1000x500, ")
    assert "not sent: fake.png: not a PNG, JPEG or WebP image" in note
    assert is_result(message) and text_of(message).startswith("[oi] images the block made")
    assert sum(1 for p in message["content"] if p["type"] == "image_url") == 1
    assert images.take_block_messages() == []  # taken


def test_at_most_a_few_images_per_block(tmp_path: Path) -> None:
    images = SessionImages(tmp_path, None)
    before = images.before_block()
    for number in range(MAX_IMAGES + 200):
        (tmp_path / f"p{number:03}.png").write_bytes(png(8, 8))
    images.after_block(before)
    ((message, note),) = images.take_block_messages()
    assert sum(1 for p in message["content"] if p["type"] == "image_url") == MAX_IMAGES
    assert note.count(f"more than {MAX_IMAGES} images in one block") == 1
    assert "and 197 more: more than" in note and len(note) < 600  # a short note, however many


def test_disabled_does_nothing_and_refused_disables(tmp_path: Path) -> None:
    off = SessionImages.for_workdir(tmp_path, enabled=False)
    assert off.shrink is None and off.before_block() is None
    (tmp_path / "a.png").write_bytes(png(8, 8))
    off.after_block(None)
    assert off.take_block_messages() == []
    assert off.user_message("hi") == {"role": "user", "content": "hi"}
    with pytest.raises(ConfigError, match="only with --vision"):
        off.queue(tmp_path / "a.png")
    on = SessionImages(tmp_path, None)
    on.queue(tmp_path / "a.png")
    messages = [on.user_message("look")]
    assert "image_url" in str(messages)
    note = on.refused(RuntimeError("no images here"), messages)
    assert note == "no images here; going on without images (1 left out)"
    assert "image_url" not in str(messages) and not on.enabled
    assert on.before_block() is None


def test_queue_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("text")
    with pytest.raises(ConfigError, match="not a PNG, JPEG or WebP image"):
        SessionImages(tmp_path, None).queue(tmp_path / "notes.png")


def test_data_urls_decode_to_the_bytes_sent() -> None:
    part = part_of()
    assert base64.b64decode(part.url.split(",", 1)[1]) == part.data


def test_one_image_is_decoded_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's users may send images at once; each decode may take 200 MB."""
    import threading
    import time

    shrink = pillow_shrinker()
    assert shrink is not None
    inside, most = [0], [0]
    real_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # a slow decode: the other thread would come in now
        inside[0] -= 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    threads = [threading.Thread(target=shrink, args=(png(64, 64), 16)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
