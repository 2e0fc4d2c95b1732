"""Fixtures that start real services: a private ZooKeeper, and whole local clusters of real daemons."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import libvirt
import pytest
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

import pvc
from pvc.cli.localcluster.ceph import PrivateCeph
from pvc.cli.localcluster.cluster import LocalCluster
from pvc.cli.localcluster.zookeeper import ZooKeeperServer
from pvc.cache import ClusterCache
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.vm_control import VMControl
from pvc.store import Store

libvirt.registerErrorHandler(lambda _context, _error: None, None)

ZK_USER, ZK_PASSWORD = "pvc", "test-password"
EXAMPLE_PLUGIN = Path(__file__).parent.parent / "docs" / "examples" / "pvc-example-plugin"
"""The plugin author's guide's example plugins, one per hook kind, as one distribution."""


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory) -> Iterator[ZooKeeperServer]:
    """One real ZooKeeper for the session; each test gets its own chroot in it (see `zookeeper_hosts`)."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zookeeper_hosts(zookeeper_server) -> str:
    """A connection string whose chroot no other test uses."""
    chroot = f"/test-{uuid.uuid4().hex[:12]}"
    # Retried, and given time: a session's creation waits for the server's disk, which a test writing
    # hundreds of MiB beside it can stall past one connect attempt's timeout (seen once in a full run).
    admin = KazooClient(hosts=zookeeper_server.hosts, connection_retry=KazooRetry(max_tries=-1, max_delay=1.0))
    admin.start(timeout=30)
    admin.ensure_path(chroot)
    admin.stop()
    admin.close()
    return zookeeper_server.hosts + chroot


@pytest.fixture
def store(zookeeper_hosts) -> Iterator[Store]:
    store = Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=4)
    store.start(connect_timeout=10)
    yield store
    store.stop()


@pytest.fixture
def cache(store) -> ClusterCache:
    """A coordinator's watched cache over `store`, started."""
    cache = ClusterCache(store)
    cache.start()
    return cache


@pytest.fixture
def context(store, cache) -> CoordinatorContext:
    """A coordinator's context with no node agents, plugins or leadership: the test plays the nodes."""
    return CoordinatorContext("test-coordinator", {}, store, cache, plugins=None, agents=None, leadership=None)


@pytest.fixture
def control(context) -> VMControl:
    """A coordinator's VM control with no node agents: the test plays the nodes."""
    return VMControl(context)


class RunningCluster:
    """A local cluster started for a test, with a connected client."""

    def __init__(self, local: LocalCluster):
        self.local = local
        self.client = pvc.connect(local.uris, local.state["api_key"])

    def host_domains(self, node: str) -> dict[str, bool]:
        """What that node's own libvirtd runs: domain name → running. The ground truth, not ZooKeeper. Only
        libvirt's RUNNING state counts: a paused incoming-migration target is not (yet) running."""
        connection = libvirt.open(self.local.host(node).uri)
        try:
            found = {}
            for domain in connection.listAllDomains():
                try:
                    found[domain.name()] = domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                except libvirt.libvirtError as error:
                    if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # gone since it was listed (a migration's source, undefined as it ends)
            return found
        finally:
            connection.close()


def started_cluster(directory: Path, nodes: int, coordinators: int, **options) -> Iterator[RunningCluster]:
    local = LocalCluster(directory)
    local.up(nodes=nodes, coordinators=coordinators, **options)
    running = RunningCluster(local)
    try:
        yield running
    finally:
        running.client.close()
        local.down()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RunningCluster]:
    """A 3-node, 1-coordinator local cluster shared by a test module."""
    yield from started_cluster(tmp_path_factory.mktemp("cluster"), nodes=3, coordinators=1)


@pytest.fixture
def fresh_cluster(tmp_path_factory, request) -> Iterator[RunningCluster]:
    """A cluster of its own for a test that breaks things; `@pytest.mark.cluster(nodes=, coordinators=,
    zookeepers=, lab=)`."""
    marker = request.node.get_closest_marker("cluster")
    options = marker.kwargs if marker else {}
    yield from started_cluster(tmp_path_factory.mktemp("cluster"), options.get("nodes", 3),
                              options.get("coordinators", 1), zookeepers=options.get("zookeepers", 1),
                              lab=options.get("lab", False))


@pytest.fixture(scope="module")
def qemu_cluster(tmp_path_factory) -> Iterator[RunningCluster]:
    """A 3-node cluster of QEMU hosts running real guests, shared by a test module."""
    yield from started_cluster(tmp_path_factory.mktemp("qemu"), nodes=3, coordinators=1, hypervisor="qemu")


@pytest.fixture(scope="session")
def private_ceph(tmp_path_factory) -> Iterator[PrivateCeph]:
    """One real single-node Ceph for the session. A Ceph that cannot start fails the run; it is never skipped."""
    ceph = PrivateCeph(tmp_path_factory.mktemp("ceph"))
    ceph.start()
    yield ceph
    ceph.stop()


@pytest.fixture(scope="session", params=["file", "ceph"])
def storage_cluster(request, tmp_path_factory) -> Iterator[RunningCluster]:
    """A 1-node cluster on each storage backend in turn: the backend is a test parameter (`.backend`)."""
    ceph_conf = request.getfixturevalue("private_ceph").conf if request.param == "ceph" else None
    local = LocalCluster(tmp_path_factory.mktemp(f"storage-{request.param}"))
    local.up(nodes=1, coordinators=1, storage=request.param, ceph_conf=ceph_conf)
    running = RunningCluster(local)
    running.backend = request.param
    try:
        yield running
    finally:
        running.client.close()
        local.down()


@pytest.fixture(scope="session")
def example_plugin_installed(tmp_path_factory):
    """pip-installs the fixture distribution (a local path, no index) where the daemons started from now on
    find it. It goes to a directory of its own on PYTHONPATH rather than into the venv, which other test runs
    share."""
    build = tmp_path_factory.mktemp("plugin-source")
    source = build / EXAMPLE_PLUGIN.name
    shutil.copytree(EXAMPLE_PLUGIN, source)
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True, timeout=120)
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), previous]))
    yield target
    if previous is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = previous
