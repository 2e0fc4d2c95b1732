"""One fault-injection run: clients and nemesis for a bounded time, then settling, then the checker.

    run = run_faults(cluster, seed=seed_from_env(), seconds=60, kinds=nemesis.PROCESS_KINDS,
                     history_path=tmp_path / "history.jsonl")
    print(run.summary())
    assert not run.inconclusive and not run.problems

Order: the monitor starts first and stops last; clients and nemesis run together for `seconds` (longer, by at
most `FIRST_ROUND_GRACE_S`, until every kind asked for has been injected once); then the
nemesis heals what it broke (continues stopped processes, starts killed daemons, powers fenced hosts on again)
and the clients finish their last call; then the run waits for the cluster to settle (every record matching the hosts, no flush or ready
task active, twice in a row) while the monitor still watches; only then does the checker read the history.
"""
from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pvc
from pvc.errors import PVCError

from faults import checker, nemesis, workload
from faults.history import History, Operation
from faults.monitor import HostGate, Monitor, read_hosts
from faults.task_log import TaskLog
from faults.timings import FAST, Timings

SEED_VARIABLE = "PVC_FAULT_SEED"
FIRST_ROUND_GRACE_S = 45.0
"""Seconds a run may go on past its length for the nemesis to inject every kind asked for once."""
CLIENT_RETURN_TIMEOUT = 20.0
"""Seconds the clients get, after the faults stop, to return from their last call. A call with wait=True may
take the coordinator's own bound on waiting for a node (120 s) before it answers `Unavailable`, twice when its
coordinator died meanwhile (the client then sends it to the next one); a call still waiting then is recorded
as one whose answer never came (it may take effect at any time: `checker.command_problems` counts it so), and
listed, but is no failure: waiting is not what this checker judges."""


@dataclass(frozen=True)
class Sampling:
    """How often the monitor reads each host, and the longest gap between two readings of one host that still
    counts as watching it: a few hosts are read every 40 ms; a cluster of 96 hosts, each reading listing a
    hundred domains, is read as often as the machine can hold beside the cluster, and the run says so."""

    interval: float = 0.04
    gap_limit: float = checker.GAP_LIMIT_S


def seed_from_env() -> int:
    """The seed to replay (`PVC_FAULT_SEED`), else a fresh one."""
    value = os.environ.get(SEED_VARIABLE)
    return int(value) if value else random.SystemRandom().randrange(1, 10**9)


def seconds_from_env(variable: str, default: float) -> float:
    value = os.environ.get(variable)
    return float(value) if value else default


