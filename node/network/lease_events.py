"""Leases as dnsmasq grants them: the router node hears of each one from dnsmasq's lease script
(`lease_hook`) and records it in ZooKeeper at once, so that a router dying a moment after granting a lease
does not take it along (its successor starts from ZooKeeper's leases). Each pass also copies dnsmasq's lease
file, which catches up with whatever a datagram missed.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

HOOK = Path(__file__).with_name("lease_hook.py")
MAX_DATAGRAM = 4096

Handler = Callable[[int, str, str, "dict[str, Any] | None"], None]
"""(vni, action, mac, lease or None for a release)"""


class LeaseEvents:
    """The socket dnsmasq's lease script writes to, and the thread that hands each lease to `handler`."""

    def __init__(self, run_directory: Path, handler: Handler):
        self.socket_path = run_directory / "leases.sock"
        self._handler = handler
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def wrapper(self, vni: int) -> Path:
        """The executable dnsmasq runs for network `vni` (``dhcp-script`` takes a path, no arguments)."""
        self.listen()
        path = self.socket_path.with_name(f"dnsmasq-{vni}.lease-hook")
        arguments = " ".join(shlex.quote(str(part))
                             for part in (sys.executable, "-I", "-S", HOOK, self.socket_path, vni))
        text = f'#!/bin/sh\nexec {arguments} "$@"\n'
        if not path.exists() or path.read_text() != text:
            staging = path.with_name(path.name + ".new")
            staging.write_text(text)
            staging.chmod(stat.S_IRWXU)
            os.replace(staging, path)
        return path

    def listen(self) -> None:
        with self._lock:
            if self._socket is not None:
                return
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(str(self.socket_path))
            self.socket_path.chmod(stat.S_IRUSR | stat.S_IWUSR)
            self._socket = receiver
        threading.Thread(target=self._receive, args=(receiver,), name="lease-events", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            receiver, self._socket = self._socket, None
        if receiver is not None:
            receiver.close()
            self.socket_path.unlink(missing_ok=True)

    def _receive(self, receiver: socket.socket) -> None:
        while True:
            try:
                data = receiver.recv(MAX_DATAGRAM)
            except OSError:
                return
            try:
                event = json.loads(data)
                if event["action"] != "del" and not isinstance(event["expires"], int):
                    continue  # a dnsmasq that keeps lease lengths, not ends: the pass copies its file
                lease = None if event["action"] == "del" else \
                    {"ip": event["ip"], "hostname": event["hostname"], "expires": event["expires"]}
                self._handler(int(event["vni"]), event["action"], event["mac"], lease)
            except Exception as error:
                log.warning("a lease event was not recorded (the next pass copies the lease file): %s", error)
