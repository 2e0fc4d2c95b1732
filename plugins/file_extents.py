"""Which parts of two files share their blocks on disk, from the kernel's extent maps (``FS_IOC_FIEMAP``).

On XFS or Btrfs a file volume's snapshot is a reflink, and a guest's write unshares only the blocks it touches:
an incremental export can skip, unread, every range the snapshot still shares with its parent, since two files
reading the same physical blocks at the same offset hold the same bytes there. ext4 shares nothing, and then
nothing is skipped. An extent whose physical address the kernel does not vouch for (delayed allocation, inline
or encoded data) never counts as shared.
"""
from __future__ import annotations

import fcntl
import struct

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
"""Write the file's dirty pages first, so that every extent has its final address."""
FIEMAP_EXTENT_LAST = 0x1
UNVOUCHED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
"""Extent flags under which ``fe_physical`` says nothing certain: unknown, delayed allocation, encoded,
encrypted, not aligned, inline, tail-packed."""

_REQUEST = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQQQLLLL")
BATCH = 256
"""Extents asked for per call."""


def extents(descriptor: int) -> list[tuple[int, int, int]]:
    """The file's mapped extents as (logical offset, physical offset, length), in order; empty where the
    filesystem has no extent map."""
    found: list[tuple[int, int, int]] = []
    start = 0
    while True:
        request = bytearray(_REQUEST.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, BATCH, 0))
        request += bytes(BATCH * _EXTENT.size)
        try:
            fcntl.ioctl(descriptor, FS_IOC_FIEMAP, request, True)
        except OSError:
            return []
        mapped = _REQUEST.unpack_from(request)[3]
        if mapped == 0:
            return found
        for index in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_rest = _EXTENT.unpack_from(
                request, _REQUEST.size + index * _EXTENT.size)
            if not flags & UNVOUCHED:
                found.append((logical, physical, length))
            if flags & FIEMAP_EXTENT_LAST:
                return found
        start = logical + length


def shared(first: int, second: int) -> list[tuple[int, int]]:
    """The (start, end) ranges at which the two open files map the same offsets to the same physical blocks."""
    ours, theirs = extents(first), extents(second)
    ranges: list[tuple[int, int]] = []
    i = j = 0
    while i < len(ours) and j < len(theirs):
        (a_start, a_physical, a_length), (b_start, b_physical, b_length) = ours[i], theirs[j]
        start, end = max(a_start, b_start), min(a_start + a_length, b_start + b_length)
        if start < end and a_physical - a_start == b_physical - b_start:
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        if a_start + a_length <= b_start + b_length:
            i += 1
        else:
            j += 1
    return ranges


def without(regions: list[tuple[int, int]], removed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`regions` (sorted, disjoint) less every range in `removed` (sorted, disjoint)."""
    left: list[tuple[int, int]] = []
    j = 0
    for start, end in regions:
        while j < len(removed) and removed[j][1] <= start:
            j += 1
        k, position = j, start
        while k < len(removed) and removed[k][0] < end:
            if removed[k][0] > position:
                left.append((position, removed[k][0]))
            position = max(position, removed[k][1])
            k += 1
        if position < end:
            left.append((position, end))
    return left
