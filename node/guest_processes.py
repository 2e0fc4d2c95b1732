"""The QEMU processes of this node's guests, found without asking libvirtd: the last resort of a self-fence.

A node cut off from ZooKeeper must have its guests dead by a deadline even when its libvirtd does not answer
(frozen, deadlocked, swapping). libvirt's QEMU driver keeps, for each running guest, ``RUN/qemu/NAME.pid`` (the
QEMU process's PID) and ``RUN/qemu/NAME.xml`` (the live domain document, PVC's metadata element included) in
its run directory (`libvirt_run_directory`, /run/libvirt on a real host). Those files name exactly this
libvirtd's guests; scanning the process table for QEMU command lines would find every host's guests on a
machine that runs several simulated hosts.

Where libvirtd runs in a PID namespace of its own (the local cluster's QEMU hosts), the PIDs in those files
are that namespace's; `libvirt_namespace_pid_file` names a file holding the PID (as this daemon sees it) of
any process in that namespace, and a PID is translated by the namespace's own numbering (``NSpid`` in
/proc/PID/status). Before a signal, the process is checked to be QEMU running that very guest, so a stale PID
file never kills another process.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from pvc.node.host_xml import METADATA_NAMESPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuestProcess:
    name: str
    pid: int
    """The PID as this daemon sees it."""


class GuestProcesses:
    def __init__(self, run_directory: str | os.PathLike | None, namespace_pid_file: str | os.PathLike | None = None):
        self._qemu_directory = Path(run_directory) / "qemu" if run_directory else None
        self._namespace_pid_file = Path(namespace_pid_file) if namespace_pid_file else None

    @property
    def visible(self) -> bool:
        """Whether this libvirtd's guests can be seen here at all (a QEMU driver's run directory)."""
        return self._qemu_directory is not None and self._qemu_directory.is_dir()

    def managed(self) -> list[GuestProcess]:
        """The live QEMU processes of the guests PVC manages on this libvirtd."""
        if not self.visible:
            return []
        namespace = self._namespace()
        found = []
        for pid_file in sorted(self._qemu_directory.glob("*.pid")):
            name = pid_file.stem
            if name == "driver" or not _managed(self._qemu_directory / f"{name}.xml"):
                continue
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            host_pid = pid if namespace is None else _in_namespace(pid, namespace)
            if host_pid is not None and _runs_guest(host_pid, name):
                found.append(GuestProcess(name, host_pid))
        return found

    def kill(self, deadline: float) -> tuple[list[str], list[str]]:
        """SIGKILL every managed guest's QEMU and wait for them to be gone until `deadline` (monotonic): the
        guests gone, and those still running (or why they cannot be seen)."""
        try:
            guests = self.managed()
        except RuntimeError as error:
            log.error("cannot find this host's guests' QEMU processes: %s", error)
            return [], [str(error)]
        for guest in guests:
            try:
                os.kill(guest.pid, signal.SIGKILL)
                log.error("killed QEMU (pid %d) of %s", guest.pid, guest.name)
            except ProcessLookupError:
                pass
        alive = list(guests)
        while alive and time.monotonic() < deadline:
            time.sleep(0.01)
            alive = [guest for guest in alive if _runs_guest(guest.pid, guest.name)]
        gone = sorted({guest.name for guest in guests} - {guest.name for guest in alive})
        return gone, sorted(guest.name for guest in alive)

    def _namespace(self) -> str | None:
        """libvirtd's PID namespace, when it is not this daemon's; None when PIDs need no translation."""
        if self._namespace_pid_file is None:
            return None
        try:
            reference = int(self._namespace_pid_file.read_text().split()[0])
            namespace = os.readlink(f"/proc/{reference}/ns/pid")
        except (OSError, ValueError, IndexError) as error:
            raise RuntimeError(f"libvirtd's PID namespace is unknown ({self._namespace_pid_file}: {error})") \
                from None
        return None if namespace == os.readlink("/proc/self/ns/pid") else namespace


def _managed(status_xml: Path) -> bool:
    """Whether libvirt's live document of the guest carries PVC's metadata element."""
    try:
        root = etree.parse(str(status_xml)).getroot()
    except (OSError, etree.XMLSyntaxError):
        return False
    return bool(root.findall(f".//metadata/{{{METADATA_NAMESPACE}}}*"))


def _in_namespace(pid: int, namespace: str) -> int | None:
    """The PID, as this daemon sees it, of the process numbered `pid` inside PID namespace `namespace`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry.name}/status") as status:
                numbers = next((line.split()[1:] for line in status if line.startswith("NSpid:")), None)
        except OSError:
            continue
        if numbers and int(numbers[-1]) == pid:
            return int(entry.name)
    return None


def _runs_guest(pid: int, name: str) -> bool:
    """Whether `pid` is a live (not zombie) QEMU process running the guest `name`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    return any(arg == f"guest={name}".encode() or arg.startswith(f"guest={name},".encode()) for arg in argv)
