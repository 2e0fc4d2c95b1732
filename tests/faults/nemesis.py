"""The nemesis: faults from a seeded schedule, several at once, in families.

Families (`FAMILIES`), each run in the default suite on its own cluster (see `tests/test_fault_injection.py`):

- ``process``: daemons killed, paused and frozen, alone and overlapping:
  - ``kill-node-daemon``: kill -9 a node's pvcnoded, and start it again after a moment (its VMs keep running);
  - ``kill-node-daemon-for-good``: kill -9 a node's pvcnoded and leave it dead: the leader fences the node
    through its BMC (the machine room then powers it on, which starts its pvcnoded) and recovers its VMs;
  - ``kill-leader-coordinator``: kill -9 the coordinator that leads (another one takes over), start it again;
  - ``freeze-libvirtd``: SIGSTOP a host's libvirtd for a few seconds (a hung daemon that still holds its
    socket), then SIGCONT; the host's `HostGate` is closed meanwhile, so that the monitor asks it nothing until
    the reading it sends just before the thaw;
  - ``drop-zookeeper-session``: SIGSTOP a pvcnoded for longer than the ZooKeeper session timeout, then SIGCONT;
  - ``second-fault-during-recovery``: a node's pvcnoded killed for good, and once its recovery task runs, a
    second fault on another node (its libvirtd frozen, or its pvcnoded killed and started again);
  - ``kill-leader-during-recovery``: a node's pvcnoded killed for good, and the leading coordinator killed
    while its recovery task runs (the next leader resumes it);
  - ``freeze-libvirtd-during-migration``: the libvirtd of a running VM's node, or of the node it is sent to,
    frozen, the VM migrated (the nemesis's own VM and command, in the history like a client's), the libvirtd
    thawed just after the node's libvirt deadline (`Timings.libvirt_timeout_s`); a target is frozen from the moment it
    claims the VM, so that its start is the call that outlives the deadline, and answers slowly a while after;
  - ``slow-libvirtd``: a host's libvirtd answering late, around the deadline (stopped for the deadline give
    or take a little, continued for a moment, over and over) while a VM is migrated to it;
  - ``restart-libvirtd`` (QEMU hosts): kill libvirtd; the host's supervisor starts it again, the guests run on.
- ``lab`` (a cluster on the lab network, with a ZooKeeper ensemble of three, five nodes):
  ``cut-host`` (one host's link cut past the fence deadline, then healed), ``cut-minority`` (two hosts cut off
  from the rest and from ZooKeeper, still reaching each other), ``cut-leader-coordinator`` (the leading
  coordinator cut off from every ZooKeeper server, still reached by clients), ``kill-zookeeper-server`` (a server that does not
  lead), ``kill-zookeeper-leader``; each server is started again after a while, one down at a time.
- ``bmc``: ``power-on-after-fence`` (the fence powers the node on again at once: `power_on_after`),
  ``unresponsive-bmc`` (its ipmi_sim SIGSTOPped while the node needs fencing), ``wrong-bmc-password`` (the
  BMC restarted with another password while the node needs fencing), ``clone-node`` (a second pvcnoded with
  the node's name and configuration, in a PID namespace of its own). After a fence that failed because of the
  BMC fault, the BMC is healed and the leader gets `FAILED_FENCE_RETRY_S` to fence the node again; then the
  nemesis acts as an administrator: it powers the node off and confirms the fence (counted in the summary).

Heavy faults (`HEAVY`: those after which a node may be fenced) start only once the cluster is whole again
(every node runs, none is broken or off) and no other heavy fault is under way: two nodes down out of three
look like a network fault, which no leader fences on its own, and a run could not settle. Every other fault
starts on time in a thread of its own, whatever else is under way, so faults overlap (a freeze during a
recovery, a coordinator killed during a fence), and the overlapping kinds above make sure of it.

The schedule (`schedule`) is drawn from a `random.Random` seeded from the run's seed alone, so the same seed
gives the same faults in the same order with the same durations. Its first round is every kind of the family
once, in a seeded order, light and heavy kinds alternating; then kinds come by weight. Targets are drawn as
numbers and mapped onto the cluster's nodes; "the leader" is whichever coordinator leads when the fault comes.
A fault that could not be injected (no running VM to migrate) is noted, not counted.

The nemesis also acts as the machine room would, in a thread of its own: a daemon that exited by itself is
noted in the history (that is a finding) and started again, as systemd would; a host found powered off
(fencing powers a dead node off through its BMC) is noted and powered on again a few seconds later, as an
administrator would; a node left dead with no recovery running (overlapping faults made more than half of the
nodes look dead at once, and no leader fences then) is powered off and fence-confirmed, as an administrator
would (counted in the summary).
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pvc.cli.localcluster.pidfiles import read_pid
from pvc.cli.localcluster.processes import exit_description
from pvc.errors import NotFound, PVCError

from faults.history import Fault, Freeze, History, Operation
from faults.monitor import HostGate
from faults.timings import Timings

PROCESS_KINDS = ("kill-node-daemon", "kill-node-daemon-for-good", "kill-leader-coordinator", "freeze-libvirtd",
                 "drop-zookeeper-session", "second-fault-during-recovery", "kill-leader-during-recovery",
                 "freeze-libvirtd-during-migration", "slow-libvirtd")
LAB_KINDS = ("cut-host", "cut-minority", "cut-leader-coordinator", "kill-zookeeper-server", "kill-zookeeper-leader")
BMC_KINDS = ("power-on-after-fence", "unresponsive-bmc", "wrong-bmc-password", "clone-node")
FAMILIES = {"process": PROCESS_KINDS, "lab": LAB_KINDS, "bmc": BMC_KINDS}
HEAVY = frozenset({"kill-node-daemon-for-good", "drop-zookeeper-session", "second-fault-during-recovery",
                   "kill-leader-during-recovery", "cut-host", "cut-minority", "power-on-after-fence",
                   "unresponsive-bmc", "wrong-bmc-password", "clone-node"})
FAULT_WEIGHTS = {"kill-node-daemon": 3, "kill-leader-coordinator": 2, "freeze-libvirtd": 3,
                 "drop-zookeeper-session": 2, "kill-node-daemon-for-good": 1, "second-fault-during-recovery": 1,
                 "kill-leader-during-recovery": 1, "freeze-libvirtd-during-migration": 8, "slow-libvirtd": 3}
BMC_WEIGHTS = {"power-on-after-fence": 1, "unresponsive-bmc": 1, "wrong-bmc-password": 1, "clone-node": 1}
LAB_WEIGHTS = {"cut-host": 2, "cut-minority": 1, "cut-leader-coordinator": 1, "kill-zookeeper-server": 1,
               "kill-zookeeper-leader": 1}
QEMU_FAULT_WEIGHTS = {**FAULT_WEIGHTS, "restart-libvirtd": 1.5}
POWER_ON_AFTER_S = 3.0
"""Seconds a host found off (fenced) stays off before the nemesis, as the machine room, powers it on again."""
THAW_READING_HEAD_START = 0.1
"""Seconds the monitor's reading gets to reach a frozen libvirtd's socket before the thaw."""
CLAIM_WATCH_STEP = 1 / 3
"""While waiting for a migration's target to claim the VM, its frozen libvirtd answers once every this much of
the node's libvirt deadline (well within it), so that the calls before the claim succeed."""
CLAIM_WATCH_TIMEOUT = 4.0
"""Longest the claim is waited for, in libvirt deadlines."""
SLOW_STOP = (0.4, 3.4 / 3)
"""How long a slow libvirtd stays stopped between two brief answers, in libvirt deadlines: around it."""
SLOW_AFTER_THAW = 4 / 3
"""After the thaw past the deadline, a migration's frozen target answers slowly for this many libvirt deadlines
(a libvirtd that hung once is rarely quick at once): what the node does with the start that outlived its deadline
is slow too."""
OWN_VM = "steady"
"""The VM the migration faults move: the nemesis's own, which no client touches."""
OWN_VM_SETTLE_S = 8.0
"""Longest a migration fault waits for `OWN_VM` to run, settled, before it moves it."""
FAILED_FENCE_RETRY_S = 15.0
CLONE_AFTERMATH_S = 6.0
"""Seconds the original pvcnoded is watched after a clone of it has ended (a daemon that gave way to the clone
may still be waiting for the clone's ZooKeeper session to end, and then exit)."""
"""Seconds the leader gets, once a BMC fault is healed, to fence the node again by itself."""


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    target: int
    """Index into the cluster's nodes (or coordinators, when no leader is known), modulo their number."""
    duration_s: float
    """How long the target stays broken."""
    gap_s: float
    """Quiet seconds before the fault."""
    other: int = 0
    """A second index: the second node of a fault that needs two, or the VM a migration moves."""
    choice: float = 0.0
    """A draw in [0, 1) for a fault that comes in two variants."""

    def describe(self) -> str:
        return f"+{self.gap_s:.2f}s {self.kind}[{self.target}] for {self.duration_s:.2f}s"


