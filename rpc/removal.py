"""Forgetting a removed VM, only once no host can still hold it.

`vm remove` (and `vm rename`, for the old name) first records the VM's state as ``remove``; the VM's node
stops and undefines its domain and reports so (status ``removed``, with a ``forget`` request naming the
zxid of the ``remove`` it acted on). Only then is the record deleted, with its UUID (when the UUID still names
this VM: after a rename it names the new one): by the coordinator that issued the removal when the node
answers at once, or by the leader's next pass when the node was down and reports once it is back.

A node that cannot report must not hold a removal forever: when every node that may hold the VM (its
placement node, and the node its status says runs it) is fenced (confirmed off) or no longer exists, the
record goes too. A fenced host boots empty, and its node daemon undefines any domain carrying PVC's metadata
whose record is gone. `vm remove --force` deletes the record at once, relying on that same rule.

A removal that takes the VM's volumes with it names them in the VM's record (``remove_volumes``) when it is
recorded. The transaction that deletes the record marks each of them for removal (a storage intent, ``remove``,
naming the VM in ``removal_of``; ``remove_after`` while another change's intent holds it), unless another VM
uses it. The next holder of the volume's pool lock removes the marked volumes, a held one once its change is
over: the coordinator that forgot the VM takes the lock at once, the leader's storage check within seconds. A
crash anywhere leaves the VM or the marks, never volumes that nothing
will remove: the volumes had been removed by the client after the VM was gone, and a client or coordinator that
died between the two left them for good.
"""
import logging
from typing import Callable, Sequence

from kazoo.exceptions import NoNodeError

from pvc import node_index, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import PVCError
from pvc.store import Store

log = logging.getLogger(__name__)

REMOVE = "remove"
"""The desired state of a VM whose removal is recorded and not yet confirmed by its node."""


Users = Callable[[str], list[str]]
"""The VMs whose definition uses volume ``POOL/VOLUME``."""


def volume_users(vms: WatchedCollection, volume: str) -> list[str]:
    """The VMs in `vms` whose definition uses ``POOL/VOLUME`` `volume` (their record's ``volumes`` list)."""
    return sorted(name for name, raw in vms.snapshot().items()
                  if volume in ((raw.get(OWN_VALUE) or {}).get("volumes") or []))


def finish(store: Store, name: str, users: Users, leader_node: str | None = None) -> bool:
    """Delete the record of VM `name` if it is marked removed and its node confirmed (or cannot hold it any
    more), marking the volumes it names for removal; True when no record remains."""
    zk = store.zk
    try:
        state, state_stat = _read(store, schema.vm_key(name, "state"))
        if state != REMOVE:
            return zk.exists(schema.vm(name)) is None
        spec, _ = _read(store, schema.vm(name))
        placement = _read(store, schema.vm_key(name, "placement"))[0] or {}
    except NoNodeError:
        return zk.exists(schema.vm(name)) is None
    try:
        status = _read(store, schema.vm_key(name, "status"))[0] or {}
    except NoNodeError:
        status = {}
    node = placement.get("node")
    confirmed = status.get("removed") is True and status.get("node") == node and \
        (status.get("request") or {}).get("state_zxid") == state_stat.mzxid
    if not confirmed:
        holders = {node} | ({status.get("node")} if status.get("running") is not False else set())
        holders.discard(None)
        if not holders or not all(_cannot_hold(store, holder) for holder in holders):
            return False
        log.warning("%s: its node(s) %s are fenced or gone; forgetting it without their report", name,
                    ", ".join(sorted(holders)))
    try:
        delete(store, name, (spec or {}).get("uuid"), leader_node, state_version=state_stat.version,
               volumes=(spec or {}).get("remove_volumes") or [], users=users)
    except PVCError as error:
        log.info("forgetting %s lost a race (%s)", name, error)
    gone = zk.exists(schema.vm(name)) is None
    if gone:
        log.info("%s removed from the cluster", name)
    return gone


def delete(store: Store, name: str, uuid: str | None, leader_node: str | None = None,
           state_version: int = -1, volumes: Sequence[str] = (), users: Users = lambda _volume: []) -> None:
    """Delete the VM's record (children first), its node index entry and its UUID's entry while it names this
    VM, and mark `volumes` for removal (those no other VM uses), in one transaction (checking the state's
    version, when given, and the placement's)."""
    zk = store.zk
    transaction = store.transaction(leader_node)
    if state_version >= 0:
        transaction.check(schema.vm_key(name, "state"), state_version)
    for volume in volumes:
        _mark_for_removal(store, transaction, name, volume, users)
    node_index.forget(store, transaction, name)
    transaction.delete_tree([f"{schema.vm(name)}/{child}" for child in store.children(schema.vm(name))]
                            + [schema.vm(name)])
    if uuid:
        try:
            owner, uuid_stat = zk.get(schema.vm_uuid(uuid))
        except NoNodeError:
            owner = None
        if schema.decode(owner) == name:
            transaction.delete(schema.vm_uuid(uuid), version=uuid_stat.version)
    transaction.commit()


def _mark_for_removal(store: Store, transaction, vm: str, volume: str, users: Users) -> None:
    """Mark `volume` in `transaction`: with a ``remove`` intent, or, while another change's intent holds it,
    with ``remove_after`` (the storage check removes it once that change is over). One another VM uses is
    kept."""
    pool, _, name = volume.partition("/")
    try:
        data, stat = store.zk.get(schema.volume(pool, name))
    except NoNodeError:
        return
    record = schema.decode(data)
    others = [user for user in users(volume) if user != vm]
    if others:
        log.warning("%s: volume %s is kept: VM(s) %s use it", vm, volume, ", ".join(others))
        return
    held = record.get("intent")
    if held:
        log.info("%s: volume %s goes once the change holding it (%s) is over", vm, volume, held.get("action"))
    transaction.set(schema.volume(pool, name), {**record, "remove_after": vm} if held else
                    {**record, "intent": {"action": "remove", "removal_of": vm}}, version=stat.version)


def _cannot_hold(store: Store, node: str) -> bool:
    """Whether `node` is confirmed off (fenced) or is no longer in the cluster."""
    if store.zk.exists(schema.node(node)) is None:
        return True
    try:
        return _read(store, schema.node_key(node, "daemon_state"))[0] == "fenced"
    except NoNodeError:
        return False


def _read(store: Store, path: str):
    data, stat = store.zk.get(path)
    return schema.decode(data), stat
