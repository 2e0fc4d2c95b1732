"""Real guests on QEMU hosts: boot, ACPI shutdown, live migration, flush, and what a host's daemons dying does.

The truth comes from outside PVC: each guest's own console (heartbeats with a counter and a boot id), each
host's own libvirtd (only the RUNNING state counts), the QEMU processes found by PID namespace, and the
volume's bytes on the host. Guests boot in seconds under TCG, so the module shares one cluster and reuses
booted guests where a test allows.
"""
import errno
import os
import socket
import urllib.request

import libvirt
import pytest

from pvc.cli.localcluster.cluster import LIBVIRT_TIMEOUT
from pvc.cli.localcluster.guest import parse_console
from pvc.cli.localcluster.processes import pid_alive
from pvc.cli.localcluster.qemuhost import MIGRATION_PORTS
from pvc.errors import OperationFailed

from guest_support import (boot_guests, console_text, guest_xml, heartbeats, qemu_pid, volume_marker,
                           wait_heartbeat)
from helpers import cluster_store, eventually
from slow_libvirt import DOMAIN_SHUTDOWN_PROCEDURES, LibvirtRelay, MigrationRelay
from pvc import schema
from pvc.node_stats_fields import DISK_FIELDS, VM_FIELDS
from vm_support import (assert_no_vm_on_two_hosts, fence_deadline_beyond_restarts, pvc, restart_node_daemon,
                        wait_for_task, wait_running_on)

pytestmark = pytest.mark.usefixtures("qemu_cluster")


@pytest.fixture(scope="module", autouse=True)
def restarts_never_fenced(qemu_cluster):
    fence_deadline_beyond_restarts(qemu_cluster)


def _shutoff_reason(cluster, node: str, vm: str) -> tuple[int, int]:
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        return tuple(connection.lookupByName(vm).state())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def mover(qemu_cluster):
    """A guest with a PVC volume, booted on hv1."""
    client = qemu_cluster.client
    client.storage.pool_add("guests")
    client.storage.volume_add("guests", "mover-disk", 64 * 1024 * 1024)
    client.vms.define(guest_xml("mover", disk="guests/mover-disk"), target="hv1")
    client.vms.start("mover", wait=True)
    wait_heartbeat(qemu_cluster, "mover", "hv1")
    return "mover"


def test_a_guest_boots_and_shuts_down_cleanly_through_acpi(qemu_cluster):
    client = qemu_cluster.client
    client.vms.define(guest_xml("solo"), target="hv3")
    client.vms.start("solo", wait=True)
    first = wait_heartbeat(qemu_cluster, "solo", "hv3", after=2)
    assert qemu_pid(qemu_cluster, "hv3", "solo"), "a QEMU process runs the guest in hv3's namespace"
    shown = pvc(qemu_cluster, "vm", "log", "solo", "--lines", "3")
    assert shown.exit_code == 0 and len(shown.output.splitlines()) == 3, shown.output
    assert f"boot {first.boot_id}" in shown.output, "pvc vm log shows the console"

    client.vms.shutdown("solo", wait=True)

    assert _shutoff_reason(qemu_cluster, "hv3", "solo") == (libvirt.VIR_DOMAIN_SHUTOFF,
                                                           libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN), \
        "the guest powered itself off; it was not destroyed"
    assert "power button pressed" in console_text(qemu_cluster, "solo", "hv3")
    assert qemu_pid(qemu_cluster, "hv3", "solo") is None
    assert heartbeats(qemu_cluster, "solo", "hv3")[-1].boot_id == first.boot_id
    client.vms.remove("solo")


