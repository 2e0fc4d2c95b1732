"""Hosts whose clocks are wrong change nothing: node daemons whose wall clock runs an hour behind (hv2) or an
hour ahead (hv3) are never marked dead, `--wait` still tells a command's failure from its success, a failing
migration is still reported, and a node that really stops is still found within the fence deadline.

Each of those daemons runs with `tests/clock_shift` on its PYTHONPATH, which shifts `time.time()` in that one
process (its monotonic clock, like a real host's, is unaffected); the coordinator and the other node keep the
true time.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL
from pvc.errors import OperationFailed

from conftest import started_cluster
from helpers import cluster_store, eventually
from vm_support import (assert_no_vm_on_two_hosts, new_uuid, pvc, return_to_service, vm_xml, wait_gone,
                        wait_running_on)

CLOCK_SHIFT_DIR = Path(__file__).parent / "clock_shift"
HOUR = 3600
CLOCK_OFF_BY = {"hv2": -HOUR, "hv3": +HOUR}
LEADER_TICK = 0.5
DEADLINE = FENCE_INTERVALS * KEEPALIVE_INTERVAL


@contextlib.contextmanager
def clock_shifted_by(seconds: float) -> Iterator[None]:
    """Daemons started inside this block see their wall clock `seconds` off."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "PVC_TEST_CLOCK_SHIFT_S")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLOCK_SHIFT_DIR), saved["PYTHONPATH"]]))
    os.environ["PVC_TEST_CLOCK_SHIFT_S"] = str(seconds)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_node_daemon(cluster, node: str) -> None:
    """Start `node`'s pvcnoded with its clock as this module wants it, and wait until it runs."""
    with clock_shifted_by(CLOCK_OFF_BY.get(node, 0)):
        cluster.local.start_node_daemon(node)
    cluster.local.wait_ready(30)


def keepalive_clock_offset(cluster, node: str) -> float:
    """How far the time in the node's latest keepalive is from this process's clock."""
    with cluster_store(cluster.local) as store:
        return store.read(schema.node_key(node, "keepalive"))["time"] - time.time()


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """A 3-node cluster whose hv2 runs an hour behind and hv3 an hour ahead. Its fencing chain is `none`, so a
    node found dead stays dead (detection is what this module is about) until it is returned to service."""
    for cluster in started_cluster(tmp_path_factory.mktemp("skew"), nodes=3, coordinators=1):
        cluster.client.cluster.config(fence_chain=["none"])
        for node in CLOCK_OFF_BY:
            old_agent = cluster.client.nodes.info(node)["agent_uri"]
            cluster.local.stop_daemon("pvcnoded", node)
            start_node_daemon(cluster, node)
            assert eventually(lambda: cluster.client.nodes.info(node)["agent_uri"] != old_agent, 10)
        yield cluster


@pytest.fixture
def nodes_running_afterwards(skewed):
    yield
    for node in skewed.local.node_names:
        pid = skewed.local.daemon_pid("pvcnoded", node)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        if skewed.client.nodes.info(node)["daemon_state"] in ("dead", "fenced"):
            return_to_service(skewed, node, start_daemon=lambda name: _start_shifted(skewed, name))
        elif pid is None:
            start_node_daemon(skewed, node)


def _start_shifted(cluster, node: str) -> None:
    with clock_shifted_by(CLOCK_OFF_BY.get(node, 0)):
        cluster.local.start_node_daemon(node)


@pytest.fixture
def squatter():
    """Defines a domain behind PVC's back on a host, holding a UUID: a PVC VM with that UUID cannot be defined
    there (libvirt refuses a second domain with the same UUID), a real failure of that host. Undefined at the
    end by its own name (the VM with its UUID may be on that host by then)."""
    made = []

    def define(cluster, node: str, uuid: str) -> None:
        connection = libvirt.open(cluster.local.host(node).uri)
        try:
            connection.defineXML(vm_xml(f"squatter-{uuid[:8]}", uuid=uuid))
        finally:
            connection.close()
        made.append((cluster, node, uuid))
    yield define
    for cluster, node, uuid in made:
        connection = libvirt.open(cluster.local.host(node).uri)
        try:
            connection.lookupByName(f"squatter-{uuid[:8]}").undefine()
        finally:
            connection.close()


def remove_vm(cluster, name: str) -> None:
    cluster.client.vms.remove(name)
    wait_gone(cluster, name)


def test_the_skewed_clocks_are_in_place_and_no_node_is_marked_dead(skewed):
    for node, offset in CLOCK_OFF_BY.items():
        assert abs(keepalive_clock_offset(skewed, node) - offset) < 60, f"{node} writes its own (wrong) time"

    watched_until = time.monotonic() + 2 * DEADLINE + 2 * LEADER_TICK
    while time.monotonic() < watched_until:
        states = {node["name"]: node["daemon_state"] for node in skewed.client.nodes.list()}
        assert states == {"hv1": "run", "hv2": "run", "hv3": "run"}
        time.sleep(0.2)

    for node in skewed.client.nodes.list():
        assert node["keepalive_age_s"] is not None and 0 <= node["keepalive_age_s"] < 3 * KEEPALIVE_INTERVAL, \
            f"{node['name']}'s keepalive age is what the coordinator saw, not its clock against ours: {node}"


