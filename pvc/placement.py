"""Choosing the node a VM goes to.

The host filters the candidates once (daemon state ``run``, domain state ``ready``, not the VM's current
node, within its ``node_limit``) and says why each node was removed; the selector plugin only scores the
survivors. When several VMs are placed in one operation (a flush), a `Batch` adds each placed VM to its
node's figures, so the next choice sees it and a batch does not pile onto one node.
"""
import copy
from typing import Any, Iterable, Mapping

from pvc.errors import Conflict, InvalidInput
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
    return memory_rejection(node, vm)


def memory_rejection(node: Mapping[str, Any], vm: Mapping[str, Any]) -> str | None:
    """Why `node` has no room for `vm`'s memory, or None: the memory of the running VMs placed there plus this
    one must stay within the node's memory times the cluster's overcommit ratio (``memory_limit_mib``, set by
    the coordinator's placement views; a node without it is not checked). Placements decided at the same moment
    by different callers may overshoot by what is in flight between them."""
    limit = node.get("memory_limit_mib")
    wanted = vm.get("memory_mib") or 0
    if limit is None or not wanted:
        return None
    used = node.get("memory_allocated_mib") or 0
    if used + wanted <= limit:
        return None
    return (f"has {max(limit - used, 0)} MiB of memory left for VMs ({node.get('memory_total_mib')} MiB x "
            f"overcommit {node.get('memory_overcommit')} = {limit} MiB, {used} MiB placed), less than the VM's "
            f"{wanted} MiB")


def check_fits_a_node(nodes: Iterable[Mapping[str, Any]], vm: Mapping[str, Any], what: str | None = None) -> None:
    """Refuse a VM (`what`, default "VM 'NAME'") with more vCPUs than the CPUs, or more memory than the memory,
    of the largest node it may run on (its node limit, else every node), naming the figures: it could never
    start anywhere."""
    what = what or f"VM '{vm.get('name')}'"
    limit = vm.get("node_limit") or []
    eligible = [node for node in nodes if (not limit or node["name"] in limit)
                and node.get("cpus") and node.get("memory_total_mib")]
    if not eligible:
        return
    where = f"node limit {', '.join(limit)}" if limit else "cluster"
    most_cpus = max(eligible, key=lambda node: (node["cpus"], node["name"]))
    if (vm.get("vcpus") or 0) > most_cpus["cpus"]:
        raise InvalidInput(f"{what} has {vm['vcpus']} vCPUs, more than the {most_cpus['cpus']} CPUs "
                           f"of the largest node in its {where} ({most_cpus['name']})")
    most_memory = max(eligible, key=lambda node: (node["memory_total_mib"], node["name"]))
    if (vm.get("memory_mib") or 0) > most_memory["memory_total_mib"]:
        raise InvalidInput(f"{what} has {vm['memory_mib']} MiB of memory, more than the "
                           f"{most_memory['memory_total_mib']} MiB of the largest node in its {where} "
                           f"({most_memory['name']})")


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
