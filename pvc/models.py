"""How cluster objects look to a user: flat dicts with `name`, units in the keys (`memory_mib`, `size_bytes`).

These are built from the coordinator's cache and returned as-is by the remote objects, so `--format json`
prints exactly what the Python API returns.
"""
import time
from typing import Any

from pvc.cache import OWN_VALUE

NODE_FIGURES = ("memory_free_mib", "memory_allocated_mib", "memory_provisioned_mib", "vcpus_allocated",
                "vms_running", "vms_defined", "load")


def node_view(name: str, raw: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """One node: states, static facts and the figures of its latest keepalive."""
    facts = raw.get(OWN_VALUE) or {}
    keepalive = raw.get("keepalive") or {}
    beat = keepalive.get("time")
    view = {
        "name": name,
        "daemon_state": raw.get("daemon_state") or "init",
        "domain_state": raw.get("domain_state") or "ready",
        "cpus": facts.get("cpus"),
        "memory_total_mib": facts.get("memory_total_mib"),
        **{figure: keepalive.get(figure) for figure in NODE_FIGURES},
        "keepalive_age_s": round((now or time.time()) - beat, 1) if beat else None,
        "keepalive_interval_s": facts.get("keepalive_interval"),
        "libvirt_version": facts.get("libvirt_version"),
        "hypervisor": facts.get("hypervisor"),
        "accelerator": facts.get("accelerator"),
        "simulated": facts.get("simulated", False),
        "agent_uri": facts.get("agent_uri"),
    }
    return view


def vm_view(name: str, raw: dict[str, Any], detail: bool = True) -> dict[str, Any]:
    """One VM: its state words as DESIGN defines them, where it is and came from, metadata and resources."""
    spec = raw.get(OWN_VALUE) or {}
    placement = raw.get("placement") or {}
    status = raw.get("status") or {}
    view = {
        "name": name,
        "uuid": spec.get("uuid"),
        "state": raw.get("state") or "stop",
        "node": placement.get("node"),
        "last_node": placement.get("last_node"),
        "running": bool(status.get("running")) and status.get("node") == placement.get("node"),
        "node_limit": spec.get("node_limit") or [],
        "node_selector": spec.get("node_selector"),
        "node_autostart": bool(spec.get("node_autostart")),
        "migration_method": spec.get("migration_method"),
        "max_downtime_ms": spec.get("max_downtime"),
        "vcpus": spec.get("vcpus"),
        "memory_mib": spec.get("memory_mib"),
        "last_error": status.get("error") or placement.get("migration_error"),
        "migration_note": status.get("migration_note"),
    }
    if detail:
        view["disks"] = spec.get("disks") or []
        view["nics"] = spec.get("nics") or []
        view["volumes"] = spec.get("volumes") or []
        view["autostart_pending"] = bool(placement.get("autostart"))
    return view