def test_vm_start_wait_on_nodes_whose_clocks_are_off_reports_success_and_failure(skewed, squatter):
    for node in ("hv2", "hv3"):
        skewed.client.vms.define(vm_xml(f"fine-{node}"), target=node)
        started = pvc(skewed, "vm", "start", f"fine-{node}", "--wait")
        assert started.exit_code == 0, started.output
        wait_running_on(skewed, f"fine-{node}", node)
        remove_vm(skewed, f"fine-{node}")

    uuid = new_uuid()
    squatter(skewed, "hv2", uuid)
    skewed.client.vms.define(vm_xml("clash", uuid=uuid), target="hv2")
    began = time.monotonic()

    failed = pvc(skewed, "vm", "start", "clash", "--wait")

    assert failed.exit_code != 0 and "clash" in failed.output, failed.output
    assert "has not reached" not in failed.output, "the node's error is reported, not a timeout"
    assert time.monotonic() - began < 30
    assert skewed.client.vms.info("clash")["last_error"]
    remove_vm(skewed, "clash")


def test_a_failing_migration_to_a_node_whose_clock_is_behind_is_reported(skewed, squatter):
    uuid = new_uuid()
    skewed.client.vms.define(vm_xml("wanderer", uuid=uuid), target="hv1")
    skewed.client.vms.start("wanderer", wait=True)
    wait_running_on(skewed, "wanderer", "hv1")
    squatter(skewed, "hv2", uuid)

    with pytest.raises(OperationFailed) as failure:
        skewed.client.vms.migrate("wanderer", target="hv2", wait=True)

    assert "wanderer" in str(failure.value)
    wait_running_on(skewed, "wanderer", "hv1")
    info = skewed.client.vms.info("wanderer")
    assert (info["node"], info["state"]) == ("hv1", "start") and info["last_error"]

    moved = skewed.client.vms.migrate("wanderer", target="hv3", wait=True)
    assert (moved["node"], moved["running"]) == ("hv3", True), "a migration to the node ahead succeeds"
    wait_running_on(skewed, "wanderer", "hv3")
    assert_no_vm_on_two_hosts(skewed)
    remove_vm(skewed, "wanderer")


def test_a_killed_node_daemon_whose_clock_is_ahead_is_still_found_dead_within_the_deadline(
        skewed, nodes_running_afterwards):
    skewed.local.stop_daemon("pvcnoded", "hv3", kill=True)
    killed_at = time.monotonic()
    assert skewed.client.nodes.info("hv3")["daemon_state"] == "run", "nothing is decided before the deadline"

    assert eventually(lambda: skewed.client.nodes.info("hv3")["daemon_state"] == "dead",
                      DEADLINE + LEADER_TICK + 2, 0.1), skewed.client.nodes.info("hv3")
    assert time.monotonic() - killed_at <= DEADLINE + LEADER_TICK + 1
    assert {node["name"]: node["daemon_state"] for node in skewed.client.nodes.list()} == \
        {"hv1": "run", "hv2": "run", "hv3": "dead"}


@pytest.fixture
def maintenance(skewed):
    skewed.client.cluster.maintenance(True)
    yield
    skewed.client.cluster.maintenance(False)


def test_a_dead_node_whose_keepalives_resume_stays_dead_and_node_info_says_so(skewed, nodes_running_afterwards,
                                                                               maintenance):
    """In maintenance mode, so that the frozen daemon, waking past its self-fence deadline, keeps its VMs and
    goes on writing keepalives (out of it, it would fence itself and fall silent for the leader to fence)."""
    assert eventually(lambda: skewed.client.nodes.info("hv2")["maintenance_seen"] is True, 5 * KEEPALIVE_INTERVAL), \
        "hv2 saw maintenance mode before it was frozen (a node acts on the last flag it saw)"
    pid = skewed.local.daemon_pid("pvcnoded", "hv2")
    os.kill(pid, signal.SIGSTOP)
    try:
        assert eventually(lambda: skewed.client.nodes.info("hv2")["daemon_state"] == "dead",
                          DEADLINE + LEADER_TICK + 2, 0.1), skewed.client.nodes.info("hv2")
        assert skewed.client.nodes.info("hv2")["daemon_note"] is None
    finally:
        os.kill(pid, signal.SIGCONT)

    resumed = eventually(lambda: skewed.client.nodes.info("hv2")["daemon_note"], 15, 0.2)
    assert resumed == "keepalives resumed since it was marked dead"
    time.sleep(2 * KEEPALIVE_INTERVAL)
    info = skewed.client.nodes.info("hv2")
    assert info["daemon_state"] == "dead", "only the fencing rules return a dead node to service"
    assert info["keepalive_age_s"] < 3 * KEEPALIVE_INTERVAL
    shown = pvc(skewed, "node", "info", "hv2")
    assert "Daemon state:       dead (keepalives resumed since it was marked dead)" in shown.stdout, shown.output