@dataclass
class FaultRun:
    seed: int
    seconds: float
    history: History
    clients: int
    vms: list[str]
    nodes: list[str]
    coordinators: list[str]
    planned_faults: list[nemesis.PlannedFault] = field(default_factory=list)
    planned_operations: dict[str, list[workload.PlannedOperation]] = field(default_factory=dict)
    violations: list[checker.Violation] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    existence: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)
    kinds: tuple[str, ...] = ()
    """The fault kinds the run was asked to inject, each at least once."""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    gaps: checker.Gaps | None = None
    administrator_fences: int = 0
    settled_after: float | None = None
    faults_ended: float = 0.0
    node_states: dict[str, str] = field(default_factory=dict)
    history_path: Path | None = None
    elapsed: float = 0.0

    @property
    def missing_kinds(self) -> list[str]:
        injected = self.history.faults_by_kind()
        return [kind for kind in self.kinds if not injected.get(kind)]

    @property
    def problems(self) -> list[str]:
        return [str(violation) for violation in self.violations] + self.mismatches + self.existence + \
            self.commands + self.outcomes + \
            [f"fault kind {kind} was asked for but never injected" for kind in self.missing_kinds]

    @property
    def inconclusive(self) -> str | None:
        """Why the run proves nothing (the monitor did not watch closely enough), or None."""
        return self.gaps.inconclusive if self.gaps is not None else "the monitor's gaps were never judged"

    def recoveries(self) -> Counter:
        """Recovery task outcome → count (``done`` is a completed recovery)."""
        return Counter(task.get("state") for task in self.tasks if task.get("kind") == "recover")

    def summary(self) -> str:
        history = self.history
        lines = [f"fault injection: seed {self.seed} (replay: {SEED_VARIABLE}={self.seed}), {self.seconds:g} s of "
                 f"faults, {self.clients} clients, {len(self.vms)} VMs, nodes {', '.join(self.nodes)}, "
                 f"coordinators {', '.join(self.coordinators)}; whole run {self.elapsed:.1f} s"]
        by_kind = history.operations_by_outcome()
        total = sum(by_kind.values(), Counter())
        lines.append(f"operations: {sum(total.values())} ({_counts(total)})")
        lines.extend(f"  {kind:<13} {_counts(outcomes)}" for kind, outcomes in by_kind.items())
        faults = history.faults_by_kind()
        lines.append(f"faults: {sum(faults.values())} ("
                     + ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())) + ")")
        if self.kinds:
            lines.append(f"fault kinds asked for: {len(self.kinds)}; never injected: "
                         f"{', '.join(self.missing_kinds) or 'none'}")
        recoveries = self.recoveries()
        lines.append(f"recoveries completed: {recoveries.get('done', 0)} (recovery tasks: "
                     f"{_counts(recoveries) or 'none'}); fences confirmed by the nemesis as an administrator: "
                     f"{self.administrator_fences}")
        for task in self.tasks:
            if task.get("kind") == "recover" and task.get("state") == "failed":
                lines.append(f"  recovery {task.get('id')} of {task.get('node')} failed (attempt "
                             f"{task.get('attempt') or 1}): {task.get('reason')}")
        other_tasks = Counter(f"{task.get('kind')} {task.get('state')}" for task in self.tasks
                              if task.get("kind") != "recover")
        lines.append(f"other tasks: {_counts(other_tasks) or 'none'}")
        if self.gaps is not None:
            lines.append(self.gaps.describe())
        if self.inconclusive:
            lines.append(f"INCONCLUSIVE: {self.inconclusive}")
        lines.append("monitor readings: " + "; ".join(
            f"{host} " + ", ".join(f"{what} {count}" for what, count in sorted(counts.items()))
            for host, counts in history.samples_by_host().items()))
        for note in history.notes:
            lines.append(f"note {note.at:9.3f} {note.who}: {note.text}")
        for straggler in self.stragglers:
            lines.append(f"still in flight: {straggler}")
        lines.append("settled " + ("NEVER within the settle timeout" if self.settled_after is None
                                   else f"{self.settled_after:.1f} s after the faults stopped"))
        lines.append("nodes at the end: " + ", ".join(f"{name} {state}" for name, state in self.node_states.items()))
        lines.append(f"violations (a VM on two hosts at once): {len(self.violations)}")
        for violation in self.violations:
            lines.append(f"  {violation}")
            last_seen = max(violation.run.answered[-1], violation.other.answered[-1])
            lines.extend(f"      {line}" for line in history.around(
                violation.vm, violation.at[0] - 6, min(last_seen, violation.at[1] + 15) + 1,
                {violation.run.host, violation.other.host}))
        lines.append(f"record mismatches after settling: {len(self.mismatches)}")
        for mismatch in self.mismatches:
            lines.append(f"  {mismatch}")
            vm = mismatch.split(":")[0]
            if not vm.startswith(("host ", "task ")):
                excerpt = history.around(vm, self.faults_ended - 15, history.now())
                lines.extend(f"      {line}" for line in excerpt[-40:])
        lines.append(f"acknowledged defines/removes contradicted: {len(self.existence)}")
        lines.extend(f"  {problem}" for problem in self.existence)
        lines.append(f"faults whose outcome was not the one they must have: {len(self.outcomes)}")
        lines.extend(f"  {problem}" for problem in self.outcomes)
        lines.append(f"final state or placement contradicting acknowledged commands: {len(self.commands)}")
        for problem in self.commands:
            lines.append(f"  {problem}")
            vm = problem.split(":")[0]
            lines.extend(f"      {line}" for line in history.around(vm, 0, history.now())[-40:])
        lines.append("first planned faults: " + "; ".join(fault.describe() for fault in self.planned_faults))
        for actor, operations in self.planned_operations.items():
            lines.append(f"first planned operations of {actor}: " + "; ".join(op.describe() for op in operations))
        if self.history_path:
            lines.append(f"history: {self.history_path}")
        return "\n".join(lines)


