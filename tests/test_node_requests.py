"""Nodes never write desired state: the leader records what their reports ask for, and a command issued
meanwhile always wins. Against a real ZooKeeper; the VM records are written as coordinators and nodes do."""
from pvc import schema
from pvc.cache import WatchedCollection
from pvc.rpc.node_requests import NodeRequests

from helpers import eventually


def _vm(store, name: str, state: str, placement: dict) -> None:
    store.transaction() \
        .create(schema.vm(name), {"name": name}) \
        .create(schema.vm_key(name, "state"), state) \
        .create(schema.vm_key(name, "placement"), placement) \
        .commit()


def _zxid(store, name: str, key: str) -> int:
    return store.zk.exists(schema.vm_key(name, key)).mzxid


def _leader(store) -> str:
    return store.zk.create(f"{schema.ELECTION}/leader-", b"", ephemeral=True, sequence=True)


def _handled(store, requests: NodeRequests, name: str, status: dict) -> None:
    store.write(schema.vm_key(name, "status"), status)
    vms = requests._vms
    assert eventually(lambda: (vms.get(name) or {}).get("status") == status, 5)
    requests.handle(_leader(store))


def _requests(store) -> NodeRequests:
    vms = WatchedCollection(store, schema.VMS, schema.vm, schema.VM_KEYS)
    vms.start()
    return NodeRequests(store, vms)


def test_a_finished_restart_becomes_start_unless_a_newer_command_came(store):
    requests = _requests(store)
    _vm(store, "restarted", "restart", {"node": "hv1"})
    _vm(store, "overtaken", "restart", {"node": "hv1"})
    overtaken_zxid = _zxid(store, "overtaken", "state")
    store.write(schema.vm_key("overtaken", "state"), "restart")  # a second restart, issued meanwhile

    _handled(store, requests, "restarted", {"node": "hv1", "running": True, "request": {
        "kind": "settle", "to": "start", "state_zxid": _zxid(store, "restarted", "state")}})
    _handled(store, requests, "overtaken", {"node": "hv1", "running": True, "request": {
        "kind": "settle", "to": "start", "state_zxid": overtaken_zxid}})

    assert store.read(schema.vm_key("restarted", "state")) == "start"
    assert store.read(schema.vm_key("overtaken", "state")) == "restart", "the newer restart still runs"


def test_a_failed_move_goes_back_unless_the_vm_was_placed_again(store):
    requests = _requests(store)
    _vm(store, "kept", "migrate", {"node": "hv2", "last_node": "hv1"})
    _vm(store, "returned", "migrate", {"node": "hv2", "last_node": "hv1"})
    _vm(store, "moved-on", "migrate", {"node": "hv2", "last_node": "hv1"})
    moved_on_zxid = _zxid(store, "moved-on", "placement")
    store.write(schema.vm_key("moved-on", "placement"), {"node": "hv3", "last_node": "hv1"})  # migrate again

    _handled(store, requests, "kept", {"node": "hv1", "running": True, "request": {
        "kind": "keep", "reason": "live migration failed", "placement_zxid": _zxid(store, "kept", "placement")}})
    _handled(store, requests, "returned", {"node": "hv2", "running": False, "request": {
        "kind": "return", "to": "hv1", "reason": "migration to hv2 failed",
        "placement_zxid": _zxid(store, "returned", "placement")}})
    _handled(store, requests, "moved-on", {"node": "hv2", "running": False, "request": {
        "kind": "return", "to": "hv1", "reason": "migration to hv2 failed", "placement_zxid": moved_on_zxid}})

    assert store.read(schema.vm_key("kept", "placement")) == {
        "node": "hv1", "last_node": None, "migration_error": "live migration failed"}
    assert store.read(schema.vm_key("kept", "state")) == "start"
    assert store.read(schema.vm_key("returned", "placement"))["node"] == "hv1"
    assert store.read(schema.vm_key("moved-on", "placement")) == {"node": "hv3", "last_node": "hv1"}
    assert store.read(schema.vm_key("moved-on", "state")) == "migrate"


def test_a_deposed_leader_records_nothing(store):
    requests = _requests(store)
    _vm(store, "orphaned", "restart", {"node": "hv1"})
    leader = _leader(store)
    store.zk.delete(leader)
    store.write(schema.vm_key("orphaned", "status"), {"node": "hv1", "running": True, "request": {
        "kind": "settle", "to": "start", "state_zxid": _zxid(store, "orphaned", "state")}})
    assert eventually(lambda: (requests._vms.get("orphaned") or {}).get("status"), 5)

    requests.handle(leader)

    assert store.read(schema.vm_key("orphaned", "state")) == "restart"


def test_a_pass_visits_only_the_records_that_changed_and_an_audit_visits_all(store, mocker):
    requests = _requests(store)
    for index in range(20):
        _vm(store, f"quiet{index:02d}", "start", {"node": "hv1"})
    _vm(store, "restarted", "restart", {"node": "hv1"})
    assert eventually(lambda: len(requests._vms.names()) == 21, 5)
    leader = _leader(store)
    visits = mocker.spy(requests, "_visit")
    requests.handle(leader)
    assert visits.call_count == 21, "a leader's first pass visits every VM"

    visits.reset_mock()
    requests.handle(leader)
    assert visits.call_count == 0, "nothing changed"

    status = {"node": "hv1", "running": True, "request": {
        "kind": "settle", "to": "start", "state_zxid": _zxid(store, "restarted", "state")}}
    store.write(schema.vm_key("restarted", "status"), status)
    assert eventually(lambda: requests._vms.get("restarted").get("status") == status, 5)
    requests.handle(leader)
    assert [call.args[0] for call in visits.call_args_list] == ["restarted"]
    assert store.read(schema.vm_key("restarted", "state")) == "start"

    visits.reset_mock()
    requests._next_audit = 0.0
    requests.handle(leader)
    assert visits.call_count == 21, "the audit visits every VM"
