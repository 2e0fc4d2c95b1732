"""The nemesis: one thread injecting faults, one at a time, from a seeded schedule.

Faults, each healed before the next one starts (the next waits until every node runs again):

- ``kill-node-daemon``: kill -9 a node's pvcnoded, and start it again after a moment (its VMs keep running);
- ``kill-node-daemon-for-good``: kill -9 a node's pvcnoded and leave it dead: the leader fences the node
  through its BMC (the machine room then powers it on, which starts its pvcnoded) and recovers its VMs;
- ``kill-leader-coordinator``: kill -9 the coordinator that leads (another one takes over), start it again;
- ``freeze-libvirtd``: SIGSTOP a host's libvirtd for a few seconds (a hung daemon that still holds its socket),
  then SIGCONT; the host's `HostGate` is closed meanwhile, so that the monitor asks it nothing until the
  reading it sends just before the thaw;
- ``drop-zookeeper-session``: SIGSTOP a pvcnoded for longer than the ZooKeeper session timeout, so that its
  session expires, then SIGCONT;
- ``restart-libvirtd`` (QEMU hosts): kill libvirtd; the host's supervisor starts it again, the guests run on.

The schedule (`schedule`) is drawn from a `random.Random` seeded from the run's seed alone, so the same seed
gives the same faults in the same order with the same durations. Targets are drawn as numbers and mapped onto
the cluster's nodes; "the leader" is whichever coordinator leads when the fault comes.

Between faults the nemesis also acts as the machine room would: a daemon that exited by itself is noted in the
history (that is a finding) and started again, as systemd would; a host found powered off (fencing powers a
dead node off through its BMC) is noted and powered on again a few seconds later, as an administrator would.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pvc.cli.localcluster.processes import exit_description, read_pid
from pvc.errors import PVCError

from faults.history import Fault, History
from faults.monitor import HostGate

FAULT_WEIGHTS = {"kill-node-daemon": 3, "kill-leader-coordinator": 2, "freeze-libvirtd": 3,
                 "drop-zookeeper-session": 2, "kill-node-daemon-for-good": 1}
QEMU_FAULT_WEIGHTS = {**FAULT_WEIGHTS, "restart-libvirtd": 1.5}
POWER_ON_AFTER_S = 5.0
"""Seconds a host found off (fenced) stays off before the nemesis, as the machine room, powers it on again."""
WHOLE_AGAIN_TIMEOUT_S = 60.0
"""Longest the nemesis waits, before its next fault, for every node to run again: a node left dead (or one
that fenced itself) is back only once fenced and powered on, and a second one down meanwhile would make more
than half of a 3-node cluster look dead, which no leader fences on its own (that is an administrator's call,
not something a run can settle)."""
DETECTION_WINDOW_S = 6.0
"""Seconds after a paused node daemon wakes within which the leader may still find it dead (its fence
deadline, with a margin)."""
THAW_READING_HEAD_START = 0.1
"""Seconds the monitor's reading gets to reach a frozen libvirtd's socket before the thaw."""


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    target: int
    """Index into the cluster's nodes (or coordinators, when no leader is known), modulo their number."""
    duration_s: float
    """How long the target stays broken."""
    gap_s: float
    """Quiet seconds before the fault."""

    def describe(self) -> str:
        return f"+{self.gap_s:.2f}s {self.kind}[{self.target}] for {self.duration_s:.2f}s"


def schedule(seed: int | str, session_timeout: float,
             weights: dict[str, float] = FAULT_WEIGHTS) -> Iterator[PlannedFault]:
    """The endless, reproducible sequence of faults; every value is drawn at every step."""
    rng = random.Random(f"{seed}/nemesis")
    kinds, kind_weights = list(weights), list(weights.values())
    while True:
        kind = rng.choices(kinds, kind_weights)[0]
        target = rng.randrange(1 << 16)
        durations = {
            "kill-node-daemon": rng.uniform(0.2, 3.0),
            "kill-leader-coordinator": rng.uniform(0.5, 4.0),
            "freeze-libvirtd": rng.uniform(3.0, 8.0),
            "drop-zookeeper-session": rng.uniform(session_timeout + 1.5, session_timeout + 5.0),
            "restart-libvirtd": 0.0,
            "kill-node-daemon-for-good": 0.0,
        }
        gap = rng.uniform(0.5, 3.0)
        yield PlannedFault(kind, target, round(durations[kind], 2), round(gap, 2))


