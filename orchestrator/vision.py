"""Images for a vision model (``--vision``): which images a block made, read without being
redirected, made small, and sent as OpenAI ``image_url`` parts with data URLs (what vLLM takes
for Qwen2.5-VL and Qwen3-VL).

Pure but for three readers: ``snapshot`` lists the workdir's image files (name, size, mtime,
inode; never through a symlink), ``read_workdir_image`` reads one of them beneath the workdir
(no symlink on the way or at the end, never a FIFO or device, within a byte cap) and
``read_user_image`` reads a file a person named (``--image``, ``%image``). Downscaling uses
Pillow when the host has it (``pillow_shrinker``); without it, an image is sent as it is if it
is within ``MAX_SEND_BYTES``, else skipped with a word saying so.

A block is untrusted: its images may be huge (``MAX_FILE_BYTES``, ``MAX_PIXELS`` checked from
the header before anything is decoded), many (``MAX_IMAGES`` per block), not images at all
(refused by their header), or links to host files (never followed). Images count against the
context budget (``image_tokens``, used by ``context.py``), and the session record keeps a
description of each image instead of its data (``recordable``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import math
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, OiError
from orchestrator.fsafe import O_READ, check_relative, open_dir_beneath, read_regular
from orchestrator.units import format_size

IMAGE_TYPES: Mapping[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
MAX_FILE_BYTES = 20 << 20  # a bigger file is not read at all
MAX_PIXELS = 50_000_000  # refused before decoding (a decompression bomb decodes to gigabytes)
MAX_SIDE = 768  # downscaled to fit: ~600 tokens of Qwen2.5-VL, a chart's text still legible
MAX_SEND_BYTES = 1 << 20  # the most sent as is, without Pillow to make it smaller
MAX_IMAGES = 4  # per block: the newest ones
SNAPSHOT_ENTRIES = 50_000  # the most workdir entries looked at before and after a block
SKIPPED_DIRS = frozenset({".git", ".oi", "node_modules", "__pycache__", ".venv", "venv"})
PIXELS_PER_TOKEN_SIDE = 28  # Qwen2.5-VL: 14-pixel patches merged 2x2 (Qwen3-VL: 32, fewer)
RESULT_PREFIX = "[oi] "
"""How oi's own messages to the model begin (block results; the images blocks made)."""
REMOVED = "[oi] image removed"

Shrinker = Callable[[bytes, int], "tuple[bytes, str, int, int]"]
"""(image bytes, max side) -> (new bytes, MIME type, width, height)."""


@dataclass(frozen=True)
class Stamp:
    """What tells one version of a file from another."""

    size: int
    mtime_ns: int
    inode: int


Listing = dict[str, Stamp]


@dataclass(frozen=True)
class ImagePart:
    """One image ready to send: ``name`` as the person and the model know it."""

    name: str
    mime: str
    data: bytes
    width: int
    height: int
    original: tuple[int, int]

    @property
    def url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def describe(self) -> str:
        size = f"{self.width}x{self.height}"
        if self.original != (self.width, self.height):
            size += f" from {self.original[0]}x{self.original[1]}"
        return f"{self.name} ({size}, {format_size(len(self.data))})"


# --- which images a block made -------------------------------------------------------------


def snapshot(workdir: Path, limit: int = SNAPSHOT_ENTRIES) -> Listing:
    """The image files below ``workdir`` (relative name -> stamp), never through a symlink,
    skipping caches and VCS folders, after at most ``limit`` entries."""
    found: Listing = {}
    seen = 0
    stack = [""]
    while stack and seen < limit:
        relative = stack.pop()
        try:
            entries = list(os.scandir(workdir / relative))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            seen += 1
            if seen > limit:
                break
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name not in SKIPPED_DIRS:
                    stack.append(name)
            elif stat.S_ISREG(info.st_mode) and image_type(name) is not None:
                found[name] = Stamp(info.st_size, info.st_mtime_ns, info.st_ino)
    return found


def image_type(name: str) -> str | None:
    """The MIME type an image file's name promises, or None."""
    return IMAGE_TYPES.get(os.path.splitext(name)[1].lower())


def changed_images(before: Listing, after: Listing) -> list[str]:
    """Images that are new or changed in ``after``: the newest first, then by name."""
    changed = [name for name, stamp in after.items() if before.get(name) != stamp]
    return sorted(changed, key=lambda name: (-after[name].mtime_ns, name))


# --- reading --------------------------------------------------------------------------------


