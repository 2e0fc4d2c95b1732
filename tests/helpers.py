"""Small helpers shared by the test modules: waiting for a condition, VMs on a simulated host, a store."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, TypeVar

import libvirt

from pvc.cli.localcluster.cluster import LocalCluster
from pvc.store import Store

T = TypeVar("T")

VM_XML = ("<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
          "<vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>")


def eventually(check: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """The first truthy result of `check` within `timeout` seconds, else its last result."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def define_vm(libvirt_uri: str, name: str, memory_mib: int, vcpus: int, start: bool = True) -> None:
    """Define (and start) a VM directly in a host's libvirtd, as if PVC had put it there."""
    connection = libvirt.open(libvirt_uri)
    try:
        domain = connection.defineXML(VM_XML.format(name=name, memory_mib=memory_mib, vcpus=vcpus))
        if start:
            domain.create()
    finally:
        connection.close()


def remove_vm(libvirt_uri: str, name: str) -> None:
    connection = libvirt.open(libvirt_uri)
    try:
        domain = connection.lookupByName(name)
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    finally:
        connection.close()


@contextlib.contextmanager
def cluster_store(local: LocalCluster) -> Iterator[Store]:
    """A store session on a local cluster's ZooKeeper with the cluster's own credentials."""
    store = Store(local.zookeeper_hosts, "pvc", local.state["zookeeper_password"],
                  session_timeout=4)
    store.start(connect_timeout=10)
    try:
        yield store
    finally:
        store.stop()


def refused_in_one_line(result: Any, words: str) -> None:
    """A `pvc` command refused as its user sees it: exit status 1, and one line, on standard error, naming what
    is wrong (`words`)."""
    assert result.exit_code == 1, result.output
    assert words in result.stderr, result.stderr
    assert len(result.output.strip().splitlines()) == 1, result.output
