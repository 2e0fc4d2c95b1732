"""Reading real guests from outside: their consoles, their QEMU processes, their disks."""
from __future__ import annotations

from pathlib import Path

from pvc.cli.localcluster.guest import Heartbeat, domain_xml, parse_console

from helpers import eventually

BOOT_TIMEOUT = 60.0
"""Seconds a guest gets to its first heartbeat: about 7 s under TCG, more with several booting on two cores."""


def guest_xml(name: str, disk: str | None = None) -> str:
    return domain_xml(name, memory_mib=128, disk=disk)


def console_text(cluster, vm: str, node: str) -> str:
    """The guest's console as written on `node` (read from the file, not through PVC)."""
    path = cluster.local.console_directory(node) / f"{vm}.log"
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def heartbeats(cluster, vm: str, node: str) -> list[Heartbeat]:
    return parse_console(console_text(cluster, vm, node))


def wait_heartbeat(cluster, vm: str, node: str, after: int = -1, boot_id: str | None = None,
                   timeout: float = BOOT_TIMEOUT) -> Heartbeat:
    """The latest heartbeat on `node`'s console with a counter above `after` (and of boot `boot_id`)."""
    def fresh() -> Heartbeat | None:
        beats = [beat for beat in heartbeats(cluster, vm, node)
                 if beat.counter > after and (boot_id is None or beat.boot_id == boot_id)]
        return beats[-1] if beats else None
    beat = eventually(fresh, timeout, interval=0.2)
    assert beat, f"no heartbeat of {vm} on {node} after {after} within {timeout} s; console ends:\n" \
                 + "\n".join(console_text(cluster, vm, node).splitlines()[-10:])
    return beat


def qemu_pid(cluster, node: str, vm: str) -> int | None:
    """The host PID of the QEMU process running `vm` in `node`'s namespace, found from outside."""
    return cluster.local.host(node).qemu_pids().get(vm)


def volume_marker(cluster, pool: str, volume: str) -> str:
    """The marker the guest last wrote at the start of its disk, read from the volume's file on the host."""
    path = Path(cluster.local.storage_dir) / pool / volume
    with open(path, "rb") as disk:
        return disk.read(512).split(b"\0")[0].decode(errors="replace").strip()


def boot_guests(cluster, node: str, names: list[str]) -> dict[str, Heartbeat]:
    """Define and start real guests on `node`, booting together; each one's first heartbeat."""
    for name in names:
        cluster.client.vms.define(guest_xml(name), target=node)
        cluster.client.vms.start(name)
    return {name: wait_heartbeat(cluster, name, node) for name in names}
