"""Choosing the node a VM goes to.

The host filters the candidates once (daemon state ``run``, domain state ``ready``, not the VM's current
node, within its ``node_limit``) and says why each node was removed; the selector plugin only scores the
survivors. When several VMs are placed in one operation (a flush), a `Batch` adds each placed VM to its
node's figures, so the next choice sees it and a batch does not pile onto one node.
"""
import copy
from typing import Any, Iterable, Mapping

from pvc.errors import Conflict
from pvc.hookspecs import MigrationSelector


def rejection(node: Mapping[str, Any], vm: Mapping[str, Any], current_node: str | None) -> str | None:
    """Why `node` cannot take `vm`, or None if it can."""
    if node["name"] == current_node:
        return "is the VM's current node"
    limit = vm.get("node_limit") or []
    if limit and node["name"] not in limit:
        return "is outside the VM's node limit"
    if node.get("daemon_state") != "run":
        return f"is {node.get('daemon_state')}"
    if node.get("domain_state") != "ready":
        return f"is {node.get('domain_state')}"
    return None


def candidates(nodes: Iterable[Mapping[str, Any]], vm: Mapping[str, Any],
               current_node: str | None) -> list[Mapping[str, Any]]:
    """The nodes that may take `vm`; if none may, a `Conflict` naming why each was refused."""
    survivors, refusals = [], []
    for node in nodes:
        reason = rejection(node, vm, current_node)
        if reason is None:
            survivors.append(node)
        else:
            refusals.append(f"{node['name']} {reason}")
    if not survivors:
        detail = "; ".join(refusals) if refusals else "the cluster has no nodes"
        raise Conflict(f"no valid target node for VM '{vm.get('name')}': {detail}")
    return survivors


def choose(nodes: Iterable[Mapping[str, Any]], vm: Mapping[str, Any], selector: MigrationSelector,
           current_node: str | None = None) -> str:
    """The name of the best node for `vm`: lowest selector score, ties broken by node name."""
    best = min(candidates(nodes, vm, current_node), key=lambda node: (selector.score(node, vm), node["name"]))
    return best["name"]


class Batch:
    """Several placements against one snapshot of the nodes, each counting the ones before it."""

    def __init__(self, nodes: Iterable[Mapping[str, Any]]):
        self.nodes = {node["name"]: copy.copy(dict(node)) for node in nodes}

    def place(self, vm: Mapping[str, Any], selector: MigrationSelector, current_node: str | None) -> str:
        target = choose(self.nodes.values(), vm, selector, current_node)
        self.add(target, vm)
        return target

    def add(self, node_name: str, vm: Mapping[str, Any]) -> None:
        node = self.nodes[node_name]
        memory, vcpus = vm.get("memory_mib") or 0, vm.get("vcpus") or 0
        node["memory_free_mib"] = (node.get("memory_free_mib") or 0) - memory
        node["memory_allocated_mib"] = (node.get("memory_allocated_mib") or 0) + memory
        node["memory_provisioned_mib"] = (node.get("memory_provisioned_mib") or 0) + memory
        node["vcpus_allocated"] = (node.get("vcpus_allocated") or 0) + vcpus
        node["vms_running"] = (node.get("vms_running") or 0) + 1
        node["load"] = (node.get("load") or 0) + vcpus
