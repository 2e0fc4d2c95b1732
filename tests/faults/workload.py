"""Client threads issuing random VM operations from a seeded schedule.

Each client draws its operations from a `random.Random` of its own, seeded from the run's seed and the
client's name, and draws every value of every step whatever the step turns out to need and whatever the
previous call answered: the same seed gives every client the same sequence of operations (how many of them
fit in the run depends on how fast the cluster answers). A refused or failed operation is a normal outcome;
it goes into the history like a success.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pvc.errors import PVCError

from faults.history import History, Operation

OPERATION_WEIGHTS = {
    "define": 2.5, "start": 5, "stop": 2, "shutdown": 1.5, "restart": 1, "disable": 0.4, "migrate": 3,
    "migrate-auto": 2, "flush": 0.4, "ready": 1.2, "remove": 0.5,
}
WAIT_SHARE = 0.15
"""Share of state changes, migrations and removals called with wait=True (the call returns once the node is
done)."""


@dataclass(frozen=True)
class PlannedOperation:
    kind: str
    vm: str
    node: str | None
    wait: bool
    pause_s: float
    """Seconds the client thinks before its next operation."""

    def describe(self) -> str:
        return f"{self.kind}({self.vm}, {self.node}, wait={self.wait}) +{self.pause_s:.2f}s"


def schedule(seed: int | str, actor: str, vms: list[str], nodes: list[str],
             weights: dict[str, float] = OPERATION_WEIGHTS) -> Iterator[PlannedOperation]:
    """The endless, reproducible sequence of one client's operations."""
    rng = random.Random(f"{seed}/{actor}")
    kinds, kind_weights = list(weights), list(weights.values())
    while True:
        kind = rng.choices(kinds, kind_weights)[0]
        vm = rng.choice(vms)
        node = rng.choice(nodes)
        with_target = rng.random() < 0.7
        wait = rng.random() < WAIT_SHARE
        pause = rng.uniform(0.05, 0.5)
        if kind == "define" and not with_target or kind == "migrate-auto":
            node = None
        if kind in ("define", "flush", "ready"):
            wait = False
        yield PlannedOperation(kind, vm, node, wait, pause)


def perform(client, operation: PlannedOperation, domain_xml: Callable[[str], str]) -> Any:
    """Carry out one planned operation through the public client."""
    vms, nodes = client.vms, client.nodes
    kind, vm, node, wait = operation.kind, operation.vm, operation.node, operation.wait
    if kind == "define":
        return vms.define(domain_xml(vm), target=node)
    if kind in ("start", "stop", "shutdown", "restart", "disable"):
        return getattr(vms, kind)(vm, wait=wait)
    if kind in ("migrate", "migrate-auto"):
        return vms.migrate(vm, target=node, wait=wait)
    if kind == "flush":
        return nodes.flush(node)
    if kind == "ready":
        return nodes.ready(node)
    if kind == "remove":
        return vms.remove(vm, wait=True) if wait else vms.remove(vm)
    raise ValueError(f"unknown operation {kind}")


def _summary(result: Any) -> str:
    """The few fields of an answer worth keeping in the history."""
    if isinstance(result, dict):
        keys = ("state", "node", "running", "id", "removed", "waiting_for")
        return " ".join(f"{key}={result[key]}" for key in keys if key in result)
    return ""


class Client(threading.Thread):
    """One client with a connection of its own (a Pyro5 proxy belongs to one thread), running its schedule
    until told to stop. `in_flight` is the operation it is waiting on, if any, for a report of calls that did
    not return after the run."""

    def __init__(self, name: str, connect: Callable[[], Any], history: History, operations: Iterator[PlannedOperation],
                 domain_xml: Callable[[str], str], stopping: threading.Event):
        super().__init__(name=name, daemon=True)
        self._connect = connect
        self._history = history
        self._operations = operations
        self._domain_xml = domain_xml
        self._stopping = stopping
        self.in_flight: tuple[PlannedOperation, float] | None = None
        self._abandoned = False
        self._recording = threading.Lock()

    def abandon(self) -> tuple[PlannedOperation, float] | None:
        """Stop recording: the run ends without this client's call in flight, which the run records itself
        as unanswered; returns that call, if there is one (None if it has just been recorded)."""
        with self._recording:
            self._abandoned = True
            return self.in_flight

    def run(self) -> None:
        client = self._connect()
        try:
            for operation in self._operations:
                if self._stopping.is_set():
                    break
                invoked = self._history.now()
                self.in_flight = (operation, invoked)
                try:
                    outcome, detail = "ok", _summary(perform(client, operation, self._domain_xml))
                except PVCError as error:
                    outcome, detail = type(error).__name__, str(error)
                except Exception as error:  # anything else crossing the wire is itself worth reporting
                    outcome, detail = f"unexpected {type(error).__name__}", str(error)
                vm = None if operation.kind in ("flush", "ready") else operation.vm
                with self._recording:
                    if self._abandoned:
                        break
                    self._history.add(Operation(self.name, operation.kind, vm, operation.node,
                                                operation.wait, invoked, self._history.now(), outcome, detail[:300]))
                    self.in_flight = None
                self._stopping.wait(operation.pause_s)
        finally:
            client.close()
