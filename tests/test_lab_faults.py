"""Faults of the network and of ZooKeeper itself, on a lab cluster: five test-driver hosts, one coordinator and a
three-server ZooKeeper ensemble, each in a network namespace of its own on the cluster's lab bridge.

- The ZooKeeper leader killed while clients issue VM commands: the ensemble elects another leader within a
  session timeout, so nothing is fenced, and every command a client was told had succeeded holds.
- Two hosts cut off together from the rest and from ZooKeeper, but not from each other: they are a minority,
  so they fence themselves (their VMs stop before the leader marks them dead), and their VMs run elsewhere once.

The tests share one cluster and run in this order: the second one leaves its two hosts fenced.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from kazoo.client import KazooState

import pvc
from pvc.cli.localcluster.cluster import SESSION_TIMEOUT
from pvc.errors import PVCError
from pvc.store import Store

from conftest import started_cluster
from faults.checker import double_runs, runs
from faults.history import History
from faults.monitor import HostGate, Monitor
from helpers import cluster_store, eventually
from test_self_fencing import FENCE_DEADLINE_S, DaemonStates, _running_on, _self_fence_log, _vms_on
from vm_support import assert_no_vm_on_two_hosts, wait_running_on

NODES = [f"hv{index}" for index in range(1, 6)]
MINORITY = ["hv1", "hv2"]
RECONNECTED_WITHIN_S = 0.6
"""After the ensemble serves again, a client (a node's session) is connected again within this: a node's
self-fence counts its silence from its last keepalive, up to a keepalive interval before the leader died."""


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("lab"), nodes=len(NODES), coordinators=1, zookeepers=3,
                               lab=True)


@dataclass(frozen=True)
class Command:
    vm: str
    kind: str
    target: str | None
    acknowledged: bool
    detail: str


class CommandClient(threading.Thread):
    """Issues start, stop and migrate (all with wait) on its own VMs, one at a time, until told to stop; every
    command and whether it was acknowledged goes into `commands`, in the order it was issued per VM."""

    def __init__(self, cluster, placed: dict[str, str], seed: str, stopping: threading.Event):
        """`placed`: each of its VMs, running, and its node."""
        super().__init__(name=f"client-{seed}", daemon=True)
        self._cluster, self._placed, self._stopping = cluster, dict(placed), stopping
        self._rng = random.Random(seed)
        self.commands: list[Command] = []

    def run(self) -> None:
        local = self._cluster.local
        client = pvc.connect(local.uris, local.state["api_key"], timeout=10)
        believed_running = {vm: True for vm in self._placed}
        try:
            while not self._stopping.is_set():
                vm = self._rng.choice(sorted(self._placed))
                if not believed_running[vm]:
                    kind, target = "start", None
                elif self._rng.random() < 0.5:
                    kind, target = "stop", None
                else:
                    kind, target = "migrate", self._rng.choice([node for node in NODES if node != self._placed[vm]])
                try:
                    if kind == "migrate":
                        client.vms.migrate(vm, target=target, wait=True)
                    else:
                        getattr(client.vms, kind)(vm, wait=True)
                    acknowledged, detail = True, ""
                except PVCError as error:
                    acknowledged, detail = False, f"{type(error).__name__}: {error}"
                self.commands.append(Command(vm, kind, target, acknowledged, detail))
                if acknowledged and kind in ("start", "stop"):
                    believed_running[vm] = kind == "start"
                elif acknowledged:
                    self._placed[vm] = target
                self._stopping.wait(self._rng.uniform(0.05, 0.2))
        finally:
            client.close()


class Reconnections:
    """Sessions configured as a node's (`Store`, the local cluster's session timeout), each noting when it lost its
    connection and when it had one again."""

    def __init__(self, local, count: int):
        self.stores = [Store(local.zookeeper_hosts, "pvc", local.state["zookeeper_password"], SESSION_TIMEOUT)
                       for _store in range(count)]
        self.events: list[list[tuple[str, float]]] = [[] for _store in self.stores]
        for store, events in zip(self.stores, self.events):
            store.zk.add_listener(lambda state, events=events: events.append((state, time.monotonic())))
            store.start(connect_timeout=10)

    def reconnected_after(self, moment: float) -> list[float | None]:
        """For each session that lost its connection: seconds from `moment` to its first connection after that
        (negative: before `moment`), None while it has none."""
        found = []
        for events in self.events:
            lost = next((at for state, at in events if state != KazooState.CONNECTED), None)
            if lost is not None:
                back = next((at for state, at in events if state == KazooState.CONNECTED and at > lost), None)
                found.append(None if back is None else back - moment)
        return found

    def close(self) -> None:
        for store in self.stores:
            store.stop()


def expected_outcomes(commands: list[Command]) -> dict[str, tuple[bool, str | None]]:
    """VM → (running, node the migration moved it to, if its last command was one) after its last command,
    for the VMs whose last command was acknowledged: an unacknowledged one may or may not have happened."""
    last: dict[str, Command] = {}
    for command in commands:
        last[command.vm] = command
    expected = {}
    for vm, command in last.items():
        if command.acknowledged:
            expected[vm] = (command.kind != "stop", command.target if command.kind == "migrate" else None)
    return expected


def test_the_zookeeper_leader_killed_under_load_fences_nothing_and_loses_no_acknowledged_command(lab_cluster):
    client, local = lab_cluster.client, lab_cluster.local
    placed = {f"zkload{index}": NODES[index % len(NODES)] for index in range(1, 7)}
    for vm, node in placed.items():
        _vms_on(client, node, [vm])
    vms = sorted(placed)
    stopping = threading.Event()
    clients = [CommandClient(lab_cluster, {vm: placed[vm] for vm in vms[index::3]}, f"zk-leader/{index}", stopping)
               for index in range(3)]
    sessions = Reconnections(local, 6)
    with cluster_store(local) as store:
        states = {node: DaemonStates(store, node) for node in NODES}
        for command_client in clients:
            command_client.start()
        try:
            time.sleep(2)
            leader = local.zookeeper_leader()
            assert leader is not None, local.zookeeper_modes()
            connections = next((line for line in local.zookeeper(leader).ask("srvr").splitlines()
                                if line.startswith("Connections:")), "Connections: ?")
            local.kill_zookeeper(leader)
            killed_at = time.monotonic()
            new_leader = eventually(lambda: (lambda found: found if found not in (None, leader) else None)(
                local.zookeeper_leader()), 15, 0.1)
            elected_at = time.monotonic()
            elected_after = elected_at - killed_at
            assert new_leader, f"no new leader after {leader} was killed: {local.zookeeper_modes()}"
            time.sleep(max(0.0, FENCE_DEADLINE_S + 1 - (time.monotonic() - killed_at)))
            local.start_zookeeper(leader)
            time.sleep(1)
        finally:
            stopping.set()
            for command_client in clients:
                command_client.join(30)
            sessions.close()
        commands = [command for command_client in clients for command in command_client.commands]
        assert not any(command_client.is_alive() for command_client in clients), "a client hung"
        time.sleep(1)  # a fence decided just now would show as a state change
        seen = {node: [value for value, _at in found.seen] for node, found in states.items()}
    reconnected = sessions.reconnected_after(elected_at)
    print(f"\nZooKeeper leader {leader} killed ({connections.lower()} to it); {new_leader} led "
          f"{elected_after:.2f} s later; sessions connected again "
          f"{', '.join('never' if after is None else f'{after:+.2f}' for after in reconnected)} s from then; "
          f"{sum(command.acknowledged for command in commands)} of {len(commands)} commands acknowledged; "
          f"not acknowledged: {[command.detail for command in commands if not command.acknowledged]}")
    assert reconnected and all(after is not None and after < RECONNECTED_WITHIN_S for after in reconnected), \
        f"sessions connected again {reconnected} s after the new leader served (at most {RECONNECTED_WITHIN_S} s)"
    assert all("dead" not in values and "fenced" not in values for values in seen.values()), seen
    for node in NODES:
        info = client.nodes.info(node)
        assert (info["daemon_state"], info["recovery"]) == ("run", None), info
        assert not [line for line in _self_fence_log(local, node) if "self-fenced" in line], \
            _self_fence_log(local, node)
    assert sum(command.acknowledged for command in commands) >= 10, commands
    expected = expected_outcomes(commands)
    assert len(expected) >= len(vms) // 2, f"too few VMs end on an acknowledged command: {commands}"
    for vm, (running, target) in expected.items():
        record = client.vms.info(vm)
        assert record["running"] is running, (vm, record, [c for c in commands if c.vm == vm][-3:])
        if target:
            assert record["node"] == target, (vm, record, [c for c in commands if c.vm == vm][-3:])
        wait_running_on(lab_cluster, vm, record["node"] if running else None)
    assert_no_vm_on_two_hosts(lab_cluster)


def test_a_partitioned_minority_of_two_fences_itself_and_its_vms_run_elsewhere_once(lab_cluster):
    client, local = lab_cluster.client, lab_cluster.local
    names = {"hv1": ["minority1", "minority2"], "hv2": ["minority3"]}
    for node, vms in names.items():
        _vms_on(client, node, vms)
    moved = [vm for vms in names.values() for vm in vms]
    history = History()
    monitor = Monitor(local, history, {node: HostGate() for node in local.node_names}, interval=0.1).start()
    try:
        with cluster_store(local) as store:
            states = {node: DaemonStates(store, node) for node in MINORITY}
            local.isolate(MINORITY)
            cut_at = time.time()
            try:
                stopped = eventually(lambda: all(
                    (running := _running_on(lab_cluster, node)) is not None and not running & set(vms)
                    for node, vms in names.items()), FENCE_DEADLINE_S + 6, 0.05)
                stopped_seen_at = time.time()
                recoveries = eventually(lambda: (lambda found: found if all(
                    recovery and recovery["state"] == "done" for recovery in found) else None)(
                    [client.nodes.info(node)["recovery"] for node in MINORITY]), 40, 0.2)
            finally:
                local.heal_all()
            dead_at = {node: states[node].when("dead") for node in MINORITY}
        placed = {vm: client.vms.info(vm)["node"] for vm in moved}
        for vm, node in placed.items():
            assert node not in MINORITY, placed
            wait_running_on(lab_cluster, vm, node)
        time.sleep(2)  # the minority, back on the lab, must resume nothing
    finally:
        monitor.stop()
    decisions = {node: _self_fence_log(local, node) for node in MINORITY}
    print("\n" + "\n".join(line for lines in decisions.values() for line in lines))
    assert stopped, f"the minority's VMs still ran {FENCE_DEADLINE_S + 6:g} s after the cut (until the leader's " \
                    f"fence powered their hosts off); decisions: {decisions}"
    assert recoveries, [client.nodes.info(node) for node in MINORITY]
    assert all(dead_at[node] is not None and stopped_seen_at < dead_at[node] for node in MINORITY), \
        f"the minority's VMs were seen stopped at {stopped_seen_at:.2f}, marked dead at {dead_at}"
    for node in MINORITY:
        assert any("cut off from ZooKeeper" in line for line in decisions[node]), decisions[node]
    for node, recovery in zip(MINORITY, recoveries):
        assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"], recovery
        assert client.nodes.info(node)["daemon_state"] == "fenced"
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    started_elsewhere = {vm: [run.host for run in found if run.host not in MINORITY]
                         for vm, found in runs(history.samples).items() if vm in moved}
    assert started_elsewhere == {vm: [node] for vm, node in placed.items()}, \
        "each of the minority's VMs is started once elsewhere, on the node its record names"
    assert_no_vm_on_two_hosts(lab_cluster)
    print(f"minority {MINORITY} self-fenced (seen from their libvirtds) {stopped_seen_at - cut_at:.2f} s after "
          f"the cut; marked dead {', '.join(f'{dead - cut_at:.2f}' for dead in dead_at.values())} s after it")
