"""How cluster objects look to a user: flat dicts with `name`, units in the keys (`memory_mib`, `size_bytes`).

These are built from the coordinator's cache and returned as-is by the remote objects, so `--format json`
prints exactly what the Python API returns.
"""
from typing import Any

from pvc.cache import OWN_VALUE
from pvc.fence_secrets import shown_bmc

NODE_FIGURES = ("memory_free_mib", "memory_allocated_mib", "memory_provisioned_mib", "vcpus_allocated",
                "vms_running", "vms_defined", "load")


def node_view(name: str, raw: dict[str, Any], keepalive_age_s: float | None = None,
              daemon_note: str | None = None, health: int | None = None) -> dict[str, Any]:
    """One node: states, static facts and the figures of its latest keepalive.

    `keepalive_age_s` is what the coordinator answering observed itself: seconds since it saw the node's
    keepalive change (never the node's own timestamp against the coordinator's clock); None when not observed.
    `daemon_note` explains a daemon state that needs it (a dead node whose keepalives resumed). `health`: 100
    minus its active unacknowledged faults' deltas (`pvc.health.faults.health`).

    ``figures_stale``: the node could not ask libvirt for these figures (``figures_age_s`` old when the
    keepalive was written, None when current), so they are not the node's present state."""
    facts = raw.get(OWN_VALUE) or {}
    keepalive = raw.get("keepalive") or {}
    view = {
        "name": name,
        "daemon_state": raw.get("daemon_state") or "init",
        "daemon_note": daemon_note,
        "domain_state": raw.get("domain_state") or "ready",
        "health": health,
        "cpus": facts.get("cpus"),
        "memory_total_mib": facts.get("memory_total_mib"),
        **{figure: keepalive.get(figure) for figure in NODE_FIGURES},
        "figures_stale": bool(keepalive.get("figures_stale")),
        "figures_age_s": keepalive.get("figures_age_s") if keepalive.get("figures_stale") else None,
        "keepalive_age_s": keepalive_age_s,
        "maintenance_seen": keepalive.get("maintenance_seen"),
        "keepalive_interval_s": facts.get("keepalive_interval"),
        "libvirt_version": facts.get("libvirt_version"),
        "hypervisor": facts.get("hypervisor"),
        "accelerator": facts.get("accelerator"),
        "simulated": facts.get("simulated", False),
        "migrates_live": bool(facts.get("migrates_live")),
        "agent_uri": facts.get("agent_uri"),
        **shown_bmc(facts.get("bmc")),
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
        "running": _running(status, placement),
        "unknown": status.get("unknown"),
        "node_limit": spec.get("node_limit") or [],
        "node_selector": spec.get("node_selector"),
        "node_autostart": bool(spec.get("node_autostart")),
        "migration_method": spec.get("migration_method"),
        "max_downtime_ms": spec.get("max_downtime"),
        "profile": spec.get("profile"),
        "made_from": spec.get("made_from"),
        "vcpus": spec.get("vcpus"),
        "memory_mib": spec.get("memory_mib"),
        "last_error": status.get("error") or placement.get("migration_error"),
        "migration_note": status.get("migration_note"),
        "tags": sorted(spec.get("tags") or {}),
        "protected_tags": sorted(name for name, facts in (spec.get("tags") or {}).items() if facts.get("protected")),
    }
    if detail:
        view["disks"] = spec.get("disks") or []
        view["nics"] = spec.get("nics") or []
        view["volumes"] = spec.get("volumes") or []
        view["autostart_pending"] = bool(placement.get("autostart"))
    return view


def _running(status: dict[str, Any], placement: dict[str, Any]) -> bool | None:
    """True or False as its node last checked; None when that node could not ask libvirt (`unknown`)."""
    if status.get("running") is None and status.get("unknown"):
        return None
    return bool(status.get("running")) and status.get("node") == placement.get("node")
