"""Volume changes record their intent before the storage acts, so no crash leaves storage and records apart.

A create, clone, rename or removal first writes the volume's record with an ``intent``
(``{"action", "coordinator"}``, and ``"to"`` for a rename, whose new name is held by a record of its own
marked ``rename_target``), then has a node act, then settles the records in one transaction. A coordinator
that dies in between, or a node call that fails and cannot be undone, leaves the intent; `resolve` later
finishes or undoes it from what the storage itself holds:

- ``create``: an image that exists is whole (creating one is a single backend step): the record is settled;
  no image, the record goes.
- ``clone``: a copy cut off midway may be partial: the image (if any) and the record go.
- ``remove``: the image (if still there) and the record go.
- ``rename``: the image under its new name only: the records move; under its old name: the new name's
  record goes and the old one is settled.

The leader resolves the intents of coordinators that are gone; `pvc storage check` resolves every intent
not held by a change in progress (it takes the pool's lock, which every change holds while it runs).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.store import Store

log = logging.getLogger(__name__)

Agent = Callable[..., Any]
"""A storage action on a node serving the pool: ``agent(method, *args)``."""


def intent(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    return ((raw or {}).get(OWN_VALUE) or {}).get("intent")


def settled(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "intent"}


def begin_new(store: Store, record: dict[str, Any], action: str, coordinator: str, for_s: float | None = None
              ) -> None:
    """Record a volume about to be made (``create`` or ``clone``), with its empty snapshot list; a node that may
    still make it for `for_s` seconds (a restore's next volume) keeps it from being resolved before then."""
    pool, name = record["pool"], record["name"]
    timed = {"for_s": for_s, "until": time.time() + for_s} if for_s is not None else {}
    pending = {"action": action, "coordinator": coordinator, **timed}
    store.transaction() \
        .create(schema.volume(pool, name), {**record, "intent": pending}) \
        .create(schema.volume_snapshots(pool, name), {}) \
        .commit()


def acting(pending: dict[str, Any], created_ms: int, now_ms: int) -> bool:
    """Whether a node may still act on this intent (resolving it now could be undone by the node's next step):
    `for_s` after its record was created. Both times are ZooKeeper's (the record's ctime, and that of the lock
    the resolver holds), since the hosts' clocks may differ by more than the node's margin."""
    return "for_s" in pending and created_ms + pending["for_s"] * 1000 > now_ms


def expired(pending: dict[str, Any]) -> bool:
    """Whether the time a node had to act on this intent is past by this host's clock (``until``): which pools
    the leader visits, whether or not the coordinator that recorded it lives; `acting` decides there."""
    return "until" in pending and pending["until"] <= time.time()


def begin_remove(store: Store, record: dict[str, Any], coordinator: str) -> None:
    store.transaction().set(schema.volume(record["pool"], record["name"]),
                            {**record, "intent": {"action": "remove", "coordinator": coordinator}}).commit()


def begin_rename(store: Store, record: dict[str, Any], new_name: str, coordinator: str) -> None:
    """Mark the volume as being renamed and hold its new name, in one transaction."""
    pool, name = record["pool"], record["name"]
    store.transaction() \
        .set(schema.volume(pool, name), {**record, "intent": {"action": "rename", "to": new_name,
                                                             "coordinator": coordinator}}) \
        .create(schema.volume(pool, new_name), {**settled(record), "name": new_name,
                                                "intent": {"action": "rename_target", "from": name,
                                                           "coordinator": coordinator}}) \
        .create(schema.volume_snapshots(pool, new_name), {}) \
        .commit()


def settle(store: Store, pool: str, name: str) -> None:
    record = store.read(schema.volume(pool, name))
    store.transaction().set(schema.volume(pool, name), settled(record)).commit()


def forget(store: Store, pool: str, name: str) -> None:
    store.transaction() \
        .delete(schema.volume_snapshots(pool, name)) \
        .delete(schema.volume(pool, name)) \
        .commit()


def settle_rename(store: Store, pool: str, name: str, new_name: str) -> None:
    """The storage has renamed: the new name's record takes the volume's record and snapshots."""
    record = store.read(schema.volume(pool, name))
    snapshots = store.read(schema.volume_snapshots(pool, name)) or {}
    store.transaction() \
        .set(schema.volume(pool, new_name), {**settled(record), "name": new_name}) \
        .set(schema.volume_snapshots(pool, new_name), snapshots) \
        .delete(schema.volume_snapshots(pool, name)) \
        .delete(schema.volume(pool, name)) \
        .commit()


def undo_rename(store: Store, pool: str, name: str, new_name: str) -> None:
    """The storage still has the old name: release the new one and settle the old."""
    record = store.read(schema.volume(pool, name))
    transaction = store.transaction()
    held = store.read(schema.volume(pool, new_name)) or {}
    if held.get("intent", {}).get("from") == name:
        transaction.delete(schema.volume_snapshots(pool, new_name)).delete(schema.volume(pool, new_name))
    transaction.set(schema.volume(pool, name), settled(record)).commit()


def resolve(store: Store, agent: Agent, pool: str, name: str, pending: dict[str, Any],
            finish_creation: bool = True) -> str:
    """Finish or undo one volume's recorded intent from what the storage holds (the pool's lock held);
    returns what was done, in words. Right after its own action failed, a caller undoes a creation rather
    than finishing it (`finish_creation`): it is about to report the failure."""
    action = pending["action"]
    exists = agent("volume_size", pool, name) is not None
    if action == "create" and exists and finish_creation:
        settle(store, pool, name)
        return f"{pool}/{name}: its creation was finished"
    if action in ("create", "clone", "remove"):
        if exists:
            agent("volume_remove", pool, name)
        forget(store, pool, name)
        return f"{pool}/{name}: " + ("removed" if action == "remove" else f"its unfinished {action} was undone")
    if action == "rename":
        new_name = pending["to"]
        if not exists and agent("volume_size", pool, new_name) is not None:
            settle_rename(store, pool, name, new_name)
            return f"{pool}/{name}: its rename to {new_name} was finished"
        undo_rename(store, pool, name, new_name)
        return f"{pool}/{name}: its rename to {new_name} was undone"
    if action == "rename_target" and store.read(schema.volume(pool, pending["from"])) is None:
        settle(store, pool, name)
        return f"{pool}/{name}: its rename was finished"
    return ""