def test_live_migration_moves_a_running_guest_and_its_disk_without_a_reboot(qemu_cluster, mover):
    client = qemu_cluster.client
    source = client.vms.info(mover)["node"]
    target = next(name for name in qemu_cluster.local.node_names if name != source)
    before = wait_heartbeat(qemu_cluster, mover, source, after=2)
    source_pid = qemu_pid(qemu_cluster, source, mover)
    earlier = len(console_text(qemu_cluster, mover, target))  # what an earlier stay on the target wrote

    client.vms.migrate(mover, target=target, wait=True)

    wait_running_on(qemu_cluster, mover, target)
    after = wait_heartbeat(qemu_cluster, mover, target, after=before.counter, timeout=15)
    assert after.boot_id == before.boot_id, "the guest did not reboot"
    assert not any(beat.counter <= before.counter
                   for beat in parse_console(console_text(qemu_cluster, mover, target)[earlier:])), \
        "the counter went on from where it was"
    # The target takes the guest over as it resumes it; the source's libvirt stops its paused copy just after.
    assert eventually(lambda: qemu_pid(qemu_cluster, source, mover) is None and source_pid not in
                      qemu_cluster.local.host(source).processes(), 10), "the source's QEMU process is gone"
    assert qemu_pid(qemu_cluster, target, mover)
    wait_heartbeat(qemu_cluster, mover, target, after=after.counter, timeout=15)
    marker = volume_marker(qemu_cluster, "guests", "mover-disk")
    assert marker.startswith(f"pvc-marker {before.boot_id} ")
    assert int(marker.split()[-1]) >= after.counter, "the guest writes its volume from the new host"
    assert f"disk wrote {after.counter} read pvc-marker {before.boot_id} {after.counter}" in \
        console_text(qemu_cluster, mover, target)
    info = client.vms.info(mover)
    assert (info["node"], info["last_node"], info["running"]) == (target, source, True)


def test_a_guest_migrated_straight_back_moves_live_both_ways(qemu_cluster, mover):
    """A migration is answered once the target runs the guest, while the source's libvirt is still stopping
    its old copy; a migration straight back to that source waits for the copy to go and moves live too (it
    would find the copy, fail, and fall back to moving the guest by shutting it down)."""
    client = qemu_cluster.client
    source = client.vms.info(mover)["node"]
    target = next(name for name in qemu_cluster.local.node_names if name != source)
    before = wait_heartbeat(qemu_cluster, mover, source)

    client.vms.migrate(mover, target=target, wait=True)
    back = client.vms.migrate(mover, target=source, wait=True)

    assert (back["node"], back["running"]) == (source, True)
    wait_running_on(qemu_cluster, mover, source)
    assert client.vms.info(mover)["migration_note"] is None, "a live migration, not a shutdown"
    assert wait_heartbeat(qemu_cluster, mover, source, after=before.counter).boot_id == before.boot_id, \
        "the guest never booted again"


def test_a_qemu_host_reports_what_its_guests_hold_and_use(qemu_cluster, mover):
    client = qemu_cluster.client
    node = client.vms.info(mover)["node"]
    idle = _idle_host(qemu_cluster)
    guests = len(qemu_cluster.local.host(node).qemu_pids())
    busy = eventually(lambda: (lambda info: info if info["load"] else None)(client.nodes.info(node)), 5)
    assert busy, "a running TCG guest uses CPU, and its host's load shows it"
    assert (busy["vms_running"], busy["memory_allocated_mib"], busy["vcpus_allocated"]) == \
        (guests, 128 * guests, guests), f"{node} runs {guests} guest(s) of 128 MiB and 1 vCPU"
    assert busy["accelerator"] == qemu_cluster.local.state["accelerator"] and busy["hypervisor"] == "QEMU"
    assert client.nodes.info(idle)["load"] == 0.0


