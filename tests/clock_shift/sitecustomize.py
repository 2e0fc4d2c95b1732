"""Test-only: shift this process's wall clock by ``PVC_TEST_CLOCK_SHIFT_S`` seconds.

A test puts this directory on the PYTHONPATH of one daemon it starts, so that daemon's `time.time()` runs that
far ahead (positive) or behind (negative) every other process's, as on a host whose clock is wrong. Its
monotonic clock is untouched, as a wrong wall clock leaves it. Nothing in PVC imports this.
"""
import os
import time

_SHIFT_S = float(os.environ.get("PVC_TEST_CLOCK_SHIFT_S") or 0)

if _SHIFT_S:
    _true_time, _true_time_ns = time.time, time.time_ns
    time.time = lambda: _true_time() + _SHIFT_S
    time.time_ns = lambda: _true_time_ns() + int(_SHIFT_S * 1_000_000_000)