def _duration(kind: str, rng: random.Random, timings: Timings) -> float:
    session_timeout, libvirt_timeout = timings.session_timeout_s, timings.libvirt_timeout_s
    return {
        "kill-node-daemon": lambda: rng.uniform(0.2, 2.5),
        "kill-leader-coordinator": lambda: rng.uniform(0.5, 4.0),
        "freeze-libvirtd": lambda: rng.uniform(libvirt_timeout, libvirt_timeout * 8 / 3),
        "drop-zookeeper-session": lambda: rng.uniform(session_timeout + 1.5, session_timeout + 5.0),
        "second-fault-during-recovery": lambda: rng.uniform(0.5, 2.0),
        "kill-leader-during-recovery": lambda: rng.uniform(0.5, 3.0),
        "freeze-libvirtd-during-migration": lambda: libvirt_timeout + rng.uniform(0.1, 0.8),
        "slow-libvirtd": lambda: rng.uniform(libvirt_timeout * 8 / 3, libvirt_timeout * 4),
        "cut-host": lambda: rng.uniform(6.0, 9.0),
        "cut-minority": lambda: rng.uniform(7.0, 10.0),
        "cut-leader-coordinator": lambda: rng.uniform(2.0, 6.0),
        "kill-zookeeper-server": lambda: rng.uniform(1.0, 5.0),
        "kill-zookeeper-leader": lambda: rng.uniform(1.0, 5.0),
        "unresponsive-bmc": lambda: rng.uniform(5.0, 8.0),
        "wrong-bmc-password": lambda: rng.uniform(5.0, 8.0),
        "clone-node": lambda: rng.uniform(3.0, 8.0),
    }.get(kind, lambda: 0.0)()


def schedule(seed: int | str, timings: Timings, weights: dict[str, float] = FAULT_WEIGHTS,
             first_round: Sequence[str] | None = None) -> Iterator[PlannedFault]:
    """The endless, reproducible sequence of faults; every value is drawn at every step. `first_round` (by
    default every kind of `weights`) comes first, each kind once, light and heavy alternating."""
    rng = random.Random(f"{seed}/nemesis")
    kinds, kind_weights = list(weights), list(weights.values())
    heavy = [kind for kind in (first_round or kinds) if kind in HEAVY]
    light = [kind for kind in (first_round or kinds) if kind not in HEAVY]
    rng.shuffle(heavy)
    rng.shuffle(light)
    opening = []
    while heavy or light:
        for group in (light, heavy):
            if group:
                opening.append(group.pop())
    step = 0
    while True:
        kind = opening[step] if step < len(opening) else rng.choices(kinds, kind_weights)[0]
        step += 1
        target, other, choice = rng.randrange(1 << 16), rng.randrange(1 << 16), rng.random()
        duration = _duration(kind, rng, timings)
        gap = rng.uniform(0.5, 2.5)
        yield PlannedFault(kind, target, round(duration, 2), round(gap, 2), other, round(choice, 3))


def libvirtd_pid(host: Any) -> int | None:
    """The pid of the host's libvirtd (a test-driver host's `pid` is its libvirtd's own)."""
    return host.libvirtd_pid if hasattr(host, "libvirtd_pid") else host.pid


class Skipped(Exception):
    """The fault could not be injected now (nothing to migrate, no second coordinator): noted, not counted."""


