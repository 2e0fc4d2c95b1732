"""The built-in cluster health checks, run by the leader coordinator only: dead or fenced nodes, libvirt lost on
most nodes at once, failed fences and recoveries, VMs failed or unknown for more than a minute, ZooKeeper
ensemble members down, a failed autobackup run."""
import time

import pvc
from pvc.health import libvirt_lost
from pvc.hookspecs import ClusterHealthContext, HealthResult

VM_GRACE_S = 60.0
"""A VM in ``fail``, or whose node cannot say whether it runs, for this long is a fault (a migration or a
libvirtd restart passes through such states briefly)."""


class Nodes:
    description = "no node is dead or fenced"
    timeout = 2.0
    failure_delta = 10

    def check(self, context: ClusterHealthContext) -> HealthResult:
        down = [f"{node['name']} {node['daemon_state']}" for node in context.node_views()
                if node["daemon_state"] in ("dead", "fenced")]
        if not down:
            return HealthResult.healthy("every node is alive")
        return HealthResult(min(25 * len(down), 100), f"nodes down: {', '.join(down)}", "critical")


class LibvirtLostWidely:
    description = "not more than half of the running nodes have lost their libvirt at once"
    timeout = 2.0
    failure_delta = 10

    def check(self, context: ClusterHealthContext) -> HealthResult:
        running = [node for node in context.node_views() if node["daemon_state"] == "run"]
        stale = sorted(node["name"] for node in running if node.get("figures_stale"))
        if not libvirt_lost.too_many_lost(len(stale), len(running)):
            return HealthResult.healthy(f"{len(stale)} of {len(running)} running nodes without libvirt")
        return HealthResult(50, f"libvirt lost on {len(stale)} of {len(running)} running nodes at once "
                                f"({', '.join(stale)}): a cluster-wide event (an upgrade?), so no node fences "
                                "itself for it", "critical")


class Recoveries:
    description = "no node's fence or recovery has failed"
    timeout = 5.0
    failure_delta = 10

    def check(self, context: ClusterHealthContext) -> HealthResult:
        failed = [f"{recovery['node']}: {recovery.get('reason') or 'failed'}" for recovery in context.recoveries()
                  if recovery.get("state") == "failed"]
        if not failed:
            return HealthResult.healthy("no failed fence or recovery")
        return HealthResult(50, f"fence or recovery failed: {'; '.join(failed)}", "critical")


class VMs:
    description = "no VM is in fail, or unknown to its node, for longer than a minute"
    timeout = 2.0
    failure_delta = 10

    def __init__(self) -> None:
        self._bad_since: dict[str, float] = {}

    def check(self, context: ClusterHealthContext) -> HealthResult:
        now = time.monotonic()
        bad = {vm["name"]: ("fail" if vm["state"] == "fail" else "unknown") for vm in context.vm_views()
               if vm["state"] == "fail" or (vm["running"] is None and vm["state"] not in ("stop", "disable"))}
        self._bad_since = {name: self._bad_since.get(name, now) for name in bad}
        long_bad = sorted(f"{name} {bad[name]}" for name, since in self._bad_since.items()
                          if now - since >= VM_GRACE_S)
        if not long_bad:
            return HealthResult.healthy("no VM failed or unknown for long")
        shown = ", ".join(long_bad[:10]) + (f" and {len(long_bad) - 10} more" if len(long_bad) > 10 else "")
        return HealthResult(min(10 * len(long_bad), 50), f"VMs failed or unknown for over "
                                                         f"{VM_GRACE_S:.0f} s: {shown}")


class Autobackup:
    description = "the last autobackup run backed up every VM it chose"
    timeout = 2.0
    failure_delta = 10

    def check(self, context: ClusterHealthContext) -> HealthResult:
        outcome = context.autobackup_outcome()
        if not outcome or outcome.get("state") != "failed":
            return HealthResult.healthy("no failed autobackup run")
        errors = "; ".join(outcome.get("errors") or []) or "failed"
        return HealthResult(25, f"autobackup run {outcome.get('task') or '(not started)'} failed: {errors}")


class ZooKeeperEnsemble:
    description = "every ZooKeeper server of the ensemble answers"
    timeout = 5.0
    failure_delta = 10

    def check(self, context: ClusterHealthContext) -> HealthResult:
        members = context.zookeeper_members()
        down = [member["address"] for member in members if not member["answers"]]
        if not down:
            return HealthResult.healthy(f"{len(members)} ZooKeeper server(s) answer")
        return HealthResult(min(25 * len(down), 100), f"ZooKeeper servers not answering: {', '.join(down)} "
                                                      f"(of {len(members)})", "critical" if
                            2 * len(down) >= len(members) else None)


@pvc.hookimpl
def pvc_cluster_health_checks():
    return {"nodes": Nodes(), "libvirt": LibvirtLostWidely(), "recoveries": Recoveries(), "vms": VMs(),
            "zookeeper-ensemble": ZooKeeperEnsemble(), "autobackup": Autobackup()}
