"""Sizes as people write them (binary units, as qemu-img and rbd read them) and as tables show them.

``512M``, ``10G``, ``1T`` are MiB, GiB and TiB; a bare number is bytes. JSON always carries bytes, in keys
ending ``_bytes``, so scripts never parse a unit.
"""
import re

from pvc.errors import InvalidInput

UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

MAX_SIZE = 1 << 60
"""1 EiB: beyond what a file (ext4, XFS) or an RBD image can be, and safely inside a signed 64-bit offset."""

_SIZE = re.compile(r"(\d+)([KMGTP]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: object, what: str = "size") -> int:
    """Bytes from ``10G``/``512M``/``4096``; anything else (negative, fractional, unknown unit) is refused
    with a message naming `what`."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise InvalidInput(f"invalid {what} {text}: must be a positive number of bytes")
        if text > MAX_SIZE:
            raise InvalidInput(f"invalid {what} {text}: larger than the {human(MAX_SIZE)} any backend can hold")
        return text
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidInput(f"invalid {what} {text!r}: use a positive whole number with an optional binary "
                           "unit, like 512M, 10G or 1T")
    size = int(match.group(1)) * UNITS[match.group(2).upper()]
    if size <= 0:
        raise InvalidInput(f"invalid {what} {text!r}: must be greater than zero")
    if size > MAX_SIZE:
        raise InvalidInput(f"invalid {what} {text!r}: larger than the {human(MAX_SIZE)} any backend can hold")
    return size


def human(size: int | None) -> str:
    """``10.0G`` for people; exact byte counts stay in JSON."""
    if size is None:
        return "-"
    for unit in ("P", "T", "G", "M", "K"):
        if size >= UNITS[unit]:
            value = size / UNITS[unit]
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"