def read_workdir_image(workdir: Path, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """A workdir file's bytes, reached without following any symlink (a block may plant
    ``chart.png -> ~/.ssh/id_rsa``) and never from a FIFO or device; ``ConfigError`` naming
    why not."""
    *parents, leaf = check_relative(name, str(workdir))
    with open_dir_beneath(workdir, parents) as fd:
        return read_regular(Path(leaf), limit=limit, dir_fd=fd)


def read_user_image(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A file a person named: followed if it is a link (their choice), but a regular file
    within ``limit`` (never a FIFO that would hang oi)."""
    try:
        fd = os.open(path, O_READ & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"image {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"image {path}: not a regular file")
        if info.st_size > limit:
            raise ConfigError(
                f"image {path} is {format_size(info.st_size)}, more than the "
                f"{format_size(limit)} oi sends; make it smaller"
            )
        return fh.read(limit + 1)[:limit]


# --- what an image is -----------------------------------------------------------------------


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(MIME type, width, height) from a PNG, JPEG or WebP header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "image/png", width, height
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return "image/jpeg", width, height
        if length < 2:
            return None
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return "image/webp", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return "image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "image/webp", width, height
    return None


def tokens_for(width: int, height: int) -> int:
    """About how many tokens a vision model spends on an image of this size."""
    side = PIXELS_PER_TOKEN_SIDE
    return math.ceil(width / side) * math.ceil(height / side) + 2


def prepare(
    name: str, data: bytes, shrink: Shrinker | None, max_side: int = MAX_SIDE
) -> ImagePart | str:
    """An image ready to send, or why it is not sent (one phrase)."""
    found = image_size(data)
    if found is None:
        return f"{name}: not a PNG, JPEG or WebP image"
    mime, width, height = found
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        return f"{name}: {width}x{height} pixels is more than oi decodes"
    if shrink is not None:
        try:
            small, mime, new_width, new_height = shrink(data, max_side)
        except Exception as exc:  # a broken image: Pillow's errors are many and varied
            return f"{name}: cannot be decoded ({type(exc).__name__})"
        return ImagePart(name, mime, small, new_width, new_height, (width, height))
    if len(data) > MAX_SEND_BYTES:
        return (
            f"{name}: {format_size(len(data))} is more than oi sends as it is "
            f"({format_size(MAX_SEND_BYTES)}); install Pillow so oi can make it smaller"
        )
    return ImagePart(name, mime, data, width, height, (width, height))


_ONE_DECODE = threading.Lock()
"""One image decoded at a time in this process: a decoded image may take ``MAX_PIXELS`` x 4
bytes (200 MB), and a server's users could otherwise have many decoded at once."""


def pillow_shrinker() -> Shrinker | None:
    """A downscaler with Pillow, if the host has it."""
    try:
        from PIL import Image  # noqa: PLC0415 - optional
    except ImportError:
        return None

    def shrink(data: bytes, max_side: int) -> tuple[bytes, str, int, int]:
        with _ONE_DECODE, Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale
            image.thumbnail((max_side, max_side))
            alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            out = io.BytesIO()
            if image.format == "JPEG" or (not alpha and image.format != "PNG"):
                image.convert("RGB").save(out, "JPEG", quality=85)
                mime = "image/jpeg"
            else:
                image.convert("RGBA" if alpha else "RGB").save(out, "PNG", optimize=True)
                mime = "image/png"
            return out.getvalue(), mime, image.width, image.height

    return shrink


# --- messages -------------------------------------------------------------------------------


def image_part(part: ImagePart) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": part.url}}


def user_message(text: str, parts: Iterable[ImagePart]) -> dict[str, Any]:
    """A person's message with their images (``--image``); plain text when there are none."""
    images = [image_part(p) for p in parts]
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, *images]}


def block_images_message(parts: list[ImagePart], skipped: list[str]) -> dict[str, Any]:
    """oi's message carrying the images the last block made (text alone when none could be
    attached, saying why)."""
    text = RESULT_PREFIX
    if parts:
        text += "images the block made, attached: " + "; ".join(p.describe() for p in parts)
    if skipped:
        text += (". " if parts else "") + "Images not attached: " + "; ".join(skipped)
    if not parts:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, *map(image_part, parts)]}


def is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "image_url"