def run_faults(cluster, seed: int, seconds: float, clients: int = 4, vm_count: int = 6,
               domain_xml: Callable[[str], str] | None = None,
               fault_weights: dict[str, float] = nemesis.FAULT_WEIGHTS, kinds: tuple[str, ...] | None = None,
               settle_timeout: float = 60.0, history_path: Path | None = None,
               sampling: Sampling = Sampling()) -> FaultRun:
    """Run clients and nemesis against `cluster` (a `RunningCluster`) for `seconds`, settle, and check. `kinds`
    (by default those of `fault_weights`) are the fault kinds the run must inject, each at least once."""
    from vm_support import vm_xml
    domain_xml = domain_xml or vm_xml
    local = cluster.local
    started = time.monotonic()
    history = History()
    vms = [f"chaos{index}" for index in range(vm_count)]
    nodes = local.node_names
    run = FaultRun(seed, seconds, history, clients, vms, nodes, local.coordinator_names, history_path=history_path,
                   kinds=tuple(kinds or fault_weights))
    timings = Timings.of(local)
    run.planned_faults = _first(nemesis.schedule(seed, timings, fault_weights, run.kinds), 12)
    run.planned_operations = {f"client{index}": _first(workload.schedule(seed, f"client{index}", vms, nodes), 4)
                              for index in range(clients)}

    def connect():
        return pvc.connect(local.uris, local.state["api_key"])

    gates = {node: HostGate() for node in nodes}
    monitor = Monitor(local, history, gates, interval=sampling.interval).start()
    task_log = TaskLog(connect)
    task_log.start()
    stopping = threading.Event()
    workers = [workload.Client(f"client{index}", connect, history,
                               workload.schedule(seed, f"client{index}", vms, nodes), domain_xml, stopping)
               for index in range(clients)]
    chaos = nemesis.Nemesis(local, history, gates, nemesis.schedule(seed, timings, fault_weights, run.kinds),
                            stopping, connect, domain_xml, timings)
    try:
        for thread in [*workers, chaos]:
            thread.start()
        stopping.wait(seconds)
        grace = time.monotonic() + FIRST_ROUND_GRACE_S
        chaos.overtime()
        while run.missing_kinds and time.monotonic() < grace:
            time.sleep(0.5)
    finally:
        stopping.set()
        run.faults_ended = history.now()
        chaos.join(60)
        chaos.heal()
        run.administrator_fences = chaos.administrator_fences
    deadline = time.monotonic() + CLIENT_RETURN_TIMEOUT
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        unanswered = worker.abandon() if worker.is_alive() else None
        if unanswered is not None:
            operation, invoked = unanswered
            history.add(Operation(worker.name, operation.kind, None if operation.kind in ("flush", "ready") else
                                  operation.vm, operation.node, operation.wait, invoked, history.now(), "no answer",
                                  f"still waiting {CLIENT_RETURN_TIMEOUT:g} s after the faults stopped"))
            run.stragglers.append(f"{worker.name}: {operation.describe()} invoked at {invoked:.3f} s had not "
                                  f"returned {CLIENT_RETURN_TIMEOUT:g} s after the faults stopped (counted as a "
                                  f"call whose answer was lost)")
    try:
        records = _settle(run, local, gates, connect, chaos, settle_timeout)
        time.sleep(1.0)  # a last second of watching the settled cluster
    finally:
        monitor.stop()
        task_log.add(run.tasks)
        run.tasks = task_log.stop()
    run.violations = checker.double_runs(history)
    run.existence = checker.existence_problems(history.operations, records)
    run.commands = checker.command_problems(history, records, run.tasks)
    run.gaps = checker.sampling_gaps(history, sampling.gap_limit)
    run.outcomes = fault_outcomes(history, run.tasks, timings)
    run.elapsed = time.monotonic() - started
    if history_path is not None:
        history.dump(history_path)
    return run


