"""VM statistics: one bulk libvirt call per interval (`getAllDomainStats`), written as one record per node
(``/pvc/nodes/NAME/vm_stats``), apart from the keepalive, which stays small because fencing depends on it.

The record is compact (a list of numbers per VM, per disk, per interface, in the orders below) and bounded:
past `MAX_RECORD_BYTES` the per-device detail goes first, then VMs beyond the limit, and the record says so
(``truncated``)."""
import time
from typing import Any

import libvirt

from pvc import schema

from pvc.node_stats_fields import VM_FIELDS
MAX_RECORD_BYTES = 512 * 1024
"""Well under ZooKeeper's default 1 MiB znode limit."""

_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON
          | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_INTERFACE)
_BLOCK_KEYS = ("rd.bytes", "wr.bytes", "rd.reqs", "wr.reqs")
_INTERFACE_KEYS = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")


def from_bulk(stats: list[tuple[Any, dict[str, Any]]]) -> dict[str, list]:
    """What `getAllDomainStats` returned, as ``{VM: [VM_FIELDS..., {DISK: [...]}, {INTERFACE: [...]}]}``."""
    vms = {}
    for domain, values in stats:
        disks = {values[f"block.{index}.name"]: [int(values.get(f"block.{index}.{key}", 0)) for key in _BLOCK_KEYS]
                 for index in range(int(values.get("block.count", 0))) if f"block.{index}.name" in values}
        interfaces = {values[f"net.{index}.name"]: [int(values.get(f"net.{index}.{key}", 0))
                                                    for key in _INTERFACE_KEYS]
                      for index in range(int(values.get("net.count", 0))) if f"net.{index}.name" in values}
        vms[domain.name()] = [int(values.get("state.state", 0)), int(values.get("cpu.time", 0)),
                              int(values.get("balloon.current", 0)), int(values.get("balloon.maximum", 0)),
                              int(values.get("balloon.rss", 0)), int(values.get("balloon.unused", 0)),
                              int(values.get("balloon.available", 0)), disks, interfaces]
    return vms


def record(vms: dict[str, list], taken: float | None = None) -> dict[str, Any]:
    """The node's record, cut down to `MAX_RECORD_BYTES` if need be."""
    value = {"time": taken or time.time(), "vms": vms, "truncated": False}
    if len(schema.encode(value)) <= MAX_RECORD_BYTES:
        return value
    bare = {name: fields[:len(VM_FIELDS)] + [{}, {}] for name, fields in vms.items()}
    value = {"time": value["time"], "vms": bare, "truncated": True}
    while len(schema.encode(value)) > MAX_RECORD_BYTES and value["vms"]:
        keep = list(value["vms"])[: len(value["vms"]) * 3 // 4]
        value["vms"] = {name: value["vms"][name] for name in keep}
    return value


def collect(hypervisor) -> dict[str, Any]:
    """One bulk call through the hypervisor's bounded `call` (a hung libvirtd makes it `Unavailable`)."""
    stats = hypervisor.call("reading VM statistics",
                            lambda: hypervisor.connection().getAllDomainStats(_STATS, 0))
    return record(from_bulk(stats))
