"""The built-in fencing policies against the real things: ``ipmi`` through ipmitool to a real ipmi_sim whose
chassis is a simulated host, ``ceph-blocklist`` on a real Ceph with real RBD clients (qemu-io), and ``none``.

A policy proves what it says or fails with a reason an administrator can act on, within its deadline."""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from pvc import plugin_manager, schema
from pvc.cli.localcluster.bmc import SimulatedBMC
from pvc.cli.localcluster.processes import free_port, wait_until
from pvc.cli.localcluster.simhost import SimulatedHost
from pvc.plugins import fencing
from pvc.plugins.fencing import POWER_IS_OFF, CephBlocklistPolicy, IpmiPolicy, NoFencing

from conftest import started_cluster
from helpers import cluster_store, eventually
from vm_support import assert_no_vm_on_two_hosts, wait_for_task, wait_runs_again

GUEST_XML = ("<domain type='test'><name>guest</name><memory unit='MiB'>128</memory>"
             "<os><type>hvm</type></os></domain>")


def within(seconds: float) -> float:
    return time.monotonic() + seconds


# -- ipmi ----------------------------------------------------------------------------------------------------


@pytest.fixture
def powered_host(tmp_path) -> Iterator[tuple[SimulatedHost, SimulatedBMC]]:
    """A simulated host running one guest, and its BMC."""
    host = SimulatedHost(tmp_path / "host", "hv-fence")
    host.start()
    bmc = SimulatedBMC(tmp_path / "bmc", host)
    try:
        bmc.start("fencer", "s3cret-pw")
        connection = libvirt.open(host.uri)
        connection.createXML(GUEST_XML)
        connection.close()
        yield host, bmc
    finally:
        bmc.stop()
        host.stop()


def node_with(bmc: SimulatedBMC, **bmc_fields) -> dict:
    """The node record as the leader passes it: the BMC's address and credentials, as pvcnoded publishes them."""
    client = bmc.client
    return {"name": bmc.name, "bmc": {"host": client.host, "port": client.port, "user": client.user,
                                      "password": client.password, **bmc_fields}}


def test_an_ipmi_fence_powers_the_host_off_and_proves_it(powered_host):
    host, bmc = powered_host
    assert bmc.client.power_status() == (True, "Chassis Power is on")

    started = time.monotonic()
    result = IpmiPolicy().fence(node_with(bmc), {}, within(30))
    took = time.monotonic() - started

    assert result.proven == "off" and result.confirmed, result.reason
    assert POWER_IS_OFF in result.reason and str(bmc.client) in result.reason
    assert not host.running, "the host's libvirtd is gone, and its guest with it"
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(host.uri)
    print(f"\nipmi fence confirmed off in {took:.2f} s")  # a figure (tests/bench times fences), not a bound


def test_power_on_through_ipmitool_boots_the_host_empty(powered_host):
    host, bmc = powered_host
    assert IpmiPolicy().fence(node_with(bmc), {}, within(30)).proven == "off"

    assert bmc.client.ipmitool("chassis", "power", "on")[0]
    wait_until(lambda: host.running and bmc.client.power_status() == (True, "Chassis Power is on"), 10,
               what="the host to be on again")
    # libvirtd runs a moment before the host has finished booting (the test driver's own sample domain is
    # removed then): the host is judged once booted.
    wait_until(lambda: _domains(host) == [], 10, what="the host to boot with no guest running")


def _domains(host) -> list[str] | None:
    try:
        connection = libvirt.open(host.uri)
    except libvirt.libvirtError:
        return None
    try:
        return [domain.name() for domain in connection.listAllDomains()]
    finally:
        connection.close()


def test_a_bmc_that_does_not_answer_fails_the_fence_within_seconds(powered_host):
    host, bmc = powered_host
    silent_port = free_port(bmc.client.host, socket.SOCK_DGRAM)

    started = time.monotonic()
    result = IpmiPolicy().fence(node_with(bmc, port=silent_port), {}, within(30))
    took = time.monotonic() - started

    assert result.proven == "failed" and not result.confirmed
    assert result.device_answered is False, "nothing answered: the one case an I/O fence may stand alone"
    assert "Unable to establish IPMI v2 / RMCP+ session" in result.reason, result.reason
    assert f":{silent_port}" in result.reason
    assert host.running, "nothing was powered off"
    assert took < 2 + 3, f"ipmitool (-N 1 -R 1) gives up after 2 s, here with 3 s to spare; it took {took:.2f} s"
    print(f"\nipmi fence against a silent BMC failed in {took:.2f} s: {result.reason}")


