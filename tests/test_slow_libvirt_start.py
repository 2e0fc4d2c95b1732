"""A start that outlives the node's libvirt deadline: libvirtd answers every question but takes longer than the
node's `libvirt_timeout` to start a guest (a relay in front of its socket holds libvirt's DOMAIN_CREATE call,
`slow_libvirt`), and then starts it. The node must call the VM `unknown` until its call has ended, never "not
running", and reconcile what the call did before it reports again.

The same relay counts what a node at rest asks its libvirtd: its passes ask about every domain in one call.
"""
import threading
import time

import pytest

from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL, LIBVIRT_TIMEOUT

from helpers import eventually
from slow_libvirt import PER_DOMAIN_QUERIES, LibvirtRelay
from vm_support import assert_no_vm_on_two_hosts, remove_all_vms, running_hosts, vm_xml, wait_running_on


@pytest.fixture(autouse=True)
def no_vms_left(cluster):
    yield
    remove_all_vms(cluster)


def test_a_start_that_outlives_the_libvirt_deadline_is_unknown_and_the_vm_never_runs_twice(cluster):
    """hv2's libvirtd takes longer than hv2's deadline to start the VM it claimed in a migration, and then
    starts it. hv2 must call it `unknown` meanwhile, never "not running": a "not running" would send it back to
    hv1 (a return), which would start it while hv2's start is still on its way."""
    client, local = cluster.client, cluster.local
    client.vms.define(vm_xml("late"), target="hv1")
    client.vms.start("late", wait=True)
    slow = LibvirtRelay(local.host("hv2").socket_path)
    _restart_node_daemon(cluster, "hv2", libvirt_uri=slow.uri())
    try:
        slow.hold(LIBVIRT_TIMEOUT + 2)
        seen: list[tuple[float, dict, dict]] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                # The record first: "not running" read before a host is seen running it can only be a lie
                # when nothing could have claimed and started it in between.
                info = client.vms.info("late")
                seen.append((time.time(), running_hosts(cluster), info))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            client.vms.migrate("late", target="hv2")
            assert eventually(lambda: slow.held, 3 * LIBVIRT_TIMEOUT), "hv2 never started the VM"
            time.sleep(4 * KEEPALIVE_INTERVAL)
        finally:
            watching.set()
            watcher.join()
        slow.hold(0)

        twice = [(at, where["late"]) for at, where, _info in seen if len(where.get("late", [])) > 1]
        assert not twice, f"late ran on two hosts: {twice[:3]}"
        denied = [(at, where.get("late"), {key: info[key] for key in ("node", "running", "unknown", "last_error")})
                  for at, where, info in seen if where.get("late") and info["running"] is False]
        assert not denied, f"late was reported not running while it ran: {denied[:3]}"
        unknown = [info["unknown"] for _at, _where, info in seen if info["running"] is None and info["unknown"]]
        assert unknown and "did not answer" in unknown[0], [info for _at, _where, info in seen][-5:]
        wait_running_on(cluster, "late", "hv2")
        assert eventually(lambda: (lambda vm: (vm["node"], vm["running"], vm["state"]))(client.vms.info("late"))
                          == ("hv2", True, "start"), 10), client.vms.info("late")

        # Moved elsewhere while hv2's start is still on its way: hv2's last report says it may run there, so
        # hv2 still holds it; the copy that starts late on hv2 is let go (stopped, then handed over) before
        # hv2 says anything more, and only then may hv3 start it.
        slow.hold(LIBVIRT_TIMEOUT + 2)
        client.vms.define(vm_xml("moved"), target="hv2")
        client.vms.start("moved")
        assert eventually(lambda: client.vms.info("moved")["unknown"], 3 * LIBVIRT_TIMEOUT), client.vms.info("moved")
        client.vms.move("moved", target="hv3")
        slow.hold(0)
        where = []
        assert eventually(lambda: where.append(assert_no_vm_on_two_hosts(cluster).get("moved")) or where[-1] == ["hv3"],
                          6 * LIBVIRT_TIMEOUT, 0.05), where[-5:]
        assert ["hv2"] in where, "the late start went on on hv2 (else this test proves nothing)"
        assert "moved handed over to hv3" in (cluster.local.state_dir / "nodes" / "hv2" / "pvcnoded.log").read_text(
            errors="replace")
    finally:
        slow.hold(0)
        _restart_node_daemon(cluster, "hv2")
        slow.close()


def test_a_node_at_rest_asks_libvirt_about_its_vms_in_bulk(cluster):
    """Once it has seen its VMs, a node's converge passes and keepalive figures ask its libvirtd one bulk call a
    pass, never one call per VM, and it still reports each VM as libvirt has it."""
    client, local = cluster.client, cluster.local
    names = [f"rest{index}" for index in range(6)]
    for name in names:
        client.vms.define(vm_xml(name), target="hv2")
    for name in names[:4]:
        client.vms.start(name)
    for name in names[:4]:
        wait_running_on(cluster, name, "hv2")
    relay = LibvirtRelay(local.host("hv2").socket_path)
    _restart_node_daemon(cluster, "hv2", libvirt_uri=relay.uri())
    try:
        time.sleep(3 * KEEPALIVE_INTERVAL)
        before = len(relay.procedures)
        time.sleep(4 * KEEPALIVE_INTERVAL)
        asked = relay.procedures[before:]
        assert asked, "the node asked its libvirtd nothing at all"
        per_domain = [procedure for procedure in asked if procedure in PER_DOMAIN_QUERIES]
        assert not per_domain, f"the node asked about its VMs one at a time at rest: {per_domain[:20]}"
        assert sorted((vm["name"], vm["node"], vm["running"]) for vm in client.vms.list()) == \
            [(name, "hv2", name in names[:4]) for name in names]
        client.vms.stop(names[0], wait=True)
        assert cluster.host_domains("hv2")[names[0]] is False
    finally:
        _restart_node_daemon(cluster, "hv2")
        relay.close()


def _restart_node_daemon(cluster, node: str, **options) -> None:
    """Stop the node's pvcnoded and start it again (with `options`), waiting until the cluster has seen each step
    (the coordinator's view may still say ``run`` from before the stop)."""
    client, local = cluster.client, cluster.local
    local.stop_daemon("pvcnoded", node)
    assert eventually(lambda: client.nodes.info(node)["daemon_state"] == "stop", 10), client.nodes.info(node)
    local.start_node_daemon(node, **options)
    assert eventually(lambda: client.nodes.info(node)["daemon_state"] == "run", 30), client.nodes.info(node)
    local.wait_ready(30)