def test_a_guests_disk_writes_and_cpu_time_show_in_its_nodes_statistics_record(qemu_cluster, mover):
    """The record `/metrics` serves VM figures from: the guest writes its disk every second, so its write
    counter grows from one record to the next, and never runs ahead of what the host's libvirt says."""
    node = qemu_cluster.client.vms.info(mover)["node"]

    def reading():
        with cluster_store(qemu_cluster.local) as store:
            record = store.read(schema.node_key(node, "vm_stats")) or {}
        fields = (record.get("vms") or {}).get(mover)
        if not fields:
            return None
        disks = fields[len(VM_FIELDS)]
        written = sum(numbers[DISK_FIELDS.index("write_bytes")] for numbers in disks.values())
        return record["time"], written, dict(zip(VM_FIELDS, fields)), sorted(disks)

    first = eventually(reading, timeout=15)
    assert first, f"no statistics of {mover} in {node}'s record"
    later = eventually(lambda: (lambda now: now if now and now[1] > first[1] else None)(reading()), timeout=20)
    assert later and later[0] > first[0], (first, later)
    connection = libvirt.open(qemu_cluster.local.host(node).uri)
    try:
        domain = connection.lookupByName(mover)
        host_written = sum(domain.blockStats(disk)[3] for disk in later[3])
        host_cpu_ns = domain.info()[4]
    finally:
        connection.close()
    assert 0 < later[1] <= host_written
    assert 0 < later[2]["cpu_time_ns"] <= host_cpu_ns
    assert later[2]["balloon_current_kib"] == 128 * 1024

    def scraped(family: str) -> float:
        text = urllib.request.urlopen(f"http://{qemu_cluster.local.metrics_targets[0]}/metrics", timeout=10).read()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                   if line.startswith(family + "{") and f'vm="{mover}"' in line)
    assert eventually(lambda: scraped("pvc_vm_disk_write_bytes_total") >= later[1], timeout=10), \
        "the coordinator's /metrics serves the node's record"
    assert scraped("pvc_vm_cpu_seconds_total") > 0 and scraped("pvc_vm_disk_write_requests_total") > 0


def test_a_live_migration_that_cannot_succeed_leaves_the_guest_running_where_it_was(qemu_cluster, mover):
    client = qemu_cluster.client
    source = client.vms.info(mover)["node"]
    target = "hv3"
    pid = qemu_pid(qemu_cluster, source, mover)
    qemu_cluster.local.host(target).stop_libvirtd()
    try:
        with pytest.raises(OperationFailed):
            client.vms.migrate(mover, target=target, wait=True)
    finally:
        qemu_cluster.local.host(target).start_libvirtd()

    info = client.vms.info(mover)
    assert (info["node"], info["running"]) == (source, True)
    assert info["last_error"] and "migration" in info["last_error"]
    assert qemu_pid(qemu_cluster, source, mover) == pid, "the guest never stopped"
    wait_heartbeat(qemu_cluster, mover, source, after=heartbeats(qemu_cluster, mover, source)[-1].counter)
    assert_no_vm_on_two_hosts(qemu_cluster)


def test_a_migration_whose_source_libvirtd_dies_after_the_target_resumed_ends_on_the_target(qemu_cluster, mover):
    """The target has resumed the guest, and its answer to the migration's Finish step is held; the source's
    libvirtd dies then, leaving a paused copy that no libvirt will settle. The node that asked for the migration
    gets an error it cannot tell from "the target did not answer", and cannot ask its own libvirt. It may not
    report that it kept the VM (once the paused copy went, another node could start a second one): the VM is
    recorded where it runs, the stale copy is stopped, and the guest never boots again."""
    client, local = qemu_cluster.client, qemu_cluster.local
    source = client.vms.info(mover)["node"]
    target = next(name for name in local.node_names if name != source)
    beat = wait_heartbeat(qemu_cluster, mover, source)
    relay = MigrationRelay(local.host(target).settings["libvirt_port"])
    local.stop_daemon("pvcnoded", target)
    restart_node_daemon(qemu_cluster, target, migration_uri=relay.uri())
    try:
        relay.hold_next_finish()
        client.vms.migrate(mover, target=target)
        assert relay.finish_held.wait(60), f"no migration's Finish answer passed the relay: {relay.procedures}"
        assert eventually(lambda: qemu_cluster.host_domains(target).get(mover) is True, 10)
        local.host(source).stop_libvirtd()
        assert eventually(lambda: (lambda vm: (vm["node"], vm["running"]))(client.vms.info(mover)) == (target, True),
                          30), client.vms.info(mover)
        local.host(source).start_libvirtd()
        assert eventually(lambda: mover not in qemu_cluster.host_domains(source), 30), \
            f"the source keeps its stale copy: {qemu_cluster.host_domains(source)}"
        assert wait_heartbeat(qemu_cluster, mover, target, after=beat.counter).boot_id == beat.boot_id, \
            "the guest moved live: it never booted again"
        assert eventually(lambda: client.vms.info(mover)["state"] == "start", 10), client.vms.info(mover)
        wait_running_on(qemu_cluster, mover, target)
    finally:
        relay.close()
        local.host(source).start_libvirtd()
        local.stop_daemon("pvcnoded", target)
        restart_node_daemon(qemu_cluster, target)


