"""The per-node index of placements: which VMs each node's placement names (``/pvc/node_vms/NODE/VM``).

A node daemon watches only the VMs its index names (and those it still holds), instead of every VM of the
cluster. The index is only as good as its writes: every entry is created or deleted in the very transaction
that writes the VM's placement, which checks the placement's version, so an entry never exists without its
placement (nor the reverse). `place` adds those operations to a placement transaction.

A cluster made before the index has placements and no entries: its index root does not say ``complete``
(`Store` creates the root complete only when there is no VM yet), and nodes then watch every VM as before.
`build` fills it once from the placements, each VM in a transaction of its own that rewrites the placement
it read (same value, version-checked), so any placement writer that read before it loses and tries again, and
marks it complete; several coordinators may run it at once. An entry whose VM has no record (left by a
writer that did not know the index) is left alone: a node reading it finds no VM and watches nothing.
"""
import logging

from kazoo.exceptions import NoNodeError

from pvc import schema
from pvc.errors import PVCError
from pvc.store import Store, Transaction

log = logging.getLogger(__name__)

BUILD_ATTEMPTS = 5
"""How often `build` tries one VM again when a placement write races it."""


def complete(store: Store) -> bool:
    """Whether the index names every VM's placement node (it may then be relied on)."""
    try:
        data, _stat = store.zk.get(schema.NODE_VMS)
    except NoNodeError:
        return False
    return bool((schema.decode(data) or {}).get("complete"))


def place(store: Store, transaction: Transaction, name: str, old_node: str | None, new_node: str | None) -> None:
    """Add to `transaction` (which writes or checks VM `name`'s placement at the version read) the index
    operations for a placement going from `old_node` to `new_node`: the old entry deleted, the new one made.

    Existence is read now (both entries and the new node's folder at once); an entry only changes in a
    transaction that changes the placement's version too, so if it changed since, the placement's version
    check fails the transaction."""
    zk = store.zk
    leaving = zk.exists_async(schema.node_vm(old_node, name)) if old_node and old_node != new_node else None
    arriving = zk.exists_async(schema.node_vm(new_node, name)) if new_node else None
    parent = zk.exists_async(schema.node_vms(new_node)) if new_node else None
    if leaving is not None and leaving.get() is not None:
        transaction.delete(schema.node_vm(old_node, name))
    if arriving is not None and arriving.get() is None:
        if parent.get() is None:
            zk.ensure_path(schema.node_vms(new_node))
        transaction.create(schema.node_vm(new_node, name), None)


def forget(store: Store, transaction: Transaction, name: str) -> None:
    """Add to `transaction` (which deletes VM `name`'s record) the deletion of its index entry, checking the
    placement it was read from."""
    try:
        data, stat = store.zk.get(schema.vm_key(name, "placement"))
    except NoNodeError:
        return
    node = (schema.decode(data) or {}).get("node")
    transaction.check(schema.vm_key(name, "placement"), stat.version)
    if node and store.zk.exists(schema.node_vm(node, name)) is not None:
        transaction.delete(schema.node_vm(node, name))


def build(store: Store) -> int:
    """Make the index name every VM's placement node and nothing else, then mark it complete; returns how many
    entries it changed. Does nothing once the index is complete."""
    zk = store.zk
    try:
        data, root = zk.get(schema.NODE_VMS)
    except NoNodeError:
        zk.ensure_path(schema.NODE_VMS)
        data, root = zk.get(schema.NODE_VMS)
    if (schema.decode(data) or {}).get("complete"):
        return 0
    entries = {(node, vm) for node in store.children(schema.NODE_VMS)
               for vm in store.children(schema.node_vms(node))}
    changed = 0
    for name in store.children(schema.VMS):
        changed += _build_one(store, name, entries)
    try:
        store.transaction().set(schema.NODE_VMS, {"complete": True}, version=root.version).commit()
    except PVCError as error:
        log.info("the node index was marked complete by another coordinator meanwhile (%s)", error)
    log.info("node index built from the placements: %d entries changed", changed)
    return changed


def _build_one(store: Store, name: str, entries: set[tuple[str, str]]) -> int:
    """Make VM `name`'s entries match its placement, in one transaction that rewrites the placement read."""
    path = schema.vm_key(name, "placement")
    for _attempt in range(BUILD_ATTEMPTS):
        try:
            data, stat = store.zk.get(path)
        except NoNodeError:
            return 0
        node = (schema.decode(data) or {}).get("node")
        stray = sorted(other for other, vm in entries if vm == name and other != node)
        missing = bool(node) and (node, name) not in entries and \
            store.zk.exists(schema.node_vm(node, name)) is None
        if not stray and not missing:
            entries.discard((node, name))
            return 0
        transaction = store.transaction().set(path, schema.decode(data), version=stat.version)
        for other in stray:
            transaction.delete(schema.node_vm(other, name))
        if missing:
            store.zk.ensure_path(schema.node_vms(node))
            transaction.create(schema.node_vm(node, name), None)
        try:
            transaction.commit()
        except PVCError:
            entries.clear()
            entries.update((other, vm) for other in store.children(schema.NODE_VMS)
                           for vm in store.children(schema.node_vms(other)))
            continue
        entries.difference_update({(other, name) for other in stray} | {(node, name)})
        return len(stray) + int(missing)
    log.warning("%s: its placement kept changing while the node index was built; left as it is", name)
    return 0