def test_a_power_off_whose_answer_was_lost_is_proven_by_the_status_once_the_bmc_answers_again(powered_host):
    """A BMC busy carrying out the power off (here: its chassis control waits for a power action under way)
    answers neither that request nor the next; a fence that asks for the status only once calls a node that
    is going off "not confirmed", and the cluster fences it again and again (seen under load in the lab)."""
    host, bmc = powered_host
    busy = threading.Event()

    def power_action_under_way() -> None:
        with bmc._power_lock():
            busy.set()
            time.sleep(5.0)

    threading.Thread(target=power_action_under_way, daemon=True).start()
    assert busy.wait(5)
    result = IpmiPolicy().fence(node_with(bmc), {}, within(30))

    assert result.confirmed, result.reason
    assert not host.running


def test_a_fence_gives_up_at_its_deadline(powered_host):
    _host, bmc = powered_host
    started = time.monotonic()
    result = IpmiPolicy().fence(node_with(bmc, port=free_port(bmc.client.host, socket.SOCK_DGRAM)), {},
                                within(0.5))
    assert result.proven == "failed"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("credentials, why", [({"password": "wrong-password"}, "RAKP 2 HMAC is invalid"),
                                              ({"user": "intruder"}, "unauthorized name")])
def test_refused_credentials_fail_the_fence_with_ipmitools_reason(powered_host, credentials, why):
    host, bmc = powered_host
    started = time.monotonic()
    result = IpmiPolicy().fence(node_with(bmc, **credentials), {}, within(30))

    assert result.proven == "failed"
    assert why in result.reason and "Unable to establish IPMI v2 / RMCP+ session" in result.reason, result.reason
    assert result.device_answered is True and "the BMC answered" in result.reason, \
        "a BMC that refuses the credentials is powered: its host may well run"
    assert host.running
    assert time.monotonic() - started < 2


def test_the_ipmi_level_options_override_the_node_record(powered_host):
    host, bmc = powered_host
    stale = node_with(bmc, password="an-old-password")
    result = IpmiPolicy().fence(stale, {"password": bmc.client.password}, within(30))
    assert result.proven == "off", result.reason
    assert not host.running


def test_the_ipmi_level_options_never_override_the_nodes_own_bmc_address(powered_host):
    """The options are the whole cluster's: an address in them would have every node's fence hit one BMC."""
    host, bmc = powered_host
    elsewhere = {"host": "169.254.211.9", "port": free_port(bmc.client.host, socket.SOCK_DGRAM)}
    result = IpmiPolicy().fence(node_with(bmc), elsewhere, within(30))
    assert result.proven == "off", result.reason
    assert str(bmc.client) in result.reason and "169.254.211.9" not in result.reason
    assert not host.running


def test_the_bmc_password_never_reaches_a_command_line(powered_host, tmp_path):
    """ipmitool gets it through its environment (-E): every user of the machine can read command lines."""
    host, bmc = powered_host
    shim = tmp_path / "bin"
    shim.mkdir()
    argv_log = tmp_path / "ipmitool-argv"
    (shim / "ipmitool").write_text(f'#!/bin/sh\necho "$@" >> {argv_log}\nexec /usr/bin/ipmitool "$@"\n')
    (shim / "ipmitool").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{shim}{os.pathsep}{path}"
    try:
        result = IpmiPolicy().fence(node_with(bmc), {}, within(30))
    finally:
        os.environ["PATH"] = path
    assert result.proven == "off", result.reason
    logged = argv_log.read_text()
    assert "chassis power off" in logged and " -E " in logged
    assert bmc.client.password not in logged


@pytest.mark.cluster(nodes=2)
def test_a_local_cluster_gives_each_node_a_bmc_that_powers_the_whole_node(fresh_cluster):
    local = fresh_cluster.local
    fresh_cluster.client.cluster.maintenance(True)  # this test, not the leader, powers nodes off
    bmc = local.bmc("hv1")
    assert bmc.node_settings() == {"bmc_host": "127.0.0.1", "bmc_port": bmc.client.port,
                                   "bmc_user": local.state["bmc_user"], "bmc_password": local.state["bmc_password"]}
    assert "bmc hv1" in local.running_processes()
    assert "bmc_password" in (local.state_dir / "nodes" / "hv1" / "pvcnoded.yaml").read_text()

    assert bmc.client.ipmitool("chassis", "power", "off")[0]
    running = local.running_processes()
    assert "host hv1" not in running and "pvcnoded hv1" not in running, "the power cut takes the node daemon too"
    assert "host hv2" in running and "pvcnoded hv2" in running

    subprocess.run([str(Path(sys.executable).with_name("pvc-local")), "power-on", "hv1", "--state-dir",
                    str(local.state_dir)], check=True, capture_output=True, timeout=30)
    running = local.running_processes()
    assert "host hv1" in running and "pvcnoded hv1" in running
    assert bmc.client.power_status() == (True, "Chassis Power is on")