class Nemesis(threading.Thread):
    def __init__(self, local, history: History, gates: dict[str, HostGate], faults: Iterator[PlannedFault],
                 stopping: threading.Event, connect: Callable[[], Any], domain_xml: Callable[[str], str],
                 timings: Timings):
        super().__init__(name="nemesis", daemon=True)
        self._local = local
        self._timings = timings
        self._history = history
        self._gates = gates
        self._faults = faults
        self._stopping = stopping
        self._connect = connect
        self._domain_xml = domain_xml
        self._own_vm_lock = threading.Lock()
        self._down: set[tuple[str, str]] = set()
        """Daemons (program, name) the nemesis has taken down on purpose and not yet restarted."""
        self._stopped_pids: set[int] = set()
        """Processes the nemesis has SIGSTOPped and not yet continued."""
        self._lock = threading.Lock()
        self._off_since: dict[str, float] = {}
        """Hosts found powered off, and when."""
        self._broken_nodes: dict[str, int | None] = {}
        """Nodes whose pvcnoded was killed for good (with that pid) and that have not come back since (their
        host found off, or another pvcnoded running)."""
        self._readied: set[str] = set()
        """The ready tasks the nemesis started for fenced nodes that ran again."""
        self._quiet_after = 0.0
        """Monotonic time before which a node may still be found dead because of the last fault (a daemon
        paused past its self-fence deadline falls silent only once it wakes)."""
        self._heavy_active = threading.Event()
        self._zookeeper_lock = threading.Lock()
        self._libvirtd_locks = {node: threading.Lock() for node in local.node_names}
        """One fault at a time on a host's libvirtd (a freeze, a slow spell): a second waits for the first."""
        self._threads: list[threading.Thread] = []
        self._retries: list[PlannedFault] = []
        self._overtime = threading.Event()
        self._in_flight: Counter = Counter()
        """Kind → how many faults of it are being carried out now."""
        self._migration_freezes = 0
        """How many migrations the nemesis froze: the first freezes the target, the next the source, and so on."""
        self._restore: dict[str, Callable[[], None]] = {}
        """What `heal` must undo of a fault still under way (a BMC's password, the cluster's fence options)."""
        self._clones: dict[str, subprocess.Popen] = {}
        self.administrator_fences = 0
        """Fences the nemesis confirmed as an administrator: a node left dead that no leader fenced (its BMC was
        faulty, or more than half of the nodes looked dead at once)."""
        self._dead_since: dict[str, float] = {}
        """Since when (monotonic) each node has been seen dead with no recovery of it running."""


    @property
    def timings(self) -> Timings:
        return self._timings
    def run(self) -> None:
        supervisor = threading.Thread(target=self._supervise_until_stopped, name="nemesis-machine-room", daemon=True)
        supervisor.start()
        client = self._connect()
        try:
            for fault in self._planned():
                if self._stopping.wait(fault.gap_s):
                    break
                if fault.kind in HEAVY and not self._await_whole_cluster(client):
                    break
                if fault.kind in HEAVY:
                    self._heavy_active.set()
                thread = threading.Thread(target=self._carry_out, args=(fault,), name=f"nemesis-{fault.kind}",
                                          daemon=True)
                self._threads.append(thread)
                with self._lock:
                    self._in_flight[fault.kind] += 1
                thread.start()
        finally:
            client.close()
            for thread in self._threads:
                thread.join(60)
            supervisor.join(5)

    def overtime(self) -> None:
        """The run's length is over: from now on, only faults of kinds never injected (nor under way) come. A run of
        heavy faults past its length could otherwise keep a kind out until the grace ends."""
        self._overtime.set()

    def _planned(self) -> Iterator[PlannedFault]:
        """The schedule, with a fault skipped before its kind was ever injected tried again (with other targets)
        before the next one: every kind of the first round must come."""
        for fault in self._faults:
            while True:
                with self._lock:
                    retry = self._retries.pop(0) if self._retries else None
                if retry is None:
                    break
                if self._wanted(retry):
                    yield retry
            if self._wanted(fault):
                yield fault
            elif self._stopping.wait(0.05):  # every kind injected or under way: nothing more to plan
                return

    def _wanted(self, fault: PlannedFault) -> bool:
        if not self._overtime.is_set():
            return True
        with self._lock:
            under_way = self._in_flight[fault.kind]
        return not under_way and not self._history.faults_by_kind().get(fault.kind)

    def _carry_out(self, fault: PlannedFault) -> None:
        injected = self._history.now()
        client = self._connect()
        try:
            target, detail = self._inject(fault, client)
            self._history.add(Fault(fault.kind, target, injected, self._history.now(), detail))
        except Skipped as why:
            self._history.note("nemesis", f"{fault.describe()} skipped: {why}")
            if not self._history.faults_by_kind().get(fault.kind):
                with self._lock:
                    self._retries.append(dataclasses.replace(fault, target=fault.target + 1, other=fault.other + 1,
                                                             gap_s=1.0))
        except Exception as error:  # a harness failure: note it and go on with the next fault
            self._history.note("nemesis", f"{fault.describe()} failed: {type(error).__name__}: {error}")
        finally:
            client.close()
            with self._lock:
                self._in_flight[fault.kind] -= 1
            if fault.kind in HEAVY:
                self._heavy_active.clear()

    def _supervise_until_stopped(self) -> None:
        client = self._connect()
        try:
            while not self._stopping.wait(0.5):
                try:
                    self.supervise()
                    self.administer(client)
                except Exception as error:  # the machine room goes on
                    self._history.note("nemesis", f"supervising failed: {type(error).__name__}: {error}")
        finally:
            client.close()

    def administer(self, client) -> None:
        """Act as an administrator for a node left ``dead`` for `Timings.administrator_after_s` with no recovery of it
        running: overlapping faults can make more than half of the nodes look dead at once, and then no leader
        fences any (an administrator's call, by design), and a dead node stays dead until fenced. The
        administrator makes sure the node is off (powers it off through its BMC) and confirms the fence. Called
        while the faults run and while the run settles (faults ending just so left two nodes dead for good)."""
        dead_since = self._dead_since
        try:
            states = {node["name"]: node["daemon_state"] for node in client.nodes.list()}
            running = {task["node"] for task in client.nodes.tasks()
                       if task["kind"] == "recover" and task["state"] in ("pending", "running")}
        except PVCError:
            return
        now, after = time.monotonic(), self._timings.administrator_after_s
        for node, state in states.items():
            if state != "dead" or node in running:
                dead_since.pop(node, None)
                continue
            if now - dead_since.setdefault(node, now) < after:
                continue
            dead_since.pop(node)
            self._local.bmc(node).power_off()
            try:
                client.nodes.fence_confirm(node, force=True)  # powered off just now
            except PVCError as error:
                self._history.note("nemesis", f"as an administrator: {node} dead for {after:g} s "
                                              f"with no recovery running; powered off; fence-confirm refused: {error}")
                continue
            self.administrator_fences += 1
            self._history.note("nemesis", f"as an administrator: {node} dead for {after:g} s with "
                                          f"no recovery running: powered off and fence-confirmed")

    def _await_whole_cluster(self, client) -> bool:
        """Wait until every node runs again and no heavy fault is under way (or the wait times out, which is
        noted); False once the run is stopping."""
        deadline = time.monotonic() + self._timings.whole_again_timeout_s
        while True:
            try:
                listed = client.nodes.list()
                states = {node["name"]: node["daemon_state"] for node in listed}
                self._release_fenced(client, listed)
            except PVCError:
                states = {}
            with self._lock:
                broken = bool(self._broken_nodes)
            if states and all(state == "run" for state in states.values()) and not broken \
                    and not self._heavy_active.is_set() and time.monotonic() >= self._quiet_after:
                return True
            if time.monotonic() > deadline:
                self._history.note("nemesis", f"nodes not all running after "
                                              f"{self._timings.whole_again_timeout_s:g} s: {states}")
                return True
            if self._stopping.wait(0.5):
                return False

    def release_fenced(self, client) -> None:
        """`node ready` for each fenced node whose daemon runs again, as the administrator does after a run too:
        a fence that lands as the faults end leaves a node that starts nothing until then."""
        self._release_fenced(client, client.nodes.list())

    def _release_fenced(self, client, nodes: list[dict]) -> None:
        """As the administrator does: `node ready` for each fenced node whose daemon runs again (it starts
        nothing until then)."""
        for node in nodes:
            if node["daemon_state"] == "fenced" and node["daemon_note"]:
                try:
                    task = client.nodes.ready(node["name"])
                except PVCError as error:
                    self._history.note("nemesis", f"node ready {node['name']} refused: {error}")
                    continue
                if task["id"] not in self._readied:
                    self._readied.add(task["id"])
                    self._history.note("nemesis", f"node {node['name']} runs again after its fence: node ready "
                                                  f"(task {task['id']})")

    # -- faults ---------------------------------------------------------------------------------------------

    def _inject(self, fault: PlannedFault, client) -> tuple[str, str]:
        nodes = self._local.node_names
        node = nodes[fault.target % len(nodes)]
        others = [name for name in nodes if name != node]
        other = others[fault.other % len(others)]
        kind = fault.kind
        if kind == "kill-node-daemon":
            return node, self._kill_and_restart("pvcnoded", node, fault.duration_s)
        if kind == "kill-node-daemon-for-good":
            return node, self._kill_for_good(node)
        if kind == "kill-leader-coordinator":
            return self._kill_leader(client, fault)
        if kind == "freeze-libvirtd":
            return node, self._freeze_libvirtd(node, fault.duration_s)
        if kind == "drop-zookeeper-session":
            detail = self._pause_daemon(node, fault.duration_s)
            self._quiet_after = time.monotonic() + self._timings.detection_window_s
            return node, detail
        if kind == "second-fault-during-recovery":
            detail = self._kill_for_good(node) + "; " + self._await_recovery(client, node)
            if fault.choice < 0.5:
                frozen = self._freeze_libvirtd(other, self._timings.libvirt_timeout_s + fault.duration_s)
                second = f"then {other}'s libvirtd: {frozen}"
            else:
                second = f"then {other}'s pvcnoded: {self._kill_and_restart('pvcnoded', other, fault.duration_s)}"
            return node, f"{detail}; {second}"
        if kind == "kill-leader-during-recovery":
            detail = self._kill_for_good(node) + "; " + self._await_recovery(client, node)
            leader, killed = self._kill_leader(client, fault)
            return node, f"{detail}; then leader {leader}: {killed}"
        if kind == "freeze-libvirtd-during-migration":
            return self._freeze_during_migration(client, fault)
        if kind == "slow-libvirtd":
            return node, self._slow_libvirtd(client, node, fault)
        if kind == "restart-libvirtd":
            self._local.host(node).restart_libvirtd()
            return node, ""
        if kind in LAB_KINDS:
            return self._lab_fault(client, fault, node, other)
        if kind in BMC_KINDS:
            return node, self._bmc_fault(client, fault, node)
        raise ValueError(f"unknown fault {kind}")

    def _leader(self, client) -> str | None:
        try:
            return client.cluster.status()["leader"]
        except PVCError:
            return None

    def _kill_leader(self, client, fault: PlannedFault) -> tuple[str, str]:
        leader = self._leader(client)
        coordinators = self._local.coordinator_names
        name = leader if leader in coordinators else coordinators[fault.target % len(coordinators)]
        detail = self._kill_and_restart("pvcapid", name, fault.duration_s)
        return name, detail + ("" if leader == name else f" (the leader was {leader})")

    def _kill_and_restart(self, program: str, name: str, down_s: float) -> str:
        with self._lock:
            self._down.add((program, name))
        pid = self._local.daemon_pid(program, name)
        self._local.stop_daemon(program, name, kill=True)
        killed = self._history.now()
        self._sleep(down_s)
        try:
            if program == "pvcnoded" and not self._local.host(name).running:
                return f"pid {pid} killed; not started again: the host went off meanwhile"
            if self._local.daemon_pid(program, name):
                return f"pid {pid} killed; another was already running again"
            new_pid = self._start(program, name)
        finally:
            with self._lock:
                self._down.discard((program, name))
        if new_pid is None:
            return f"pid {pid} killed; not started again: a boot started it, or the host went off, meanwhile"
        return f"pid {pid} killed, pid {new_pid} started {self._history.now() - killed:.2f} s later"

    def _kill_for_good(self, node: str) -> str:
        """kill -9 the node's pvcnoded and start it no more: only the fence's power cycle (and the power-on
        `supervise` does after it) brings the node back."""
        pid = self._local.daemon_pid("pvcnoded", node)
        with self._lock:
            self._down.add(("pvcnoded", node))
            self._broken_nodes[node] = pid
        self._local.stop_daemon("pvcnoded", node, kill=True)
        return f"pid {pid} killed and left dead"

    def _await_recovery(self, client, node: str) -> str:
        """Wait until a recovery task of `node` runs; what was seen."""
        deadline = time.monotonic() + self._timings.recovery_wait_s
        started = self._history.now()
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                for task in client.nodes.tasks():
                    if task["kind"] == "recover" and task["node"] == node and task["state"] == "running" and \
                            (self._history.from_wall(task.get("created")) or 0) >= started - 10:
                        return f"its recovery {task['id']} running {self._history.now() - started:.2f} s later"
            except PVCError:
                pass
            time.sleep(0.05)
        return f"no recovery of {node} seen running within {self._timings.recovery_wait_s:g} s"

    def _freeze_libvirtd(self, node: str, seconds: float, during: Callable[[], str] | None = None) -> str:
        """Freeze the host's libvirtd for `seconds`; `during`, if given, runs once it is frozen (its answer goes
        into the detail)."""
        with self._libvirtd_locks[node]:
            return self._freeze_libvirtd_now(node, seconds, during)

    def _freeze_libvirtd_now(self, node: str, seconds: float, during: Callable[[], str] | None) -> str:
        gate = self._gates[node]
        drained = gate.close()
        pid = libvirtd_pid(self._local.host(node))
        if pid is None:
            gate.open()
            raise Skipped(f"{node}'s libvirtd does not run")
        self._signal(pid, signal.SIGSTOP)
        frozen = self._history.now()
        extra = ""
        try:
            if during is not None:
                extra = "; " + during()
            self._stopping.wait(max(0.0, seconds - (self._history.now() - frozen)))
        finally:
            if gate.read_before_thaw():
                time.sleep(THAW_READING_HEAD_START)
            self._signal(pid, signal.SIGCONT)
            gate.open()
            self._history.add(Freeze(node, frozen, self._history.now()))
        return f"libvirtd pid {pid} frozen {self._history.now() - frozen:.2f} s" + \
            ("" if drained else " (a reading was still in flight)") + extra

    def _slow_libvirtd(self, client, node: str, fault: PlannedFault) -> str:
        """Stop and continue the host's libvirtd over and over, so that each call waits for the next moment it
        runs: stopped `SLOW_STOP` at a time (some calls outlive the node's deadline, most do not), continued
        for a few milliseconds. The nemesis's VM is sent to the host meanwhile; once the node has claimed it, the
        stop then under way lasts until just past the deadline (the start sent after the claim outlives it),
        and the slow spell goes on afterwards."""
        with self._libvirtd_locks[node]:
            return self._slow_libvirtd_now(client, node, fault)

    def _slow_libvirtd_now(self, client, node: str, fault: PlannedFault) -> str:
        rng = random.Random(f"{fault.target}/{fault.other}/slow")
        try:
            vm, source, _target = self._migration(client, fault, to=node)
        except Skipped as why:
            vm, source, migrated = None, None, f"nothing migrated: {why}"
        gate = self._gates[node]
        gate.close()
        pid = libvirtd_pid(self._local.host(node))
        if pid is None:
            gate.open()
            raise Skipped(f"{node}'s libvirtd does not run")
        began = self._history.now()
        answers, claimed = 0, None
        self._signal(pid, signal.SIGSTOP)
        try:
            if vm is not None:
                migrated = f"{vm} migrated {source} -> {node}: " + self._migrate(client, vm, node)
            next_answer = time.monotonic() + rng.uniform(*map(self._timings.of_libvirt_timeout, SLOW_STOP))
            while not self._stopping.is_set() and self._history.now() - began < fault.duration_s:
                if vm is not None and claimed is None and self._claimed(client, vm, node):
                    claimed = self._history.now()
                    next_answer = time.monotonic() + self._timings.libvirt_timeout_s + rng.uniform(0.1, 0.8)
                if time.monotonic() >= next_answer:
                    if gate.read_before_thaw():
                        time.sleep(THAW_READING_HEAD_START)
                    self._signal(pid, signal.SIGCONT)
                    time.sleep(rng.uniform(0.005, 0.05))
                    self._signal(pid, signal.SIGSTOP)
                    answers += 1
                    next_answer = time.monotonic() + rng.uniform(*map(self._timings.of_libvirt_timeout, SLOW_STOP))
                time.sleep(0.03)
        finally:
            if gate.read_before_thaw():
                time.sleep(THAW_READING_HEAD_START)
            self._signal(pid, signal.SIGCONT)
            gate.open()
            self._history.add(Freeze(node, began, self._history.now()))
        claim = "" if vm is None else f"; claimed at {claimed:.3f} s" if claimed is not None else "; no claim seen"
        return f"libvirtd pid {pid} answered {answers} times over {self._history.now() - began:.2f} s; " \
               f"{migrated}{claim}"

    def _answer_slowly(self, pid: int, gate: HostGate, seconds: float, rng: random.Random) -> int:
        """Let a stopped libvirtd answer what piled up, then go on answering slowly (stopped `SLOW_STOP` at a
        time) for `seconds`; how many times it answered."""
        until = time.monotonic() + seconds
        answers = 0
        while not self._stopping.is_set():
            if gate.read_before_thaw():
                time.sleep(THAW_READING_HEAD_START)
            self._signal(pid, signal.SIGCONT)
            time.sleep(rng.uniform(0.005, 0.05))
            answers += 1
            pause = rng.uniform(*map(self._timings.of_libvirt_timeout, SLOW_STOP))
            if time.monotonic() + pause > until:
                break
            self._signal(pid, signal.SIGSTOP)
            self._stopping.wait(pause)
        return answers

    def _claimed(self, client, vm: str, node: str) -> bool:
        """Whether `node` has claimed `vm` (its record says it runs there: a claim says so before the start)."""
        try:
            info = client.vms.info(vm)
        except PVCError:
            return False
        return info["node"] == node and bool(info["running"])

    def _freeze_during_migration(self, client, fault: PlannedFault) -> tuple[str, str]:
        """Migrate a running VM with one of the two libvirtds frozen, and thaw it just after the node's libvirt
        deadline. The source: its stop of the VM outlives the deadline. The target: its libvirtd answers
        (briefly, every `CLAIM_WATCH_STEP`) until the node has claimed the VM, then stays frozen from the
        claim until just past the deadline, so that the start the node sends after its claim is the call that
        outlives the deadline, and is carried out at the thaw."""
        vm, source, target = self._migration(client, fault)
        with self._lock:
            self._migration_freezes += 1
            freeze_source = self._migration_freezes % 2 == 0
        if freeze_source:
            detail = self._freeze_libvirtd(source, fault.duration_s, during=lambda: self._migrate(client, vm, target))
            return source, f"source of {vm}'s migration {source} -> {target}: {detail}"
        with self._libvirtd_locks[target]:
            return self._freeze_target_from_claim(client, fault, vm, source, target)

    def _freeze_target_from_claim(self, client, fault: PlannedFault, vm: str, source: str,
                                  target: str) -> tuple[str, str]:
        late_by = fault.duration_s - self._timings.libvirt_timeout_s
        gate = self._gates[target]
        gate.close()
        pid = libvirtd_pid(self._local.host(target))
        if pid is None:
            gate.open()
            raise Skipped(f"{target}'s libvirtd does not run")
        began = self._history.now()
        self._signal(pid, signal.SIGSTOP)
        claimed = None
        try:
            sent = self._migrate(client, vm, target)
            next_answer = time.monotonic() + self._timings.of_libvirt_timeout(CLAIM_WATCH_STEP)
            deadline = time.monotonic() + self._timings.of_libvirt_timeout(CLAIM_WATCH_TIMEOUT)
            while claimed is None and not self._stopping.is_set() and time.monotonic() < deadline:
                if self._claimed(client, vm, target):
                    claimed = self._history.now()
                    break
                if time.monotonic() >= next_answer:
                    gate.read_before_thaw()
                    time.sleep(THAW_READING_HEAD_START)
                    self._signal(pid, signal.SIGCONT)
                    time.sleep(0.005)
                    self._signal(pid, signal.SIGSTOP)
                    next_answer = time.monotonic() + self._timings.of_libvirt_timeout(CLAIM_WATCH_STEP)
                time.sleep(0.03)
            if claimed is not None:
                self._stopping.wait(max(0.0, claimed + fault.duration_s - self._history.now()))
                self._answer_slowly(pid, gate, self._timings.of_libvirt_timeout(SLOW_AFTER_THAW),
                                    random.Random(f"{fault.target}/{fault.other}/thaw"))
        finally:
            if gate.read_before_thaw():
                time.sleep(THAW_READING_HEAD_START)
            self._signal(pid, signal.SIGCONT)
            gate.open()
            self._history.add(Freeze(target, began, self._history.now()))
        if claimed is None:
            return target, f"target of {vm}'s migration {source} -> {target} ({sent}): no claim seen within " \
                           f"{self._timings.of_libvirt_timeout(CLAIM_WATCH_TIMEOUT):g} s; thawed"
        return target, f"target of {vm}'s migration {source} -> {target} ({sent}): claimed at {claimed:.3f} s, " \
                       f"libvirtd frozen from then until {late_by:.2f} s past the deadline, then slow for " \
                       f"{self._timings.of_libvirt_timeout(SLOW_AFTER_THAW):g} s"

    def _migration(self, client, fault: PlannedFault, to: str | None = None) -> tuple[str, str, str]:
        """The nemesis's own VM (`OWN_VM`: no client touches it, so that no client's command moves it while a
        fault waits on its migration), running, its node, and a node to migrate it to (`to` if given), neither
        its node nor its last one. When every such node is flushed (fenced nodes come back flushed), one is
        made ready first, as an administrator would."""
        for attempt in range(2):
            try:
                vm = self._own_vm(client, avoid=to)
                nodes = {node["name"]: node for node in client.nodes.list()}
            except PVCError as error:
                raise Skipped(f"the cluster did not answer: {error}")
            candidates = [to] if to else sorted(name for name, node in nodes.items()
                                                if node["daemon_state"] == "run" and name != vm["node"])
            targets = [name for name in candidates if nodes[name]["domain_state"] == "ready"]
            # Not back where it came from: a migration that fails goes back to its `last_node`, which must then
            # be another node than the target for a late start on the target to matter.
            targets = [name for name in targets if name != vm.get("last_node")] or targets
            if targets:
                return vm["name"], vm["node"], targets[fault.target % len(targets)]
            if not candidates or attempt:
                break
            self._ready(client, candidates[fault.target % len(candidates)])
        raise Skipped(f"no node can take {OWN_VM}")

    def _own_vm(self, client, avoid: str | None) -> dict[str, Any]:
        """`OWN_VM`'s record once it runs (on another node than `avoid`), defined and started (or moved off
        `avoid`) first if need be, each command recorded like a client's."""
        with self._own_vm_lock:
            try:
                vm = client.vms.info(OWN_VM)
            except NotFound:
                self._command(client, "define", OWN_VM, None, lambda: client.vms.define(self._domain_xml(OWN_VM)))
                vm = client.vms.info(OWN_VM)
            if vm["node"] == avoid:
                self._command(client, "migrate-auto", OWN_VM, None, lambda: client.vms.migrate(OWN_VM, wait=True))
                vm = client.vms.info(OWN_VM)
            if vm["state"] not in ("start", "migrate") or not vm["running"]:
                self._command(client, "start", OWN_VM, None, lambda: client.vms.start(OWN_VM, wait=True))
            deadline = time.monotonic() + OWN_VM_SETTLE_S
            vm = client.vms.info(OWN_VM)
            while (vm["state"] != "start" or not vm["running"]) and time.monotonic() < deadline \
                    and not self._stopping.is_set():
                time.sleep(0.2)
                vm = client.vms.info(OWN_VM)
            if vm["state"] != "start" or not vm["running"] or vm["node"] == avoid:
                raise Skipped(f"{OWN_VM} does not run: {vm['state']} on {vm['node']} (running: {vm['running']})")
            return vm

    def _command(self, client, kind: str, vm: str | None, node: str | None, call: Callable[[], Any]) -> str:
        """One command of the nemesis's own, recorded in the history like a client's; its outcome."""
        invoked = self._history.now()
        try:
            answer = call()
            outcome = "ok"
            detail = " ".join(f"{key}={answer[key]}" for key in ("state", "node", "running")
                              if isinstance(answer, dict) and key in answer)
        except PVCError as error:
            outcome, detail = type(error).__name__, str(error)[:200]
        self._history.add(Operation("nemesis", kind, vm, node, False, invoked, self._history.now(), outcome, detail))
        return outcome

    def _ready(self, client, node: str) -> None:
        """The nemesis's own ``node ready``; returns once the node is ready (or 10 s)."""
        self._command(client, "ready", None, node, lambda: client.nodes.ready(node))
        deadline = time.monotonic() + 10
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                if client.nodes.info(node)["domain_state"] == "ready":
                    return
            except PVCError:
                pass
            time.sleep(0.2)

    def _migrate(self, client, vm: str, target: str) -> str:
        """The nemesis's own migrate command."""
        return "migrate -> " + self._command(client, "migrate", vm, target,
                                             lambda: client.vms.migrate(vm, target=target))

    def _pause_daemon(self, node: str, seconds: float) -> str:
        pid = self._local.daemon_pid("pvcnoded", node)
        if pid is None:
            raise Skipped("pvcnoded does not run")
        self._signal(pid, signal.SIGSTOP)
        stopped = self._history.now()
        try:
            self._sleep(seconds)
        finally:
            self._signal(pid, signal.SIGCONT)
        return f"pvcnoded pid {pid} stopped {self._history.now() - stopped:.2f} s"

    # -- the lab network and the ZooKeeper ensemble ---------------------------------------------------------

    def _lab_fault(self, client, fault: PlannedFault, node: str, other: str) -> tuple[str, str]:
        local = self._local
        if getattr(local, "lab", None) is None:
            raise Skipped("the cluster has no lab network")
        if fault.kind == "cut-host":
            return node, self._cut([node], fault.duration_s)
        if fault.kind == "cut-minority":
            return f"{node}+{other}", self._cut([node, other], fault.duration_s)
        if fault.kind == "cut-leader-coordinator":
            leader = self._leader(client)
            if leader not in local.coordinator_names:
                raise Skipped(f"no leading coordinator known ({leader})")
            local.sever(leader, local.zookeeper_names)
            cut = self._history.now()
            self._sleep(fault.duration_s)
            local.heal_link(leader)
            return leader, f"cut off from every ZooKeeper server (still reaching clients and nodes) for " \
                           f"{self._history.now() - cut:.2f} s"
        with self._zookeeper_lock:
            names = local.zookeeper_names
            if len(names) < 3:
                raise Skipped("ZooKeeper is a single server")
            leader = local.zookeeper_leader()
            if fault.kind == "kill-zookeeper-leader":
                if leader is None:
                    raise Skipped("no ZooKeeper server leads")
                victim = leader
            else:
                followers = [name for name in names if name != leader]
                victim = followers[fault.target % len(followers)]
            with self._lock:
                self._down.add(("zookeeper", victim))
            local.kill_zookeeper(victim)
            killed = self._history.now()
            self._sleep(fault.duration_s)
            local.start_zookeeper(victim)
            with self._lock:
                self._down.discard(("zookeeper", victim))
            return victim, f"{'leader' if victim == leader else 'follower'} killed, serving again " \
                           f"{self._history.now() - killed:.2f} s later (new leader {local.zookeeper_leader()})"

    def _cut(self, nodes: list[str], seconds: float) -> str:
        local = self._local
        if len(nodes) == 1:
            local.cut_link(nodes[0])
        else:
            local.isolate(nodes)
        cut = self._history.now()
        self._sleep(seconds)
        for node in nodes:
            local.heal_link(node)
        with self._lock:
            self._quiet_after = time.monotonic() + self._timings.detection_window_s
        return f"{' and '.join(nodes)} cut off {'together ' if len(nodes) > 1 else ''}for " \
               f"{self._history.now() - cut:.2f} s"

    # -- BMCs and clones ------------------------------------------------------------------------------------

    def _bmc_fault(self, client, fault: PlannedFault, node: str) -> str:
        if fault.kind == "power-on-after-fence":
            return self._power_on_after_fence(client, node)
        if fault.kind == "clone-node":
            return self._clone(node, fault.duration_s)
        bmc = self._local.bmc(node)
        settings = bmc.settings
        if not settings:
            raise Skipped(f"{node} has no BMC")
        if fault.kind == "unresponsive-bmc":
            pid = bmc.pid
            self._signal(pid, signal.SIGSTOP)
            try:
                detail = f"ipmi_sim pid {pid} stopped; " + self._kill_for_good(node)
                self._sleep(fault.duration_s)
            finally:
                self._signal(pid, signal.SIGCONT)
        else:
            def right_password() -> None:
                bmc.stop()
                bmc.start(settings["user"], settings["password"], settings["port"])
            bmc.stop()
            bmc.start(settings["user"], settings["password"] + "-wrong", settings["port"])
            self._restore[f"bmc {node}"] = right_password
            try:
                detail = "the BMC's password changed; " + self._kill_for_good(node)
                self._sleep(fault.duration_s)
            finally:
                self._restore.pop(f"bmc {node}", None)()
        return detail + "; BMC healed; " + self._after_failed_fence(client, node)

    def _after_failed_fence(self, client, node: str) -> str:
        """Give the leader `FAILED_FENCE_RETRY_S` to fence the node again now that its BMC answers; then, as an
        administrator who made sure it is off, power it off and confirm the fence."""
        deadline = time.monotonic() + FAILED_FENCE_RETRY_S
        state = None
        while not self._stopping.is_set() and time.monotonic() < deadline:
            state = self._node_state(client, node)
            if state not in ("dead", None) or not self._local.host(node).running:
                return f"the node was {state}, its host {'on' if self._local.host(node).running else 'off'}, " \
                       f"without an administrator"
            time.sleep(0.3)
        if self._stopping.is_set() or state != "dead":
            return f"the node was {state} when the run ended"
        self._local.bmc(node).power_off()
        try:
            client.nodes.fence_confirm(node, force=True)  # powered off just now
        except PVCError as error:
            return f"still dead after {FAILED_FENCE_RETRY_S:g} s: powered off; fence-confirm refused: {error}"
        self.administrator_fences += 1
        self._history.note("nemesis", f"{node} still dead {FAILED_FENCE_RETRY_S:g} s after its BMC was healed: "
                                      f"powered off and fence-confirmed, as an administrator would")
        return f"still dead after {FAILED_FENCE_RETRY_S:g} s: powered off and fence-confirmed by the nemesis"

    def _node_state(self, client, node: str) -> str | None:
        try:
            return client.nodes.info(node)["daemon_state"]
        except PVCError:
            return None

    def _power_on_after_fence(self, client, node: str) -> str:
        """Kill the node's pvcnoded for good with the ipmi fence set to power the node on again at once."""
        try:
            options = client.cluster.config()["fence_options"] or {}
            client.cluster.config(fence_options={**options, "ipmi": {**options.get("ipmi", {}),
                                                                     "power_on_after": True}})
        except PVCError as error:
            raise Skipped(f"the fence options could not be set: {error}")

        def restore() -> None:
            client_now = self._connect()
            try:
                client_now.cluster.config(fence_options=options)
            finally:
                client_now.close()
        self._restore["fence options"] = restore
        try:
            detail = self._kill_for_good(node) + "; " + self._await_recovery(client, node)
            deadline = time.monotonic() + self._timings.recovery_wait_s
            while not self._stopping.is_set() and time.monotonic() < deadline:
                tasks = [task for task in self._tasks(client) if task["kind"] == "recover" and task["node"] == node]
                if tasks and max(tasks, key=lambda task: task["created"])["state"] in ("done", "failed"):
                    last = max(tasks, key=lambda task: task["created"])
                    detail += f"; recovery {last['state']}"
                    break
                time.sleep(0.2)
        finally:
            self._restore.pop("fence options")()
        return detail

    def _tasks(self, client) -> list[dict[str, Any]]:
        try:
            return client.nodes.tasks()
        except PVCError:
            return []

    def _clone(self, node: str, seconds: float) -> str:
        """A second pvcnoded with the node's own configuration, in a PID namespace of its own (a cloned host
        image, a container): it must not take the node over."""
        directory = self._local.state_dir / "nodes" / node
        lab = getattr(self._local, "lab", None)
        in_netns = ["ip", "netns", "exec", lab.netns(node)] if lab else []
        executable = Path(sys.executable).with_name("pvcnoded")
        with open(directory / "clone.log", "ab") as log:
            clone = subprocess.Popen([*in_netns, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                      str(executable), "--config", str(directory / "pvcnoded.yaml")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._clones[node] = clone
        original = self._local.daemon_pid("pvcnoded", node)
        try:
            self._sleep(seconds)
        finally:
            self._end_clone(node)
        watch_until = time.monotonic() + CLONE_AFTERMATH_S
        still = self._local.daemon_pid("pvcnoded", node)
        while still == original and not self._stopping.is_set() and time.monotonic() < watch_until:
            time.sleep(0.2)
            still = self._local.daemon_pid("pvcnoded", node)
        return f"clone (unshare pid {clone.pid}) ran {seconds:.2f} s beside pvcnoded pid {original}; " + \
            (f"the original still runs {CLONE_AFTERMATH_S:g} s later" if still == original and still
             else f"the original is gone (now {still})")

    def _end_clone(self, node: str) -> None:
        clone = self._clones.pop(node, None)
        if clone is not None and clone.poll() is None:
            try:
                os.killpg(clone.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            clone.wait(10)

    # -- signals and time -----------------------------------------------------------------------------------

    def _signal(self, pid: int | None, sig: signal.Signals) -> None:
        if pid is None:
            return
        with self._lock:
            (self._stopped_pids.add if sig == signal.SIGSTOP else self._stopped_pids.discard)(pid)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _sleep(self, seconds: float) -> None:
        """A fault's duration; cut short when the run ends, so that healing comes at once."""
        self._stopping.wait(seconds)

    def _start(self, program: str, name: str) -> int | None:
        """Start a daemon again; a pvcnoded through its BMC's power lock, as a boot under way may be starting it
        at this moment (None then: it runs already)."""
        if program == "pvcnoded":
            return self._local.bmc(name).start_daemon_if_down()
        return self._local.start_coordinator(name)

    # -- supervision and healing ----------------------------------------------------------------------------

    def supervise(self) -> list[str]:
        """Act as the machine room would: power on again a host that has been off for `POWER_ON_AFTER_S`
        (fencing powers hosts off through their BMC), and start again every daemon that is not running
        although the nemesis did not take it down, noting each in the history (a daemon that exited by itself
        is a finding) with the end of its log. Returns what was started."""
        started = []
        for name in self._local.coordinator_names:
            if not self._local.daemon_pid("pvcapid", name) and not self._taken_down("pvcapid", name):
                self._note_exit("pvcapid", name)
                self._start("pvcapid", name)
                started.append(f"pvcapid {name}")
        for name in self._local.node_names:
            if not self._local.host(name).running:
                with self._lock:
                    self._down.discard(("pvcnoded", name))  # powering the host on starts its pvcnoded
                    self._broken_nodes.pop(name, None)
                if self._power_on_when_due(name):
                    started.append(f"host {name}")
                continue
            self._off_since.pop(name, None)
            pid = self._local.daemon_pid("pvcnoded", name)
            with self._lock:
                if name in self._broken_nodes and pid not in (None, self._broken_nodes[name]):
                    del self._broken_nodes[name]  # powered off and on between two looks (power_on_after)
                    self._down.discard(("pvcnoded", name))
            if not pid and not self._taken_down("pvcnoded", name):
                self._note_exit("pvcnoded", name)
                if self._start("pvcnoded", name):
                    started.append(f"pvcnoded {name}")
        return started

    def _taken_down(self, program: str, name: str) -> bool:
        """Whether the nemesis took the daemon down on purpose. Asked after finding it gone: a fault records
        the daemon as taken down before it kills it, so the two cannot be seen in the wrong order."""
        with self._lock:
            return (program, name) in self._down

    def _note_exit(self, program: str, name: str) -> None:
        directory = self._local.state_dir / ("coordinators" if program == "pvcapid" else "nodes") / name
        pid = read_pid(directory / f"{program}.pid")
        how = exit_description(pid) if pid else ""
        log = directory / f"{program}.log"
        tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
        self._history.note("nemesis", f"{program} {name} (pid {pid}) had exited by itself"
                                      f"{' (' + how + ')' if how else ''}; starting it again. "
                                      f"Its log ({log}) ends: {' | '.join(tail)}")

    def _power_on_when_due(self, node: str) -> bool:
        """Note a host found off, and power it on once it has been off for `POWER_ON_AFTER_S`."""
        now = self._history.now()
        if node not in self._off_since:
            self._off_since[node] = now
            bmc_log = self._local.state_dir / "bmc" / node / "control.log"
            told = bmc_log.read_text(errors="replace").splitlines()[-1:] if bmc_log.exists() else []
            self._history.note("nemesis", f"host {node} is off (its BMC's last action: {' '.join(told) or 'none'})"
                                          f"; powering it on again in {POWER_ON_AFTER_S:g} s")
            return False
        if now - self._off_since[node] < POWER_ON_AFTER_S:
            return False
        bmc = self._local.bmc(node) if hasattr(self._local, "bmc") else None
        if bmc is not None and bmc.settings:
            bmc.power_on()
        else:
            self._local.host(node).start()
            self._local.start_node_daemon(node)
        self._off_since.pop(node, None)
        self._history.note("nemesis", f"host {node} powered on again, and its pvcnoded started")
        return True

    def heal(self) -> None:
        """After the run (the thread has ended, or is abandoned): continue every process still stopped, open
        every gate, end every clone, undo what a fault changed (a BMC's password, the fence options), plug every
        link back in, start every ZooKeeper server and daemon that does not run."""
        with self._lock:
            stopped, self._stopped_pids = set(self._stopped_pids), set()
            down, self._down = set(self._down), set()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for gate in self._gates.values():
            gate.open()
        for node in list(self._clones):
            self._end_clone(node)
        for what, restore in list(self._restore.items()):
            self._history.note("nemesis", f"healing: restoring {what}")
            restore()
        self._restore.clear()
        if getattr(self._local, "lab", None) is not None:
            self._local.heal_all()
        for program, name in sorted(down):
            if program == "zookeeper":
                self._history.note("nemesis", f"healing: starting ZooKeeper server {name} again")
                self._local.start_zookeeper(name)
                continue
            if program == "pvcnoded" and not self._local.host(name).running:
                continue  # `supervise` powers the host on, and that starts its pvcnoded
            if not self._local.daemon_pid(program, name):
                self._history.note("nemesis", f"healing: starting {program} {name} again")
                self._start(program, name)
        self.supervise()