def test_a_migration_whose_daemon_stopped_before_libvirt_answered_is_made_not_answered_failed(qemu_cluster,
                                                                                              mover):
    """A node names the target in the VM's status before it asks libvirt to move the guest; a daemon killed
    right then leaves that intent and no error. Its successor, finding the guest here and no copy on the
    target, moves it as the placement says. It had placed the VM back, answering "live migration to ... failed
    (see the node log)" for a migration that never ran."""
    client, local = qemu_cluster.client, qemu_cluster.local
    source = client.vms.info(mover)["node"]
    target = next(name for name in local.node_names if name != source)
    beat = wait_heartbeat(qemu_cluster, mover, source)
    local.stop_daemon("pvcnoded", source, kill=True)
    client.vms.migrate(mover, target=target)
    with cluster_store(local) as store:
        status = store.read(schema.vm_key(mover, "status"))
        store.write(schema.vm_key(mover, "status"), {**status, "migrating_to": target, "error": None})

    restart_node_daemon(qemu_cluster, source)

    wait_running_on(qemu_cluster, mover, target, timeout=60)
    vm = client.vms.info(mover)
    assert (vm["node"], vm["running"], vm["last_error"], vm["migration_note"]) == (target, True, None, None), vm
    assert wait_heartbeat(qemu_cluster, mover, target, after=beat.counter).boot_id == beat.boot_id, \
        "the guest moved live: it never booted again"


