"""Retries are safe: a call whose answer was lost is retried on another coordinator under the same request id
and answered from its first attempt, never carried out twice."""
import os
import signal
import threading
import uuid

import pytest
import Pyro5.api

import pvc
from pvc import request_ids, schema
from pvc.client import object_id
from pvc.handshake import authenticated_proxy

from helpers import cluster_store, eventually
from tcp_relay import Pair, TcpRelay, close_socket
from vm_support import vm_xml


class AnswerCutter(TcpRelay):
    """A TCP relay to one coordinator that passes the call naming `method` on and never passes its answer
    back: when the answer comes, it runs `on_answer` (kill the coordinator, say) and closes the client's
    connection, as a coordinator dying right after it committed would."""

    def __init__(self, target_port: int, method: bytes, on_answer=lambda: None):
        self._method = method
        self._on_answer = on_answer
        self._armed: set[Pair] = set()
        self.cut = threading.Event()
        super().__init__(("127.0.0.1", target_port))

    @property
    def uri(self) -> str:
        return f"pvc://{self.hosts}"

    def forward(self, data: bytes, pair: Pair, upstream: bool) -> bool:
        if self.cut.is_set():
            return True
        if upstream and self._method in data:
            self._armed.add(pair)
        elif not upstream and pair in self._armed:
            self._on_answer()
            self.cut.set()
            for sock in pair:
                close_socket(sock)
            return False
        return True


def _coordinator_port(local, name: str) -> int:
    return local.state["coordinators"][name]


def _killed_after_answering(local, method: bytes):
    """A client whose call of `method` reaches the first coordinator, which is killed once it has answered
    (the answer never arrives): the client retries on the second."""
    first = local.coordinator_names[0]
    cutter = AnswerCutter(_coordinator_port(local, first), method,
                          on_answer=lambda: os.kill(local.daemon_pid("pvcapid", first), signal.SIGKILL))
    return cutter, pvc.connect([cutter.uri, local.uris[1]], local.state["api_key"])


@pytest.mark.cluster(nodes=2, coordinators=2)
def test_a_define_whose_coordinator_died_after_committing_is_answered_by_the_other(fresh_cluster):
    cutter, client = _killed_after_answering(fresh_cluster.local, b"define")
    try:
        answer = client.vms.define(vm_xml("retried"))
    finally:
        cutter.close()
    assert cutter.cut.is_set(), "the first attempt's answer was cut off"
    assert answer["name"] == "retried"
    assert [vm["name"] for vm in fresh_cluster.client.vms.list()] == ["retried"]
    assert client.vms.info("retried")["node"] == answer["node"]


@pytest.mark.cluster(nodes=3, coordinators=2)
def test_a_migrate_whose_answer_was_lost_moves_the_vm_once(fresh_cluster):
    local, admin = fresh_cluster.local, fresh_cluster.client
    admin.vms.define(vm_xml("mover"), target="hv1")
    admin.vms.start("mover", wait=True)
    first, _second = local.coordinator_names
    cutter = AnswerCutter(_coordinator_port(local, first), b"migrate")
    client = pvc.connect([cutter.uri, local.uris[1]], local.state["api_key"])
    try:
        answer = client.vms.migrate("mover", wait=True)
    finally:
        cutter.close()
    assert cutter.cut.is_set()
    info = admin.vms.info("mover")
    assert answer["node"] == info["node"] != "hv1"
    assert info["last_node"] == "hv1", "moved once: from hv1, not on again from its first target"
    assert eventually(lambda: fresh_cluster.host_domains(info["node"]).get("mover"), 10)


@pytest.mark.cluster(nodes=1, coordinators=1)
def test_a_retry_after_its_coordinator_left_without_answering_gets_the_vm_as_it_is(fresh_cluster):
    """The first attempt's coordinator wrote and died before recording its answer: the retry reads the VM
    rather than defining it again (which would answer AlreadyExists to its own first attempt)."""
    local, admin = fresh_cluster.local, fresh_cluster.client
    admin.vms.define(vm_xml("orphaned-answer"))
    request_id = uuid.uuid4()
    with cluster_store(local) as store:
        store.zk.create(schema.request(str(request_id)),
                        schema.encode({"coordinator": "pvcapid-gone", "method": "define", "created": 0}))
    Pyro5.api.current_context.correlation_id = request_id
    with authenticated_proxy(f"PYRO:{object_id('vms')}@127.0.0.1:{local.state['coordinators'][local.coordinator_names[0]]}",
                             local.state["api_key"], 10) as proxy:
        answer = proxy.define(vm_xml("orphaned-answer"))
    assert answer["name"] == "orphaned-answer"
    assert [vm["name"] for vm in admin.vms.list()] == ["orphaned-answer"]


@pytest.mark.cluster(nodes=1, coordinators=2)
def test_a_provisioner_call_whose_coordinator_died_after_committing_is_answered_by_the_other(fresh_cluster):
    """The provisioner's calls, its mixins' among them (user data, scripts, OVAs), are retry-safe too: the
    retry gets the document its first attempt added, not AlreadyExists for it."""
    cutter, client = _killed_after_answering(fresh_cluster.local, b"userdata_add")
    try:
        answer = client.provisioner.userdata_add("retried-doc", "#cloud-config\nhostname: retried\n")
    finally:
        cutter.close()
    assert cutter.cut.is_set(), "the first attempt's answer was cut off"
    assert answer["name"] == "retried-doc"
    assert [row["name"] for row in fresh_cluster.client.provisioner.userdata_list()] == ["retried-doc"]


def test_a_retry_that_collides_with_its_own_first_attempt_meets_the_recorded_id_not_the_vm_it_made(store):
    """The retry began while the first attempt still ran, so it found no recorded id; the first attempt then
    committed the VM with its id. The retry's own transaction must tell it so (`Repeated`: it is answered from
    that attempt), not that the VM exists already (the scale checker's 'came back': a define answered
    AlreadyExists although that very define had made the VM)."""
    request_id, path = f"retry-{uuid.uuid4().hex}", f"/pvc-test/{uuid.uuid4().hex}"
    store.write("/pvc-test", {})
    for attempt in ("first", "retry"):
        request_ids.begin(request_id, {"method": "define", "attempt": attempt})
        try:
            if attempt == "first":
                store.transaction().create(path, {"made by": attempt}).commit()
            else:
                with pytest.raises(request_ids.Repeated):
                    store.transaction().create(path, {"made by": attempt}).commit()
        finally:
            request_ids.end()
    assert store.read(path) == {"made by": "first"}
    store.zk.delete(schema.request(request_id))
