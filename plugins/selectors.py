"""The built-in migration selectors, over the figures each node's keepalive reports.

Each scores a candidate node; the lowest score wins (see `pvc.hookspecs.MigrationSelector`).
"""
from typing import Any, Mapping

import pvc


class _FigureSelector:
    def __init__(self, description: str, figure: str, sign: int = 1):
        self.description = description
        self._figure = figure
        self._sign = sign

    def score(self, node: Mapping[str, Any], vm: Mapping[str, Any]) -> float:
        return self._sign * (node.get(self._figure) or 0)


class _ProvisionedMemorySelector:
    description = "most memory left after what is provisioned to the node's VMs"

    def score(self, node: Mapping[str, Any], vm: Mapping[str, Any]) -> float:
        return -(node["memory_total_mib"] - node["memory_provisioned_mib"])


@pvc.hookimpl
def pvc_migration_selectors():
    return {
        "mem": _FigureSelector("most free memory", "memory_free_mib", sign=-1),
        "memprov": _ProvisionedMemorySelector(),
        "load": _FigureSelector("least CPU used by its guests (CPU seconds per second)", "load"),
        "vcpus": _FigureSelector("fewest allocated vCPUs", "vcpus_allocated"),
        "vms": _FigureSelector("fewest running VMs", "vms_running"),
    }
