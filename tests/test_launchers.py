"""The local-cluster launchers run the real ZooKeeper and libvirtd, so these tests do too."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
from kazoo.client import KazooClient

from pvc.cli.localcluster.processes import kill_pid, live_pid, pid_alive, start_detached
from pvc.cli.localcluster.simhost import SimulatedHost
from pvc.cli.localcluster.zookeeper import ZooKeeperServer

VM_XML = (
    "<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory>"
    "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
)

libvirt.registerErrorHandler(lambda _ctx, _error: None, None)


@pytest.fixture
def zookeeper(tmp_path: Path):
    server = ZooKeeperServer(tmp_path / "zookeeper")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_host(tmp_path: Path):
    hosts: list[SimulatedHost] = []

    def make(name: str) -> SimulatedHost:
        host = SimulatedHost(tmp_path / name, name)
        hosts.append(host)
        host.start()
        return host

    yield make
    for host in hosts:
        host.stop()


def domain_states(uri: str) -> dict[str, int]:
    conn = libvirt.open(uri)
    try:
        return {dom.name(): dom.state()[0] for dom in conn.listAllDomains()}
    finally:
        conn.close()


def start_vm(uri: str, name: str) -> None:
    conn = libvirt.open(uri)
    try:
        conn.defineXML(VM_XML.format(name=name)).create()
    finally:
        conn.close()


def test_zookeeper_serves_clients_and_stops_without_leftovers(zookeeper: ZooKeeperServer):
    client = KazooClient(hosts=zookeeper.hosts)
    client.start(timeout=5)
    try:
        client.create("/pvc/probe", b"hello", makepath=True)
        assert client.get("/pvc/probe")[0] == b"hello"
    finally:
        client.stop()
        client.close()
    pid = zookeeper.pid
    assert pid is not None and pid_alive(pid)

    ZooKeeperServer.attach(zookeeper.directory).stop()

    assert not pid_alive(pid)
    assert not zookeeper.running


def test_zookeeper_start_failure_names_the_log_and_leaves_nothing(tmp_path: Path):
    with socket.socket() as squatter:
        # Bound but not listening: ZooKeeper's own bind fails, yet nothing answers probes.
        squatter.bind(("127.0.0.1", 0))
        server = ZooKeeperServer(tmp_path / "zookeeper", port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="BindException") as failure:
            server.start()
    assert str(server.log_path) in str(failure.value)
    assert not server.running
    assert not (tmp_path / "zookeeper" / "zookeeper.pid").exists()


def test_zookeeper_refuses_a_port_that_another_server_answers_on(zookeeper: ZooKeeperServer, tmp_path: Path):
    with pytest.raises(RuntimeError, match="in use"):
        ZooKeeperServer(tmp_path / "second", port=zookeeper.port).start()


def test_simulated_host_starts_empty(make_host):
    host = make_host("hv1")
    assert host.running
    assert domain_states(host.uri) == {}


def test_vm_outlives_the_connection_that_started_it(make_host):
    host = make_host("hv1")
    start_vm(host.uri, "vm1")
    assert domain_states(host.uri) == {"vm1": libvirt.VIR_DOMAIN_RUNNING}


def test_vm_outlives_a_client_killed_with_sigkill(make_host):
    host = make_host("hv1")
    client = subprocess.run(
        [
            sys.executable,
            "-c",
            "import libvirt, os, signal, sys;"
            "conn = libvirt.open(sys.argv[1]);"
            "conn.defineXML(sys.argv[2]).create();"
            "os.kill(os.getpid(), signal.SIGKILL)",
            host.uri,
            VM_XML.format(name="vm1"),
        ],
        capture_output=True,
    )
    assert client.returncode == -signal.SIGKILL, client.stderr
    assert domain_states(host.uri) == {"vm1": libvirt.VIR_DOMAIN_RUNNING}
    assert "'vm1': Started" in host.events_path.read_text()


def test_hosts_side_by_side_do_not_share_vms(make_host):
    first, second = make_host("hv1"), make_host("hv2")
    start_vm(first.uri, "vm1")
    start_vm(second.uri, "vm2")
    assert domain_states(first.uri) == {"vm1": libvirt.VIR_DOMAIN_RUNNING}
    assert domain_states(second.uri) == {"vm2": libvirt.VIR_DOMAIN_RUNNING}


def test_power_off_kills_every_vm(make_host):
    host = make_host("hv1")
    start_vm(host.uri, "vm1")
    pids = host.pid, host.holder_pid

    host.power_off()

    assert not host.running
    assert not any(pid_alive(pid) for pid in pids)
    host.start()
    assert domain_states(host.uri) == {}


def test_stop_from_another_process_view_leaves_nothing_running(make_host):
    host = make_host("hv1")
    pids = host.pid, host.holder_pid
    assert all(pid is not None and pid_alive(pid) for pid in pids)

    SimulatedHost.attach(host.directory).stop()

    assert not any(pid_alive(pid) for pid in pids)
    assert not host.running and host.holder_pid is None


def test_a_daemon_in_the_middle_of_exec_is_still_found_running(tmp_path: Path):
    """Each exec leaves /proc/PID/cmdline empty for a moment (`ip netns exec` becoming pvcnoded did in CI, and
    the cluster took its node daemon for dead); a process read then is still the one its pid file names."""
    marker = tmp_path / "daemon.yaml"
    marker.write_text("")
    chain = ["/usr/bin/env"] * 40 + ["tail", "-f", str(marker)]
    for _attempt in range(5):
        pid = start_detached(chain, tmp_path / "daemon.log", tmp_path / "daemon.pid")
        try:
            while "tail" not in Path(f"/proc/{pid}/comm").read_text():
                assert live_pid(tmp_path / "daemon.pid", str(marker)) == pid
        finally:
            kill_pid(pid)
