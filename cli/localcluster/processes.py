"""Helpers for launching and stopping the long-lived processes of a local cluster.

The processes started here must survive the Python process that launched them
(``pvc-local up`` exits while the cluster keeps running), so they run in their own
session and are tracked through pid files that a later process can read back.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from pvc.cli.localcluster import pidfiles
from pvc.cli.localcluster.pidfiles import proc_alive, process_cmdline

T = TypeVar("T")

# Children started by this process, kept so that they are reaped as soon as they
# exit: an unreaped child stays a zombie, and Popen objects dropped while their
# child still runs raise ResourceWarning.
_children: dict[int, subprocess.Popen] = {}
_exit_codes: dict[int, int] = {}


LISTEN_PORTS_BELOW_EPHEMERAL = 12000
"""How many ports under the system's ephemeral range listeners are chosen from."""


def free_port(address: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A TCP (or, with `kind` SOCK_DGRAM, UDP) port on address that was free a moment ago (the caller races
    anyone else for it). Chosen below the ephemeral range: a port the kernel hands out for binding to port 0 is
    one it may give to any outgoing connection next, and a daemon started a moment later could not listen there
    while that connection lasts (seen: a host's libvirtd refused its migration port for as long as the run)."""
    low = _ephemeral_low()
    first = max(1024, low - LISTEN_PORTS_BELOW_EPHEMERAL)
    candidates = random.sample(range(first, low), min(200, low - first)) if low - first >= 100 else []
    for port in candidates:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(count: int, address: str = "127.0.0.1") -> int:
    """The first of `count` consecutive TCP ports on address that were all free a moment ago."""
    for _attempt in range(100):
        first = free_port(address)
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((address, port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on {address}")


def pid_alive(pid: int) -> bool:
    """Whether pid runs; a zombie counts as dead because it will never do anything again.

    PID 1 on some machines reaps orphans slowly, so a bare ``kill(pid, 0)`` reports
    exited processes as alive for a while.
    """
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _exit_codes[pid] = _children.pop(pid).returncode
        return False
    return proc_alive(pid)


def exit_description(pid: int) -> str:
    """How a child this process started ended ("exit code 1", "killed by SIGTERM"), or '' if unknown."""
    code = _exit_codes.get(pid)
    if code is None:
        return ""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def start_detached(
    argv: Sequence[str],
    log_path: Path,
    pid_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start argv in a new session so it outlives us and can be killed as a group."""
    log_path = Path(log_path)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    _children[child.pid] = child
    # Popen returns once exec has begun, but for a moment after that the new program's /proc cmdline is
    # still empty; `live_pid` would take the process for a stranger (a recycled pid) and call it dead.
    wait_until(lambda: process_cmdline(child.pid) or not pid_alive(child.pid), 10,
               what=f"{argv[0]} to start")
    if pid_path is not None:
        Path(pid_path).write_text(f"{child.pid}\n")
    return child.pid


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal pid's whole process group when it leads one, so its helpers die with it."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL pid's group and wait for it to die: a power cut, with no chance to clean up."""
    if not pid_alive(pid):
        return
    _signal_group(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout, what=f"pid {pid} to die after SIGKILL")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Ask pid to exit, and kill its group if it has not within timeout."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_until(lambda: not pid_alive(pid), timeout, what=f"pid {pid} to exit")
    except TimeoutError:
        kill_pid(pid)


def live_pid(pid_path: Path, marker: str) -> int | None:
    """The pid in pid_path if that process still runs and its argv mentions marker (`pidfiles.live_pid`)."""
    return pidfiles.live_pid(pid_path, marker, alive=pid_alive)


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages that must explain a failed start."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll predicate until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