def libvirtd_pid(host: Any) -> int | None:
    """The pid of the host's libvirtd (a test-driver host's `pid` is its libvirtd's own)."""
    return host.libvirtd_pid if hasattr(host, "libvirtd_pid") else host.pid


class Nemesis(threading.Thread):
    def __init__(self, local, history: History, gates: dict[str, HostGate], faults: Iterator[PlannedFault],
                 stopping: threading.Event, connect: Callable[[], Any]):
        super().__init__(name="nemesis", daemon=True)
        self._local = local
        self._history = history
        self._gates = gates
        self._faults = faults
        self._stopping = stopping
        self._connect = connect
        self._down: set[tuple[str, str]] = set()
        """Daemons (program, name) the nemesis has taken down on purpose and not yet restarted."""
        self._stopped_pids: set[int] = set()
        """Processes the nemesis has SIGSTOPped and not yet continued."""
        self._lock = threading.Lock()
        self._off_since: dict[str, float] = {}
        """Hosts found powered off, and when."""
        self._broken_nodes: set[str] = set()
        """Nodes whose pvcnoded was killed for good and whose host has not been found off (fenced) yet."""
        self._readied: set[str] = set()
        """The ready tasks the nemesis started for fenced nodes that ran again."""
        self._quiet_after = 0.0
        """Monotonic time before which a node may still be found dead because of the last fault (a daemon
        paused past its self-fence deadline falls silent only once it wakes)."""

    def run(self) -> None:
        client = self._connect()
        try:
            for fault in self._faults:
                if self._stopping.wait(fault.gap_s) or not self._await_whole_cluster(client):
                    break
                injected = self._history.now()
                try:
                    target, detail = self._inject(fault, client)
                except Exception as error:  # a harness failure: note it and go on with the next fault
                    self._history.note("nemesis", f"{fault.describe()} failed: {type(error).__name__}: {error}")
                    continue
                self._history.add(Fault(fault.kind, target, injected, self._history.now(), detail))
        finally:
            client.close()

    def _await_whole_cluster(self, client) -> bool:
        """Act as the machine room until every node runs again (or the wait times out, which is noted); False
        once the run is stopping."""
        deadline = time.monotonic() + WHOLE_AGAIN_TIMEOUT_S
        while True:
            self.supervise()
            try:
                listed = client.nodes.list()
                states = {node["name"]: node["daemon_state"] for node in listed}
                self._release_fenced(client, listed)
            except PVCError:
                states = {}
            with self._lock:
                broken = bool(self._broken_nodes)
            if states and all(state == "run" for state in states.values()) and not broken \
                    and time.monotonic() >= self._quiet_after:
                return True
            if time.monotonic() > deadline:
                self._history.note("nemesis", f"nodes not all running after {WHOLE_AGAIN_TIMEOUT_S:g} s: {states}")
                return True
            if self._stopping.wait(0.5):
                return False

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
        if fault.kind == "kill-node-daemon":
            return node, self._kill_and_restart("pvcnoded", node, fault.duration_s)
        if fault.kind == "kill-node-daemon-for-good":
            return node, self._kill_for_good(node)
        if fault.kind == "kill-leader-coordinator":
            leader = self._leader(client)
            coordinators = self._local.coordinator_names
            name = leader if leader in coordinators else coordinators[fault.target % len(coordinators)]
            detail = self._kill_and_restart("pvcapid", name, fault.duration_s)
            return name, detail + ("" if leader == name else f" (the leader was {leader})")
        if fault.kind == "freeze-libvirtd":
            return node, self._freeze_libvirtd(node, fault.duration_s)
        if fault.kind == "drop-zookeeper-session":
            detail = self._pause_daemon(node, fault.duration_s)
            self._quiet_after = time.monotonic() + DETECTION_WINDOW_S
            return node, detail
        if fault.kind == "restart-libvirtd":
            self._local.host(node).restart_libvirtd()
            return node, ""
        raise ValueError(f"unknown fault {fault.kind}")

    def _leader(self, client) -> str | None:
        try:
            return client.cluster.status()["leader"]
        except PVCError:
            return None

    def _kill_and_restart(self, program: str, name: str, down_s: float) -> str:
        with self._lock:
            self._down.add((program, name))
        pid = self._local.daemon_pid(program, name)
        self._local.stop_daemon(program, name, kill=True)
        killed = self._history.now()
        self._sleep(down_s)
        with self._lock:
            self._down.discard((program, name))
        if program == "pvcnoded" and not self._local.host(name).running:
            return f"pid {pid} killed; not started again: the host went off meanwhile"
        new_pid = self._start(program, name)
        return f"pid {pid} killed, pid {new_pid} started {self._history.now() - killed:.2f} s later"

    def _kill_for_good(self, node: str) -> str:
        """kill -9 the node's pvcnoded and start it no more: only the fence's power cycle (and the power-on
        `supervise` does after it) brings the node back."""
        with self._lock:
            self._down.add(("pvcnoded", node))
            self._broken_nodes.add(node)
        pid = self._local.daemon_pid("pvcnoded", node)
        self._local.stop_daemon("pvcnoded", node, kill=True)
        return f"pid {pid} killed and left dead"

    def _freeze_libvirtd(self, node: str, seconds: float) -> str:
        gate = self._gates[node]
        drained = gate.close()
        pid = libvirtd_pid(self._local.host(node))
        if pid is None:
            gate.open()
            return "skipped: the host's libvirtd does not run"
        self._signal(pid, signal.SIGSTOP)
        frozen = self._history.now()
        try:
            self._sleep(seconds)
        finally:
            if gate.read_before_thaw():
                time.sleep(THAW_READING_HEAD_START)
            self._signal(pid, signal.SIGCONT)
            gate.open()
        return f"libvirtd pid {pid} frozen {self._history.now() - frozen:.2f} s" + \
            ("" if drained else " (a reading was still in flight)")

    def _pause_daemon(self, node: str, seconds: float) -> str:
        pid = self._local.daemon_pid("pvcnoded", node)
        if pid is None:
            return "skipped: pvcnoded does not run"
        self._signal(pid, signal.SIGSTOP)
        stopped = self._history.now()
        try:
            self._sleep(seconds)
        finally:
            self._signal(pid, signal.SIGCONT)
        return f"pvcnoded pid {pid} stopped {self._history.now() - stopped:.2f} s"

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with self._lock:
            (self._stopped_pids.add if sig == signal.SIGSTOP else self._stopped_pids.discard)(pid)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _sleep(self, seconds: float) -> None:
        """A fault's duration; cut short when the run ends, so that healing comes at once."""
        self._stopping.wait(seconds)

    def _start(self, program: str, name: str) -> int:
        if program == "pvcnoded":
            return self._local.start_node_daemon(name)
        return self._local.start_coordinator(name)

    # -- supervision and healing ----------------------------------------------------------------------------

    def supervise(self) -> list[str]:
        """Act as the machine room would: power on again a host that has been off for `POWER_ON_AFTER_S`
        (fencing powers hosts off through their BMC), and start again every daemon that is not running
        although the nemesis did not take it down, noting each in the history (a daemon that exited by itself
        is a finding) with the end of its log. Returns what was started."""
        started = []
        with self._lock:
            down = set(self._down)
        for name in self._local.coordinator_names:
            if ("pvcapid", name) not in down and not self._local.daemon_pid("pvcapid", name):
                self._note_exit("pvcapid", name)
                self._start("pvcapid", name)
                started.append(f"pvcapid {name}")
        for name in self._local.node_names:
            if not self._local.host(name).running:
                with self._lock:
                    self._down.discard(("pvcnoded", name))  # powering the host on starts its pvcnoded
                    self._broken_nodes.discard(name)
                if self._power_on_when_due(name):
                    started.append(f"host {name}")
                continue
            self._off_since.pop(name, None)
            if ("pvcnoded", name) not in down and not self._local.daemon_pid("pvcnoded", name):
                self._note_exit("pvcnoded", name)
                self._start("pvcnoded", name)
                started.append(f"pvcnoded {name}")
        return started

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
        every gate, start every daemon that does not run."""
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
        for program, name in sorted(down):
            if program == "pvcnoded" and not self._local.host(name).running:
                continue  # `supervise` powers the host on, and that starts its pvcnoded
            if not self._local.daemon_pid(program, name):
                self._history.note("nemesis", f"healing: starting {program} {name} again")
                self._start(program, name)
        self.supervise()
