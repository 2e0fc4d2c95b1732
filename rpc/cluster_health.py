"""The leader's cluster health checks: run on the leader only, from its cache, their outcomes kept as the
cluster's faults (``cluster.CHECK``), every write checking the leader's own election node."""
import time
from typing import Any

from pvc import models, schema
from pvc.cache import OWN_VALUE, Views
from pvc.errors import NotLeader
from pvc.health import zookeeper_words
from pvc.health.faults import FaultRaiser
from pvc.health.rounds import CheckedRounds
from pvc.health.runner import CheckRunner
from pvc.rpc.context import CoordinatorContext
from pvc.rpc import tasks
from pvc.store import Transaction

CLUSTER_CHECKS = "pvc_cluster_health_checks"


def _vm_view(name: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    return models.vm_view(name, raw, detail=False) if raw.get(OWN_VALUE) is not None else None


class ClusterContext:
    """What one run of a cluster check is given (`pvc.hookspecs.ClusterHealthContext`). Its VM views are
    built again only for VMs changed since the last round, not for all 10,000 each round: during a burst of
    defines that rebuild was a tenth of the leader's CPU."""

    def __init__(self, context: CoordinatorContext, deadline: float, vm_views: Views):
        self._context = context
        self.deadline = deadline
        self._vm_views = vm_views

    def node_views(self) -> list[dict[str, Any]]:
        return self._context.node_views()

    def vm_views(self) -> list[dict[str, Any]]:
        return list(self._vm_views.current())

    def recoveries(self) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for task in tasks.list_tasks(self._context):
            if task.get("kind") == "recover":
                latest[task["node"]] = task
        return list(latest.values())

    def autobackup_outcome(self) -> dict[str, Any] | None:
        return self._context.store.read(schema.AUTOBACKUP_OUTCOME)

    def zookeeper_members(self) -> list[dict[str, Any]]:
        members = []
        for host, port in zookeeper_words.servers(self._context.settings["zookeeper_hosts"]):
            answer = zookeeper_words.ask(host, port, "ruok", min(self.deadline, time.monotonic() + 2.0))
            members.append({"address": f"{host}:{port}", "answers": answer == "imok"})
        return members


class LeaderHealth(CheckedRounds):
    """Runs the cluster checks every `interval` seconds while this coordinator leads."""

    kind = "cluster health check"

    def __init__(self, context: CoordinatorContext, interval: float):
        self._context = context
        vm_views = Views(context.cache.vms, _vm_view)
        self.raiser = FaultRaiser(context.store, None, self._as_leader,
                                  lambda: bool(context.cache.config.get().get("maintenance")))
        self.runner = CheckRunner(context.plugins.registry(CLUSTER_CHECKS),
                                  lambda deadline: ClusterContext(context, deadline, vm_views), self._record,
                                  lambda: interval, active=self._leading, thread_prefix="cluster-health",
                                  after_round=self.raiser.prune)

    def _as_leader(self) -> Transaction:
        leader_node = self._context.leadership.leader_node
        if leader_node is None:
            raise NotLeader("this coordinator no longer leads; its cluster faults are left to the next leader")
        return self._context.store.transaction(leader_node)

    def _leading(self) -> bool:
        if self._context.leadership.leader_node is None:
            self.raiser.forget()
            return False
        return True
