"""A VM's autobackup chains (`pvc.schema.autobackup_vm`): a full export and the incrementals built on it, each
incremental's parent the backup before it, so that a chain restores from its last export.

Pure functions over the record; the task (`pvc.rpc.backup.run`) writes it. Retention removes whole chains
only, never the newest, and marks them ``removing`` before any export goes, so a removal cut short is
finished by whoever looks next; their exports go newest first, so what remains of a chain meanwhile is still
a full export and the incrementals on it.
"""
from typing import Any


def empty() -> dict[str, Any]:
    return {"chains": [], "removing": []}


def latest(record: dict[str, Any]) -> dict[str, Any] | None:
    """The VM's newest backup, the parent of its next incremental."""
    chains = [chain for chain in record["chains"] if chain["id"] not in record["removing"]]
    return chains[-1]["backups"][-1] if chains and chains[-1]["backups"] else None


def next_kind(record: dict[str, Any], full_interval: int) -> str:
    """``full`` when the VM has no chain, or its newest chain holds `full_interval` backups already."""
    chains = [chain for chain in record["chains"] if chain["id"] not in record["removing"]]
    if not chains or len(chains[-1]["backups"]) >= full_interval:
        return "full"
    return "incremental"


def with_backup(record: dict[str, Any], backup: dict[str, Any], keep_chains: int) -> dict[str, Any]:
    """The record with `backup` added (a full one begins a new chain, named after its snapshot) and the chains
    beyond the newest `keep_chains` marked ``removing``."""
    chains = [dict(chain) for chain in record["chains"]]
    if backup["kind"] == "full" or not chains:
        chains.append({"id": backup["snapshot"], "backups": [backup]})
    else:
        chains[-1] = {**chains[-1], "backups": [*chains[-1]["backups"], backup]}
    kept = [chain["id"] for chain in chains if chain["id"] not in record["removing"]][-keep_chains:]
    removing = [chain["id"] for chain in chains if chain["id"] not in kept]
    return {"chains": chains, "removing": removing}


def without_chain(record: dict[str, Any], chain_id: str) -> dict[str, Any]:
    return {"chains": [chain for chain in record["chains"] if chain["id"] != chain_id],
            "removing": [each for each in record["removing"] if each != chain_id]}


def removal_order(chain: dict[str, Any]) -> list[dict[str, Any]]:
    """A chain's backups in the order they are removed: newest first, the full export last."""
    return list(reversed(chain["backups"]))
