"""Applying an edit to a running guest, as far as libvirt lets it, without restarting it.

The edited definition is already recorded, and the node defines it as the domain's persistent configuration
when it converges; this changes only the running guest, so that the change is there before the next restart.
libvirt decides what it can do (a QEMU guest takes fewer vCPUs or less memory than its maximum, hot-plugs
NICs; the test driver hot-plugs nothing): when it refuses, the change waits for the next restart, and the
caller is told why.
"""
from typing import Any

import libvirt

from pvc.errors import InvalidInput, OperationFailed
from pvc.node.hypervisor import Hypervisor

CHANGES = ("vcpus", "memory_mib", "attach", "detach")


def apply(hypervisor: Hypervisor, name: str, change: dict[str, Any]) -> None:
    """Change running domain `name` as `change` says (``{"kind": one of CHANGES, "value": ...}``);
    `OperationFailed` with libvirt's reason when it cannot, or when the domain does not run here."""
    kind, value = change.get("kind"), change.get("value")
    if kind not in CHANGES:
        raise InvalidInput(f"unknown live change {kind!r} (one of: {', '.join(CHANGES)})")
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE

    def run() -> None:
        domain = hypervisor.connection().lookupByName(name)
        if not domain.isActive():
            raise OperationFailed(f"{name} is not running on this node")
        if kind == "vcpus":
            domain.setVcpusFlags(int(value), live)
        elif kind == "memory_mib":
            domain.setMemoryFlags(int(value) * 1024, live)
        elif kind == "attach":
            domain.attachDeviceFlags(str(value), live)
        else:
            domain.detachDeviceFlags(str(value), live)
    hypervisor.call(f"live change ({kind}) of {name}", run)