def text_of(message: Mapping[str, Any]) -> str:
    """A message's text: its content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


def has_images(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(is_image_part(p) for p in content)


@functools.lru_cache(maxsize=512)
def _url_tokens(url: str) -> int:
    head, _, payload = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head:
        return tokens_for(MAX_SIDE, MAX_SIDE)  # a remote URL: assume the largest oi sends
    for chars in (64, 4096, len(payload)):  # JPEG headers may sit after EXIF data
        with contextlib.suppress(ValueError):
            found = image_size(base64.b64decode(payload[: chars - chars % 4]))
            if found is not None:
                return tokens_for(found[1], found[2])
    return tokens_for(MAX_SIDE, MAX_SIDE)


def image_tokens(part: Mapping[str, Any]) -> int:
    """The tokens an ``image_url`` part will cost (from its size; see ``tokens_for``)."""
    url = (part.get("image_url") or {}).get("url", "")
    return _url_tokens(str(url))


def without_images(message: dict[str, Any], note: str = REMOVED) -> dict[str, Any]:
    """The message with each image part replaced by a text note (same object when none)."""
    if not has_images(message):
        return message
    content = [
        {"type": "text", "text": f"[{note}]"} if is_image_part(p) else p for p in message["content"]
    ]
    return {**message, "content": content}


def strip_images(messages: list[dict[str, Any]], note: str = REMOVED) -> int:
    """Replace every image in ``messages`` (in place) with a note; how many there were."""
    count = 0
    for index, message in enumerate(messages):
        if has_images(message):
            count += sum(1 for p in message["content"] if is_image_part(p))
            messages[index] = without_images(message, note)
    return count


def recordable(message: dict[str, Any]) -> dict[str, Any]:
    """What the session record keeps of a message: text, each image as a description instead
    of its data (a record's content is text: ``records.ChatMessage``; a resumed session gets
    the descriptions)."""
    if not has_images(message):
        return message
    pieces = []
    for part in message["content"]:
        if is_image_part(part):
            url = str(part["image_url"].get("url", ""))
            digest = hashlib.sha256(url.encode()).hexdigest()[:16]
            mime = url[5 : url.find(";")] if url.startswith("data:") else "url"
            pieces.append(f"[image {mime} sha256:{digest} not kept]")
        elif isinstance(part, dict):
            pieces.append(str(part.get("text", "")))
    return {**message, "content": "\n".join(pieces)}


# --- a session's images ------------------------------------------------------------------------


class SessionImages:
    """What a session with ``--vision`` does with images: lists the workdir before a block,
    collects what it made afterwards, and hands out the message to send with the next request
    (and the person's own images, queued for their next message).

    ``shrink`` makes images smaller (``for_workdir`` uses Pillow's when the host has it; None:
    images are sent as they are, within ``MAX_SEND_BYTES``). Not ``enabled`` (no ``--vision``),
    it does nothing at all: no listing, no image, messages as plain text.
    """

    def __init__(self, workdir: Path, shrink: Shrinker | None, *, enabled: bool = True) -> None:
        self.workdir = workdir
        self.shrink = shrink
        self.enabled = enabled
        self._pending: list[ImagePart] = []
        self._skipped: list[str] = []
        self._queued: list[ImagePart] = []

    @classmethod
    def for_workdir(cls, workdir: Path, *, enabled: bool = True) -> SessionImages:
        return cls(workdir, pillow_shrinker() if enabled else None, enabled=enabled)

    def before_block(self) -> Listing | None:
        return snapshot(self.workdir) if self.enabled else None

    def after_block(self, before: Listing | None) -> None:
        """Collect the images the block made (the newest ``MAX_IMAGES``)."""
        if before is None or not self.enabled:
            return
        changed = changed_images(before, snapshot(self.workdir))
        if len(changed) > MAX_IMAGES:
            extra = changed[MAX_IMAGES:]
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            self._skipped.append(f"{shown}: more than {MAX_IMAGES} images in one block")
        for name in changed[:MAX_IMAGES]:
            try:
                data = read_workdir_image(self.workdir, name)
            except (OiError, OSError) as exc:
                self._skipped.append(f"{name}: {exc}")
                continue
            prepared = prepare(name, data, self.shrink)
            if isinstance(prepared, str):
                self._skipped.append(prepared)
            else:
                self._pending.append(prepared)

    def take_block_messages(self) -> list[tuple[dict[str, Any], str]]:
        """The message carrying the images collected since the last call, with what to tell
        the person (none when nothing was collected; a note alone says why none was sent)."""
        parts, skipped = self._pending, self._skipped
        self._pending, self._skipped = [], []
        if not parts and not skipped:
            return []
        note = ""
        if parts:
            note = "sent to the model: " + "; ".join(p.describe() for p in parts)
        if skipped:
            note += ("; " if note else "") + "not sent: " + "; ".join(skipped)
        return [(block_images_message(parts, skipped), note)]

    def refused(self, error: Exception, messages: list[dict[str, Any]]) -> str:
        """The server refuses images: none is sent from now on, those in ``messages`` are
        replaced by a note; what to tell the person (once)."""
        self.disable()
        removed = strip_images(messages, "oi: image not sent: the model server takes none")
        return f"{error}; going on without images ({removed} left out)"

    def queue(self, path: Path) -> ImagePart:
        """A person's image for their next message (``--image``, ``%image``)."""
        if not self.enabled:
            raise ConfigError(
                f"image {path}: images go to the model only with --vision (oi run --vision, "
                "oi chat --vision)"
            )
        prepared = prepare(path.name, read_user_image(path), self.shrink)
        if isinstance(prepared, str):
            raise ConfigError(f"image {path}: {prepared.split(': ', 1)[1]}")
        self._queued.append(prepared)
        return prepared

    def user_message(self, text: str) -> dict[str, Any]:
        """The person's message with the images they queued (plain text without any)."""
        parts, self._queued = self._queued, []
        return user_message(text, parts if self.enabled else [])

    def disable(self) -> None:
        """The server refuses images: nothing more is collected or sent."""
        self.enabled = False
        self._pending, self._queued = [], []
