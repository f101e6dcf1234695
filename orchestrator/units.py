"""Parsing and printing of sizes and durations people type ("1g", "512MiB"). Pure."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from "1g", "512m", "1.5GiB", "2048" (binary units, like Docker's ``--memory``)."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(
            f"cannot read size {text!r}: use a number with an optional unit, e.g. 512m, 1g, 2GiB"
        )
    number, unit, _suffix = match.groups()
    value = int(float(number) * _FACTORS[unit.lower()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def format_size(num_bytes: int) -> str:
    """The shortest exact-ish human form: 1073741824 -> "1 GiB", 1536 -> "1.5 KiB"."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:g} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:g} TiB"


def format_seconds(seconds: float) -> str:
    """ "60 s", "1.5 s", "250 ms"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:g} s"


def format_amount(num_bytes: int) -> str:
    """2254857830 -> "2.1 GiB", 67108864 -> "64 MiB": one decimal, for people and models."""
    if abs(num_bytes) < 1024:
        return f"{num_bytes} B"
    value = num_bytes / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while abs(value) >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f}".removesuffix(".0") + f" {units[0]}"


def size_text(num_bytes: int) -> str:
    """A size as one would write it in a setting (pure): 1073741824 -> "1g", 1536 -> "1536";
    exact, so reading it back gives the same number."""
    for unit, factor in (("t", 1024**4), ("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if num_bytes and num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return str(num_bytes)