def _settle(run: FaultRun, local, gates: dict[str, HostGate], connect, chaos: nemesis.Nemesis,
            timeout: float) -> list[dict[str, Any]]:
    """Wait until the records match the hosts and no task is active, twice in a row; the last records."""
    client = connect()
    deadline = time.monotonic() + timeout
    clean_checks, records = 0, []
    try:
        while True:
            chaos.supervise()
            try:
                chaos.administer(client)
                chaos.release_fenced(client)
                records = client.vms.list()
                tasks = client.nodes.tasks()
                active = [task["id"] for task in tasks if task["state"] in ("pending", "running")]
                run.mismatches = checker.record_mismatches(records, read_hosts(local, gates))
                run.mismatches += [f"task {task} still active" for task in active]
                run.mismatches += awaited_recoveries(run.history, tasks, chaos.timings)
            except PVCError as error:
                run.mismatches = [f"host or coordinator not answering while settling: {error}"]
            clean_checks = 0 if run.mismatches else clean_checks + 1
            if clean_checks >= 2:
                run.settled_after = run.history.now() - run.faults_ended
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        try:
            run.node_states = {node["name"]: f"{node['daemon_state']}/{node['domain_state']}"
                               for node in client.nodes.list()}
            run.tasks = client.nodes.tasks()
        except PVCError as error:
            run.node_states = {"?": str(error)}
    finally:
        client.close()
    return records


MASS_DEATH = "look dead at once"
"""What the leader says of a recovery it refuses because more than half of the nodes look dead at once."""


def fault_outcomes(history: History, tasks: list[dict[str, Any]], timings: Timings = FAST) -> list[str]:
    """The outcomes some faults must have, whatever else happened (the figures named are `timings`'):

    - a host cut off for `fenced_cut_s` or more (alone, or two of five together, still reaching each other)
      fences itself: by `self_fenced_by_s` after the cut, the monitor sees none of the VMs it ran then running
      there, as long as the cut lasts; and it is fenced: a recovery of it completes (a host that fenced itself
      stays silent until its daemon restarts, so even a leader changed during the cut finds it dead once it
      leads);
    - a clone of a node (its name, another PID namespace) does not take the node over: the original pvcnoded
      still runs;
    - a ZooKeeper server killed, the leading one included, fences nothing: no recovery of a node that no other
      fault could have got fenced begins while it is down or within `fence_window_s` of its return."""
    recoveries = _recoveries(history, tasks)
    heavy = [(node, fault.injected, _window_end(fault, node, recoveries, timings))
             for fault in history.faults if fault.kind in nemesis.HEAVY for node in fault.target.split("+")]
    problems = [f"{node} was cut off ({fault.kind} {fault.target} at {fault.injected:.3f}..{fault.healed:.3f} s), "
                f"yet no recovery of it completed" for fault, node in _unrecovered_cuts(history, recoveries, timings)]
    for fault in history.faults:
        if _must_fence(fault, timings):
            problems += _self_fenced(history, fault, timings)
        if fault.kind == "clone-node" and "the original still runs" not in fault.detail:
            problems.append(f"clone-node {fault.target} at {fault.injected:.3f}..{fault.healed:.3f} s: the clone "
                            f"took the node over: {fault.detail}")
        if fault.kind in ("kill-zookeeper-leader", "kill-zookeeper-server"):
            for created, task in recoveries:
                node = task.get("node")
                if fault.injected <= created <= fault.healed + timings.fence_window_s and not any(
                        node == cut and start <= created <= end for cut, start, end in heavy):
                    problems.append(f"{fault.kind} {fault.target} at {fault.injected:.3f}..{fault.healed:.3f} s "
                                    f"got node {node} fenced ({task.get('id')} at {created:.3f} s, "
                                    f"{task.get('state')}): losing one ZooKeeper server must fence nothing")
    return problems