# -- none ----------------------------------------------------------------------------------------------------


def test_the_none_policy_never_confirms():
    result = NoFencing().fence({"name": "hv1"}, {}, within(5))
    assert result.proven == "failed"
    assert result.reason == "fencing disabled: an administrator must confirm the node is off"


def test_the_built_in_policies_come_through_the_entry_points():
    plugins = plugin_manager.load()
    policies = plugins.registry("pvc_fencing_policies")
    assert {name: policies[name].kind for name in ("ipmi", "ceph-blocklist", "none")} == {
        "ipmi": "power", "ceph-blocklist": "io", "none": "power"}
    fencing = next(row for row in plugins.describe() if row["name"] == "fencing")
    assert fencing["distribution"] == "pvc"
    assert fencing["fencing_policies"] == ["ceph-blocklist", "ipmi", "none"]


# -- ceph-blocklist ------------------------------------------------------------------------------------------


class RbdClient:
    """A real librbd client holding one image open (qemu-io), writing on request."""

    def __init__(self, conf: Path, image: str):
        self.process = subprocess.Popen(["qemu-io", "-f", "raw", f"rbd:{image}:conf={conf}"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._offset = 0

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def write(self, timeout: float = 15) -> str:
        """Write 4 KiB further on; qemu-io's answer ("wrote ..." or the error)."""
        self.process.stdin.write(f"write -P 0x5a {self._offset} 4k\n")
        self.process.stdin.flush()
        self._offset += 4096
        deadline = time.monotonic() + timeout
        while True:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if "wrote" in line or "failed" in line or "error" in line.lower():
                return line.strip()

    def writes(self) -> bool:
        return "wrote 4096/4096" in self.write()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def ceph_pool(private_ceph) -> Iterator[str]:
    """A pool of RBD images for VMs: one of the dead node's VMs, one of another host's, and one no client has
    open."""
    private_ceph.ceph("osd", "pool", "create", "fencing", "8", "8")
    subprocess.run(["rbd", "-c", str(private_ceph.conf), "pool", "init", "fencing"], check=True,
                   capture_output=True, timeout=60)
    for image in ("dead-vm", "live-vm", "idle-vm"):
        subprocess.run(["rbd", "-c", str(private_ceph.conf), "create", f"fencing/{image}", "--size", "16M"],
                       check=True, capture_output=True, timeout=60)
    yield "fencing"
    private_ceph.ceph("osd", "pool", "rm", "fencing", "fencing", "--yes-i-really-really-mean-it")


def blocklist(private_ceph) -> str:
    return private_ceph.ceph("osd", "blocklist", "ls")


def watchers(private_ceph, image: str) -> list[str]:
    status = subprocess.run(["rbd", "-c", str(private_ceph.conf), "status", image, "--format", "json"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
    return [watcher["address"] for watcher in json.loads(status)["watchers"]]


def test_a_ceph_blocklist_fence_stops_exactly_the_dead_nodes_clients(private_ceph, ceph_pool):
    """Every client here is at 127.0.0.1, as every host of the local cluster is: only the dead node's client
    instances are refused, never the address they share."""
    options = {"ceph_conf": str(private_ceph.conf)}
    dead_node = {"name": "hv-dead", "volumes": [f"{ceph_pool}/dead-vm", f"{ceph_pool}/idle-vm"]}
    policy = CephBlocklistPolicy()
    dead_vm = RbdClient(private_ceph.conf, f"{ceph_pool}/dead-vm")
    other_host_vm = RbdClient(private_ceph.conf, f"{ceph_pool}/live-vm")
    recovered_vm = None
    try:
        assert dead_vm.writes() and other_host_vm.writes()
        [dead_client] = watchers(private_ceph, f"{ceph_pool}/dead-vm")
        assert dead_client.startswith("127.0.0.1:")

        started = time.monotonic()
        result = policy.fence(dead_node, options, within(30))
        took = time.monotonic() - started

        assert result.proven == "isolated" and result.confirmed, result.reason
        assert result.details == {"addresses": [dead_client]}
        assert dead_client in blocklist(private_ceph)
        assert "Cannot send after transport endpoint shutdown" in dead_vm.write(), "the dead node's client is refused"
        assert other_host_vm.writes(), "another host's client at the same address still writes"
        recovered_vm = RbdClient(private_ceph.conf, f"{ceph_pool}/dead-vm")
        assert recovered_vm.writes(), "the VM restarted elsewhere is a new client instance and writes"

        again = policy.fence(dead_node, options, within(30))
        assert again.details == {"addresses": [dead_client]}, "the recorded instance is blocklisted again"
        assert again.proven == "failed" and "publishes no address" in again.reason, \
            "without the node's own address the clients it opened since cannot be found"
        assert recovered_vm.writes(), "fencing again (a new leader) never blocklists the recovered VM"
        print(f"\nceph-blocklist fence in {took:.2f} s: {result.reason}")

        started = time.monotonic()
        assert policy.unfence(dead_node, options, within(30)) == (
            True, "removed 1 Ceph blocklist entries of node hv-dead")
        print(f"unfence in {time.monotonic() - started:.2f} s")
        assert dead_client not in blocklist(private_ceph)
        assert policy.unfence(dead_node, options, within(30)) == (
            True, "no Ceph blocklist entries are recorded for node hv-dead")
    finally:
        for client in (dead_vm, other_host_vm, recovered_vm):
            if client is not None:
                client.close()


def test_a_ceph_blocklist_fence_that_finds_no_client_proves_nothing(private_ceph, ceph_pool):
    """No client on its VMs' volumes may be a node whose clients this fence cannot see: it proves nothing."""
    options = {"ceph_conf": str(private_ceph.conf)}
    node = {"name": "hv-quiet", "volumes": [f"{ceph_pool}/idle-vm", f"{ceph_pool}/gone-vm"]}
    result = CephBlocklistPolicy().fence(node, options, within(30))
    assert result.proven == "failed" and not result.confirmed, result.reason
    assert result.details == {"addresses": []}
    assert "finding none proves nothing" in result.reason and f"{ceph_pool}/gone-vm" in result.reason
    assert CephBlocklistPolicy().fence(node, options, within(30)).proven == "failed", "nor does it the next time"
    assert CephBlocklistPolicy().unfence(node, options, within(30)) == (
        True, "no Ceph blocklist entries are recorded for node hv-quiet")


def test_a_repeated_ceph_blocklist_fence_refuses_a_loopback_address_every_host_shares(private_ceph, ceph_pool):
    """A repeated fence must also cut the clients the node opened since (from its own address); here every
    host is 127.0.0.1, so it cannot tell them from another host's: it refuses, and says why."""
    options = {"ceph_conf": str(private_ceph.conf)}
    node = {"name": "hv-again", "volumes": [f"{ceph_pool}/dead-vm"], "agent_uri": "PYRO:pvc.node@127.0.0.1:7401"}
    policy = CephBlocklistPolicy()
    dead_vm = RbdClient(private_ceph.conf, f"{ceph_pool}/dead-vm")
    other_host_vm = RbdClient(private_ceph.conf, f"{ceph_pool}/live-vm")
    try:
        assert dead_vm.writes() and other_host_vm.writes()
        first = policy.fence(node, options, within(30))
        assert first.proven == "isolated", first.reason

        again = policy.fence(node, options, within(30))

        assert again.proven == "failed" and not again.confirmed, again.reason
        assert "127.0.0.1 is a loopback address that other hosts share" in again.reason
        assert again.details == first.details, "the recorded instances are blocklisted again"
        assert other_host_vm.writes(), "no client of another host at the same address was cut"
    finally:
        dead_vm.close()
        other_host_vm.close()
        assert policy.unfence(node, options, within(30))[0]


def test_the_clients_of_a_repeated_fence_are_told_by_the_nodes_own_address():
    assert fencing.node_address({"name": "hv1", "agent_uri": "PYRO:pvc.node@169.254.40.11:7400"}) == "169.254.40.11"
    assert fencing.node_address({"name": "hv1", "address": "169.254.40.12", "agent_uri": "PYRO:x@127.0.0.1:1"}) == \
        "169.254.40.12"
    assert fencing.unusable_address("hv1", "169.254.40.11") is None
    assert "loopback" in fencing.unusable_address("hv1", "127.0.0.1")
    assert "no address" in fencing.unusable_address("hv1", None)
    assert [fencing.client_ip(instance) for instance in ("169.254.40.11:0/3264513290", "v1:169.254.40.11:6801/77",
                                                 "[fe80::1]:0/12")] == ["169.254.40.11", "169.254.40.11", "fe80::1"]


def test_a_ceph_blocklist_fence_without_ceph_fails_with_the_reason(tmp_path):
    result = CephBlocklistPolicy().fence({"name": "hv1", "volumes": ["rbd/disk"]},
                                         {"ceph_conf": str(tmp_path / "ceph.conf")}, within(10))
    assert result.proven == "failed"
    assert f"no Ceph configuration file {tmp_path / 'ceph.conf'}" in result.reason


# -- the chain in a cluster: a power level and a storage level, undone by `node ready` -----------------------

RBD_VM_XML = ("<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
              "<os><type>hvm</type></os>"
              "<devices><disk type='volume' device='disk'><source pool='fenced' volume='{volume}'/>"
              "<target dev='vda' bus='virtio'/></disk></devices></domain>")


@pytest.fixture
def ceph_fencing_cluster(private_ceph, tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("ceph-fence"), nodes=3, coordinators=1, storage="ceph",
                               ceph_conf=private_ceph.conf)


def test_a_dead_node_is_powered_off_and_its_rbd_clients_blocklisted_until_node_ready(private_ceph,
                                                                                     ceph_fencing_cluster):
    """The test-driver host opens no disk, so a real librbd client stands for the dead node's QEMU on its VM's
    image; another client, at the same address, stands for another host's VM."""
    cluster = ceph_fencing_cluster
    client, local = cluster.client, cluster.local
    client.storage.pool_add("fenced")
    for volume in ("dead-disk", "live-disk"):
        client.storage.volume_add("fenced", volume, 16 * 1024 * 1024)
    client.vms.define(RBD_VM_XML.format(name="rbdvm", volume="dead-disk"), target="hv1")
    client.vms.start("rbdvm", wait=True)
    client.cluster.config(fence_chain=["ipmi", "ceph-blocklist"])
    with cluster_store(local) as store:
        store.write(schema.CONFIG, {**store.read(schema.CONFIG),
                                    "fence_options": {"ceph-blocklist": {"ceph_conf": str(private_ceph.conf)}}})
    dead_node_vm = RbdClient(private_ceph.conf, "fenced/dead-disk")
    other_host_vm = RbdClient(private_ceph.conf, "fenced/live-disk")
    try:
        assert dead_node_vm.writes() and other_host_vm.writes()
        [dead_client] = watchers(private_ceph, "fenced/dead-disk")

        local.stop_daemon("pvcnoded", "hv1", kill=True)

        recovery = eventually(lambda: (lambda found: found if found and found["state"] in ("done", "failed")
                                       else None)(client.nodes.info("hv1")["recovery"]), 60, 0.2)
        assert recovery and recovery["state"] == "done", recovery
        assert [(level["policy"], level["proven"]) for level in recovery["fence"]] == \
            [("ipmi", "off"), ("ceph-blocklist", "isolated")], recovery["fence"]
        assert dead_client in blocklist(private_ceph)
        assert "Cannot send after transport endpoint shutdown" in dead_node_vm.write(), \
            "the fenced node's client is refused"
        assert other_host_vm.writes(), "another host's client at the same address still writes"
        assert eventually(lambda: client.vms.info("rbdvm")["node"] in ("hv2", "hv3")
                          and client.vms.info("rbdvm")["running"], 20), client.vms.info("rbdvm")
        assert_no_vm_on_two_hosts(cluster)

        local.bmc("hv1").power_on()
        wait_runs_again(client, "hv1")
        ready = wait_for_task(client, client.nodes.ready("hv1"))

        assert ready["state"] == "done", ready
        assert ready["unfence"] == [{"policy": "ceph-blocklist", "done": True,
                                     "explanation": "removed 1 Ceph blocklist entries of node hv1"}]
        assert dead_client not in blocklist(private_ceph)
        again = wait_for_task(client, client.nodes.flush("hv1"))
        assert again["state"] == "done" and "unfence" not in wait_for_task(client, client.nodes.ready("hv1")), \
            "a second ready has nothing left to undo"
    finally:
        dead_node_vm.close()
        other_host_vm.close()
