"""A node daemon writes what an upload brings (a volume's record, an OVA's import report) only while it owns its
node: one whose ownership ended (its session replaced, or a clone's) records nothing and keeps nothing.

The upload runs here in-process, as the node's upload listener runs it after admitting a client, over a real
ZooKeeper and the file backend; the test ends the daemon's ownership as a successor's takeover does, by removing
its owner znode."""
import socket

import pytest

from pvc import bulk, plugin_manager, schema
from pvc.errors import Conflict
from pvc.node.appliance_uploads import ApplianceImportJob
from pvc.node.ownership import NodeOwnership
from pvc.node.pool_room import PoolRoom
from pvc.node.uploads import ImportJob, Tickets, UploadContext
from pvc.plugins.storage_file import FileBackend
from pvc.qemu_img import QemuImg

LOST = "this daemon's ZooKeeper session no longer owns its node; the write was refused"


@pytest.fixture
def lost_node(store, tmp_path):
    """An upload context of node hv1 whose daemon owned the node and owns it no more."""
    ownership = NodeOwnership(store, "hv1", wait_s=5)
    ownership.acquire()
    backend = FileBackend({"storage_directory": str(tmp_path / "storage")})
    backend.pool_create("up", {})
    plugins = plugin_manager.load()
    (tmp_path / "staging").mkdir()
    context = UploadContext("hv1", store, ownership.transaction, backend, plugins.registry("pvc_image_importers"),
                            QemuImg(256 << 20, 30), tmp_path / "staging", PoolRoom(backend),
                            plugins.registry("pvc_appliance_importers"))
    store.zk.delete(ownership.path)
    return context


def sent(data: bytes) -> socket.socket:
    """The node's end of a connection on which a client has sent `data` and closed."""
    client, node = socket.socketpair()
    client.sendall(data)
    client.close()
    node.settimeout(10)
    return node


def test_a_daemon_that_lost_its_node_records_no_uploaded_volume(store, lost_node):
    data = b"disk image " * 6000
    ticket = Tickets(30).issue("up", "disk", len(data), "raw", bulk.checksum_of_bytes(data), force=False)
    with pytest.raises(Conflict, match=LOST):
        ImportJob(lost_node, ticket).run(sent(data))
    assert store.read(schema.volume("up", "disk")) is None
    assert lost_node.backend.volume_names("up") == [], "the refused upload left its volume behind"


def test_a_daemon_that_lost_its_node_reports_no_ova_import(store, lost_node):
    store.write(schema.ova("appliance"), {"state": "uploading"})
    ticket = Tickets(30).issue("up", "appliance", 10240, "ova", bulk.checksum_of_bytes(bytes(10240)), force=False,
                               appliance_importer="ova")
    with pytest.raises(Conflict, match=LOST):
        ApplianceImportJob(lost_node, ticket).run(sent(bytes(10240)))
    assert store.children(schema.ova("appliance")) == []
