"""Reads follow writes across coordinators: once a define has returned, every later read through any
coordinator shows the VM (the coordinator's cache catches up with ZooKeeper before it answers)."""
import threading
import time

import pytest

import pvc
from pvc.errors import Conflict

from vm_support import vm_xml


def _define_while_listing(cluster, clients: int, per_client: int) -> dict:
    local = cluster.local
    writer_uri, reader_uri = local.uris
    api_key = local.state["api_key"]
    returned: dict[str, float] = {}
    failures: list[str] = []
    stale_lists: list[str] = []
    lists = 0
    lock = threading.Lock()
    stop = threading.Event()

    def define(index: int) -> None:
        writer, reader = pvc.connect(writer_uri, api_key), pvc.connect(reader_uri, api_key)
        for number in range(per_client):
            name = f"rfw-{index}-{number}"
            try:
                writer.vms.define(vm_xml(name))
                with lock:
                    returned[name] = time.monotonic()
                reader.vms.info(name)
            except Exception as error:
                failures.append(f"{name}: {error!r}")

    def list_continuously() -> None:
        nonlocal lists
        reader = pvc.connect(reader_uri, api_key)
        while not stop.is_set():
            with lock:
                before = set(returned)
            listed = {vm["name"] for vm in reader.vms.list()}
            lists += 1
            missing = before - listed
            if missing:
                stale_lists.append(f"a list missed {len(missing)} VMs defined before it began, e.g. "
                                   f"{sorted(missing)[:3]}")

    lister = threading.Thread(target=list_continuously)
    definers = [threading.Thread(target=define, args=(index,)) for index in range(clients)]
    started = time.monotonic()
    lister.start()
    for thread in definers:
        thread.start()
    for thread in definers:
        thread.join()
    stop.set()
    lister.join()
    took = time.monotonic() - started
    print(f"{len(returned)} defines from {clients} clients in {took:.1f} s "
          f"({len(returned) / took:.0f}/s) while {lists} lists ran on the other coordinator")
    assert not failures, failures[:5]
    assert not stale_lists, stale_lists[:5]
    assert len(returned) == clients * per_client
    assert {vm["name"] for vm in cluster.client.vms.list()} >= set(returned)
    return returned


@pytest.mark.cluster(nodes=1, coordinators=2)
def test_a_vm_defined_through_one_coordinator_is_read_at_once_through_the_other(fresh_cluster):
    _define_while_listing(fresh_cluster, clients=4, per_client=60)


@pytest.mark.bench
@pytest.mark.cluster(nodes=1, coordinators=2)
def test_bench_2000_defines_from_4_clients_while_the_other_coordinator_lists(fresh_cluster):
    _define_while_listing(fresh_cluster, clients=4, per_client=500)


@pytest.mark.cluster(nodes=1, coordinators=2)
def test_a_volume_that_a_vm_just_defined_through_one_coordinator_uses_is_not_removed_through_the_other(
        fresh_cluster):
    """The other coordinator lists new VMs at most once a second during a burst (`VMS_RELIST_GAP_S`): asked at
    once to remove a volume that the VM just defined uses, it reads the volume's users only once its cache shows
    that VM, and refuses."""
    local = fresh_cluster.local
    writer, remover = (pvc.connect(uri, local.state["api_key"]) for uri in local.uris)
    writer.storage.pool_add("rfw")
    try:
        for index in range(5):
            volume = f"disk{index}"
            writer.storage.volume_add("rfw", volume, "8M")
            writer.vms.define(vm_xml(f"rfw-pad{index}"))  # the other coordinator lists it, and waits for the next
            disk = (f"<devices><disk type='volume' device='disk'><source pool='rfw' volume='{volume}'/>"
                    "<target dev='sda' bus='scsi'/></disk></devices>")
            writer.vms.define(vm_xml(f"rfw-user{index}").replace("</os>", f"</os>{disk}"))
            with pytest.raises(Conflict, match=f"used by VM\\(s\\) rfw-user{index}"):
                remover.storage.volume_remove("rfw", volume)
            assert volume in {entry["name"] for entry in writer.storage.volume_list("rfw")}
    finally:
        for client in (writer, remover):
            client.close()