def test_auto_migration_falls_back_to_a_shutdown_when_the_target_answers_no_and_says_so(qemu_cluster):
    """Every incoming-migration port of the target is taken, so its libvirtd answers the live migration with an
    error: method ``auto`` then moves the guest by shutting it down, and the VM says why (`migration_note`).
    The source's libvirtd takes longer than the node's deadline to pass the shutdown on: the fallback's first
    pass ends `unknown`, and the next one finishes the move (it once reported the live migration's failure
    instead, from the migration intent the failed pass left behind)."""
    client, local = qemu_cluster.client, qemu_cluster.local
    boot = boot_guests(qemu_cluster, "hv1", ["fallback"])["fallback"]
    slow = LibvirtRelay(local.host("hv1").socket_path, held=DOMAIN_SHUTDOWN_PROCEDURES)
    local.stop_daemon("pvcnoded", "hv1")
    restart_node_daemon(qemu_cluster, "hv1", libvirt_uri=slow.uri("qemu", "/system"))
    target = local.host("hv2")
    first = target.settings["migration_port_min"]
    taken = []
    try:
        slow.hold(LIBVIRT_TIMEOUT + 2)
        for port in range(first, first + MIGRATION_PORTS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past an earlier migration's TIME_WAIT
            try:
                sock.bind((target.address, port))
            except OSError as error:
                # Held already (the range lies among the machine's ephemeral ports, so an outgoing connection
                # may hold one): libvirt cannot take it either.
                sock.close()
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.listen()
            taken.append(sock)
        moved = client.vms.migrate("fallback", target="hv2", wait=True)
    finally:
        for sock in taken:
            sock.close()
        local.stop_daemon("pvcnoded", "hv1")
        slow.close()
        restart_node_daemon(qemu_cluster, "hv1")

    assert slow.held, "the shutdown passed the slow relay"
    assert (moved["node"], moved["running"]) == ("hv2", True), moved
    note = client.vms.info("fallback")["migration_note"]
    assert note and note.startswith("live migration failed (") and "migrated by shutting it down" in note, note
    assert "power button pressed" in console_text(qemu_cluster, "fallback", "hv1"), "shut down through ACPI"
    assert heartbeats(qemu_cluster, "fallback", "hv1")[-1].boot_id == boot.boot_id
    wait_running_on(qemu_cluster, "fallback", "hv2")
    client.vms.remove("fallback")


def test_guests_outlive_their_node_daemon_and_a_libvirtd_restart(qemu_cluster, mover):
    client, local = qemu_cluster.client, qemu_cluster.local
    node = client.vms.info(mover)["node"]
    pid = qemu_pid(qemu_cluster, node, mover)

    local.stop_daemon("pvcnoded", node, kill=True)
    beat = wait_heartbeat(qemu_cluster, mover, node, after=heartbeats(qemu_cluster, mover, node)[-1].counter)
    assert qemu_pid(qemu_cluster, node, mover) == pid
    restart_node_daemon(qemu_cluster, node)

    local.host(node).restart_libvirtd()
    assert qemu_pid(qemu_cluster, node, mover) == pid, "QEMU outlives libvirtd"
    assert wait_heartbeat(qemu_cluster, mover, node, after=beat.counter).boot_id == beat.boot_id
    assert eventually(lambda: qemu_cluster.host_domains(node).get(mover) is True, 15)
    assert eventually(lambda: (lambda vm: vm["running"] and vm["node"] == node)(client.vms.info(mover)), 15)
    guests = len(local.host(node).qemu_pids())
    assert eventually(lambda: client.nodes.info(node)["vms_running"] == guests, 15), \
        "the node reports the guest once libvirtd is back"

    target = next(name for name in local.node_names if name != node)
    client.vms.migrate(mover, target=target, wait=True)
    wait_running_on(qemu_cluster, mover, target)
    assert client.vms.info(mover)["migration_note"] is None, "a live migration, not a shutdown"
    assert wait_heartbeat(qemu_cluster, mover, target, after=beat.counter).boot_id == beat.boot_id, \
        "a guest whose libvirtd restarted still moves live"


def test_flush_live_migrates_every_guest_in_parallel_and_ready_brings_them_back(qemu_cluster):
    client = qemu_cluster.client
    names = ["fleet1", "fleet2", "fleet3"]
    boots = boot_guests(qemu_cluster, "hv1", names)

    task = wait_for_task(client, client.nodes.flush("hv1"), timeout=120)
    assert task["state"] == "done", f"flush failed: {task['not_moved']} {task['errors']}"
    assert client.nodes.info("hv1")["domain_state"] == "flushed"
    for name in names:
        node = client.vms.info(name)["node"]
        assert node != "hv1"
        wait_running_on(qemu_cluster, name, node)
        assert wait_heartbeat(qemu_cluster, name, node, after=boots[name].counter, timeout=20).boot_id == \
            boots[name].boot_id, f"{name} was not rebooted by the flush"

    wait_for_task(client, client.nodes.ready("hv1"), timeout=120)
    for name in names:
        wait_running_on(qemu_cluster, name, "hv1", timeout=60)
        assert wait_heartbeat(qemu_cluster, name, "hv1", after=boots[name].counter, timeout=20).boot_id == \
            boots[name].boot_id
    assert_no_vm_on_two_hosts(qemu_cluster)


def test_powering_a_host_off_kills_every_guest_in_it(qemu_cluster):
    client, local = qemu_cluster.client, qemu_cluster.local
    node = _idle_host(qemu_cluster)
    host = local.host(node)
    names = ["doomed1", "doomed2"]
    for name in names:
        client.vms.define(guest_xml(name), target=node)
        client.vms.start(name, wait=True)
    pids = host.qemu_pids()
    assert sorted(pids) == names, pids

    host.power_off()

    assert eventually(lambda: not any(pid in _live_pids() for pid in pids.values()), 10), \
        "every QEMU process of the host died with it"
    assert not host.running
    for name in names:  # the host comes back empty, for the tests after this one
        client.vms.remove(name)
    host.start()
    assert eventually(lambda: not any(vm["name"] in names for vm in client.vms.list()), 30), client.vms.list()
    assert host.qemu_pids() == {}


def _idle_host(cluster) -> str:
    """A host that runs no guest at all."""
    idle = [name for name in cluster.local.node_names if not cluster.local.host(name).qemu_pids()]
    assert idle, {name: cluster.local.host(name).qemu_pids() for name in cluster.local.node_names}
    return idle[0]


def _live_pids() -> set[int]:
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit() and pid_alive(int(entry))}