def _must_fence(fault, timings: Timings) -> bool:
    return fault.kind in ("cut-host", "cut-minority") and fault.healed - fault.injected >= timings.fenced_cut_s


def _recoveries(history: History, tasks: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    return [(history.from_wall(task.get("created")) or 0.0, task) for task in tasks if task.get("kind") == "recover"]


def _unrecovered_cuts(history: History, recoveries: list[tuple[float, dict[str, Any]]],
                      timings: Timings) -> list[tuple[Any, str]]:
    """Each (fault, node) of a cut that must get its hosts fenced with no recovery of that node completed within
    its window (`_window_end`)."""
    return [(fault, node) for fault in history.faults if _must_fence(fault, timings)
            for node in fault.target.split("+")
            if not any(task.get("node") == node and task.get("state") == "done"
                       and fault.injected <= created <= _window_end(fault, node, recoveries, timings)
                       for created, task in recoveries)]


def _window_end(fault, node: str, recoveries: list[tuple[float, dict[str, Any]]], timings: Timings) -> float:
    """Until when a recovery of `node` is this fault's own: `fence_window_s` after it heals, or to the end of the
    run when a recovery of the node begun in that window was refused because more than half of the nodes looked
    dead at once (`MASS_DEATH`): overlapping cuts had cut off that many, and the node is fenced only once fewer
    look dead, when its recovery is tried again or a new leader begins one."""
    end = fault.healed + timings.fence_window_s
    held = any(task.get("node") == node and MASS_DEATH in (task.get("reason") or "")
               and fault.injected <= created <= end for created, task in recoveries)
    return math.inf if held else end


def awaited_recoveries(history: History, tasks: list[dict[str, Any]], timings: Timings = FAST) -> list[str]:
    """The recoveries settling still waits for: a cut that ended with the run may be fenced only after it (the
    leader counts its deadline from when it last reached ZooKeeper, and a leader cut off during the cut was
    replaced late in it; one held back while too many nodes looked dead is fenced once fewer do), and the
    outcome is judged only once its window is over or settling gives up."""
    now, recoveries = history.now(), _recoveries(history, tasks)
    return [f"awaiting a recovery of {node} (cut off at {fault.injected:.3f}..{fault.healed:.3f} s)"
            for fault, node in _unrecovered_cuts(history, recoveries, timings)
            if now <= _window_end(fault, node, recoveries, timings)]


def _self_fenced(history: History, fault, timings: Timings) -> list[str]:
    """Whether each host of a cut stopped the VMs it ran at the cut by `self_fenced_by_s` after it."""
    problems = []
    for host in fault.target.split("+"):
        readings = sorted((sample for sample in history.samples if sample.host == host and sample.running is not None),
                          key=lambda sample: sample.asked)
        before = [sample for sample in readings if sample.answered <= fault.injected]
        ran = set(before[-1].running) if before else set()
        late = [sample for sample in readings
                if fault.injected + timings.self_fenced_by_s <= sample.asked and sample.answered <= fault.healed]
        still = sorted({vm for sample in late for vm in ran & set(sample.running)})
        if still:
            first = next(sample for sample in late if ran & set(sample.running))
            problems.append(f"{host} was cut off ({fault.kind} {fault.target} at {fault.injected:.3f}.."
                            f"{fault.healed:.3f} s) yet still ran {', '.join(still)} at {first.asked:.3f} s, "
                            f"{first.asked - fault.injected:.2f} s after the cut: it did not fence itself")
    return problems


def _counts(counter: Counter) -> str:
    return ", ".join(f"{what} {count}" for what, count in counter.most_common())


def _first(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]
