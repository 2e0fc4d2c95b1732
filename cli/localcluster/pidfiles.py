"""Processes recorded in pid files, read from /proc. Standard library only, and light: ipmi_sim's chassis
command (`chassis.py`, run without site packages) imports it by its file name, as the local cluster's modules
import it by its package name."""
from __future__ import annotations

import os
import time
from collections.abc import Callable


def proc_alive(pid: int) -> bool:
    """Whether /proc shows pid running; a zombie counts as dead because it will never do anything again."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The command name in parentheses may itself contain spaces or parentheses.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def process_cmdline(pid: int) -> list[str]:
    """The argv of pid, empty if it is gone; used to tell our process from a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def read_pid(pid_path: os.PathLike | str) -> int | None:
    """The pid recorded in pid_path, or None when there is no usable record."""
    try:
        with open(pid_path) as file:
            return int(file.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def live_pid(pid_path: os.PathLike | str, marker: str, alive: Callable[[int], bool] = proc_alive) -> int | None:
    """The pid in pid_path if that process still runs and its argv mentions marker.

    A pid file can outlive its process by days (``pvc-local down`` after a reboot),
    and the pid may since belong to something else that must not be killed.
    """
    pid = read_pid(pid_path)
    if pid is None or not alive(pid):
        return None
    if not any(marker in arg for arg in _settled_cmdline(pid, alive)):
        return None
    return pid


def _settled_cmdline(pid: int, alive: Callable[[int], bool], timeout: float = 2.0) -> list[str]:
    """pid's argv once it has one. While a process execs (`ip netns exec` becoming the daemon, a script's
    shebang becoming its interpreter) its /proc cmdline reads empty for a moment; taken as the argv, a daemon
    starting in a namespace once passed for dead, its log still empty (CI)."""
    deadline = time.monotonic() + timeout
    while not (argv := process_cmdline(pid)) and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return argv
