"""Reading the node daemon's own log file for `pvc node log`: its end, then what was written since.

A reader following the log keeps the byte offset it has read up to; a file shorter than that offset was
rotated or truncated, and is read again from its start. Only whole lines are returned, so a line being
written is never cut in two.
"""
from collections import deque
from pathlib import Path
from typing import Any

from pvc.errors import InvalidInput, OperationFailed

MAX_LINES = 10000
MAX_FOLLOW_BYTES = 1 << 20
"""What one follow call returns at most; the reader asks again at once for the rest."""


def read(path: Path, lines: int, offset: int | None = None) -> dict[str, Any]:
    """``{"lines": [...], "offset": N}``: the last `lines` lines (no `offset`), or the whole lines written
    after byte `offset`; N is where to read on from."""
    if not isinstance(lines, int) or isinstance(lines, bool) or not 0 < lines <= MAX_LINES:
        raise InvalidInput(f"lines must be a whole number from 1 to {MAX_LINES}, not {lines!r}")
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
        raise InvalidInput(f"offset must be a byte position, not {offset!r}")
    try:
        with open(path, "rb") as log:
            size = log.seek(0, 2)
            if offset is None:
                log.seek(0)
                tail = deque(log, maxlen=lines)
                return {"lines": [_text(line) for line in tail], "offset": size}
            start = offset if offset <= size else 0
            log.seek(start)
            chunk = log.read(MAX_FOLLOW_BYTES)
    except OSError as error:
        raise OperationFailed(f"cannot read the node daemon's log {path}: {error.strerror}") from None
    complete = chunk[:chunk.rfind(b"\n") + 1]
    return {"lines": [_text(line) for line in complete.splitlines()], "offset": start + len(complete)}


def _text(line: bytes) -> str:
    return line.decode(errors="replace").rstrip("\r\n")
