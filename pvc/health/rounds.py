"""Rounds of health checks whose outcomes become faults: a node's checks (`pvc.node.health`) and the leader's
cluster checks (`pvc.rpc.cluster_health`) run and record the same way, each through its own `FaultRaiser`."""
import logging

from pvc.health.faults import FaultRaiser
from pvc.health.runner import CheckRunner
from pvc.hookspecs import HealthResult

log = logging.getLogger(__name__)


class CheckedRounds:
    runner: CheckRunner
    raiser: FaultRaiser
    kind = "health check"
    """How the log names these checks."""

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def _record(self, check: str, result: HealthResult) -> None:
        if result.delta:
            log.warning("%s %s: %s (-%d)", self.kind, check, result.message, result.delta)
        self.raiser.report(check, result)
