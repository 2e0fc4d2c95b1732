"""Remote object `storage`: pools, volumes, snapshots, and the start of image uploads.

Each change takes the pool's lock, checks everything a user can get wrong against ZooKeeper (names, sizes,
existence, VMs using the volume) before anything is touched, records its intent, has a node that serves
storage act, and settles the record (`pvc.rpc.storage_intents`). So a refused request leaves nothing, a
failed one is undone, and one cut off by a crash is finished or undone by the next change in its pool, by the
leader, or by `check`. Reads come from watched collections.
"""
import logging
import random
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import Pyro5.server

from pvc import schema, sizes, storage_records
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound, PVCError, Unavailable
from pvc.rpc import storage_intents
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.retries import retry_safe
from pvc.storage_client import STORAGE_CALL_TIMEOUT_S

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 30
SET_SIZE_ATTEMPTS = 3
STORAGE_ACTION_TIMEOUT_S = STORAGE_CALL_TIMEOUT_S - 30
"""A node's storage action may take this long: inside the client's own wait, so the client hears the outcome."""


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"pool_list", "status", "volume_list", "volume_info", "snapshot_list"})
class StorageArea:
    """``client.storage``: pools, volumes and snapshots on the cluster's storage backend, and image uploads
    (`pvc.storage_client.StorageClient.upload` streams the bytes)."""

    def __init__(self, context: CoordinatorContext):
        self._context = context
        self._pools = WatchedCollection(context.store, schema.POOLS, schema.pool)
        self._volumes = WatchedCollection(context.store, schema.VOLUMES, schema.volume_by_key, schema.VOLUME_KEYS)
        self._pools.start()
        self._volumes.start()

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The volume as it now is, for a call whose coordinator died before answering; None for a pool
        call, or once the volume is gone. Read under the pool's lock, which first finishes or undoes what the
        dead coordinator left unsettled: read before, a clone's or create's intent answered as the volume, which
        the next change then undid."""
        if not method.startswith(("volume_", "snapshot_")):
            return None
        names = ("pool", "name", "new_name") if method in ("volume_rename", "volume_clone") else \
            ("pool", "name") if method.startswith("volume_") else ("pool", "volume")
        arguments = {**dict(zip(names, args)), **kwargs}
        try:
            volume = arguments["volume"] if method.startswith("snapshot_") else \
                arguments.get("new_name") or arguments["name"]
            with self._pool_lock(arguments["pool"]):
                return self.volume_info(arguments["pool"], volume)
        except NotFound:
            return None

    def _backend_health(self) -> dict[str, dict[str, Any]]:
        """Per storage backend in use, its own judgement asked of one running node serving it (for /metrics)."""
        judged = {}
        for backend in sorted({raw[OWN_VALUE]["backend"] for raw in self._pools.snapshot().values()
                               if raw.get(OWN_VALUE)}):
            node, agent_uri, _backend = self._storage_node_for_backend(backend)
            judged[backend] = self._context.agents.call(node, agent_uri, "health", timeout=15.0)
        return judged

    def _storage_node_for_backend(self, backend: str) -> tuple[str, str, str]:
        for name, raw in sorted(self._context.cache.nodes.snapshot().items()):
            facts = raw.get(OWN_VALUE) or {}
            if raw.get("daemon_state") == "run" and facts.get("storage_agent_uri") \
                    and facts.get("storage_backend") == backend:
                return name, facts["storage_agent_uri"], backend
        raise Unavailable(f"no running node with the '{backend}' storage backend")

    def _pool_figures(self) -> dict[str, dict[str, int]]:
        """Per pool, from the watched records only: volumes, snapshots and bytes provisioned (for /metrics)."""
        figures = {name: {"volumes": 0, "snapshots": 0, "provisioned_bytes": 0}
                   for name, raw in self._pools.snapshot().items() if raw.get(OWN_VALUE)}
        for key, raw in self._volumes.snapshot().items():
            pool_name, _volume = schema.split_volume_key(key)
            record = raw.get(OWN_VALUE)
            if record and pool_name in figures:
                figures[pool_name]["volumes"] += 1
                figures[pool_name]["snapshots"] += len(raw.get("snapshots") or {})
                figures[pool_name]["provisioned_bytes"] += record.get("size_bytes") or 0
        return figures

    # -- pools --------------------------------------------------------------------------------------------

    def pool_list(self) -> list[dict[str, Any]]:
        """Every pool with its backend, options, volume count and provisioned bytes.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        volumes = self.volume_list()
        return [storage_records.pool_view(name, raw.get(OWN_VALUE) or {},
                                          [volume for volume in volumes if volume["pool"] == name])
                for name, raw in sorted(self._pools.snapshot().items()) if raw.get(OWN_VALUE)]

    def pool_add(self, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a pool on the cluster's storage; `options` go to the backend (ceph: ``pg_num``).

        :raises InvalidInput: a malformed name
        :raises InvalidInput: bad options
        :raises AlreadyExists: the pool exists
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.check_name("pool", name)
        if options is not None and not isinstance(options, dict):
            raise InvalidInput("pool options must be a mapping of option name to value")
        with self._pool_lock(name):
            if self._pool_record(name) is not None:
                raise AlreadyExists(f"storage pool '{name}' exists already")
            node, agent_uri, backend = self._storage_node(None)
            applied = self._agent(node, agent_uri, "pool_create", name, options or {})
            try:
                self._context.store.transaction().create(schema.pool(name),
                                                         {"backend": backend, "options": applied}).commit()
            except BaseException:
                self._agent(node, agent_uri, "pool_remove", name)
                raise
            self._pools.refresh(name)
        return self._pool_view(name)

    def pool_remove(self, name: str, force: bool = False) -> None:
        """Remove a pool; one holding volumes only with `force`, which removes its volumes too.

        :raises NotFound: no such pool
        :raises Conflict: the pool holds volumes (without `force`)
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        self._require_pool(name)
        with self._pool_lock(name):
            volumes = [volume["name"] for volume in self.volume_list(name)]
            if volumes and not force:
                raise Conflict(f"storage pool '{name}' holds {len(volumes)} volume(s) ({', '.join(volumes)}); "
                               "remove them first or force it")
            node, agent_uri, _backend = self._storage_node(name)
            for volume in volumes:
                self._agent(node, agent_uri, "volume_remove", name, volume)
                storage_intents.forget(self._context.store, name, volume)
                self._volumes.refresh(schema.volume_key(name, volume))
            self._agent(node, agent_uri, "pool_remove", name)
            self._context.store.transaction().delete(schema.pool(name)).commit()
            self._pools.refresh(name)

    def status(self) -> list[dict[str, Any]]:
        """Per pool: capacity, used and free bytes as the storage reports them, and bytes provisioned.

        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        rows = []
        for pool in self.pool_list():
            node, agent_uri, _backend = self._storage_node(pool["name"])
            usage = self._agent(node, agent_uri, "pool_usage", pool["name"])
            rows.append({"name": pool["name"], "backend": pool["backend"], "volumes": pool["volumes"],
                         "provisioned_bytes": pool["provisioned_bytes"], "used_bytes": usage["used_bytes"],
                         "free_bytes": usage["free_bytes"],
                         "capacity_bytes": usage["used_bytes"] + usage["free_bytes"]})
        return rows

    # -- volumes ------------------------------------------------------------------------------------------

    def check(self, pool: str | None = None) -> list[str]:
        """Finish or undo every volume change that was cut off (its coordinator died, or its node call
        failed and could not be undone), in `pool` or in every pool; returns what was done.

        :raises NotFound: no such pool
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        pools = [pool] if pool is not None else [view["name"] for view in self.pool_list()]
        done = []
        for name in pools:
            self._require_pool(name)
            with self._pool_lock(name) as resolved:
                done += resolved
        return done

    def volume_list(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Every volume, or those of one pool, sorted by pool and name.

        :raises NotFound: no such pool
        """
        if pool is not None:
            self._require_pool(pool)
        views = []
        self._context.cache.catch_up()
        for key, raw in sorted(self._volumes.snapshot().items()):
            pool_name, volume_name = schema.split_volume_key(key)
            if raw.get(OWN_VALUE) and (pool is None or pool_name == pool):
                views.append(storage_records.volume_view(
                    key, raw, self._context.volume_users(pool_name, volume_name, caught_up=True)))
        return views

    def volume_info(self, pool: str, name: str) -> dict[str, Any]:
        """The volume as recorded: size, the VMs that use it, its snapshots, and a ``pending`` change a later pass
        settles.

        :raises NotFound: no such pool or volume
        """
        key = schema.volume_key(pool, name)
        raw = self._require_volume(pool, name)
        return storage_records.volume_view(key, raw, self._context.volume_users(pool, name))

    def volume_add(self, pool: str, name: str, size: int | str) -> dict[str, Any]:
        """A new empty volume; `size` in bytes or with a binary unit (``10G``).

        :raises InvalidInput: a malformed name
        :raises InvalidInput: a malformed size
        :raises NotFound: no such pool
        :raises AlreadyExists: the volume exists
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.volume_key(pool, name)
        size_bytes = sizes.parse_size(size)
        self._require_pool(pool)
        with self._pool_lock(pool):
            self._require_absent(pool, name)
            agent = self._pool_agent(pool)
            self._make(pool, name, "create", size_bytes, lambda: agent("volume_create", pool, name, size_bytes),
                       agent)
        return self.volume_info(pool, name)

    def volume_remove(self, pool: str, name: str, force: bool = False) -> None:
        """Remove a volume and its snapshots; one that a VM uses only with `force`.

        :raises NotFound: no such pool or volume
        :raises Conflict: a VM uses the volume (without `force`)
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            record = self._require_volume(pool, name)[OWN_VALUE]
            self._refuse_if_mirror(pool, name, "remove")
            self._refuse_if_used(pool, name, "remove", force)
            self._remove_locked(record)

    def _set_size(self, pool: str, name: str, size_bytes: int) -> None:
        """Write the volume's size into its record as the record is now (the pool's lock held): a record read
        before a storage action and written back whole had dropped a removal mark that a VM's removal, which
        does not take the lock, wrote meanwhile."""
        path = schema.volume(pool, name)
        try:
            for _attempt in range(SET_SIZE_ATTEMPTS):
                data, stat = self._context.store.zk.get(path)
                try:
                    self._context.store.transaction().set(path, {**schema.decode(data), "size_bytes": size_bytes},
                                                          version=stat.version).commit()
                    return
                except Conflict:
                    continue
            raise Busy(f"volume '{pool}/{name}' kept changing while its size was recorded; try again")
        finally:
            self._volumes.refresh(schema.volume_key(pool, name))

    def _remove_locked(self, record: dict[str, Any]) -> None:
        """Remove the volume `record` names, its pool's lock held: its intent first, then the storage's action."""
        pool, name = record["pool"], record["name"]
        agent = self._pool_agent(pool)
        store = self._context.store
        storage_intents.begin_remove(store, record, self._context.name)
        try:
            agent("volume_remove", pool, name)
            storage_intents.forget(store, pool, name)
        finally:
            self._volumes.refresh(schema.volume_key(pool, name))

    def volume_resize(self, pool: str, name: str, size: int | str, allow_shrink: bool = False) -> dict[str, Any]:
        """Grow a volume (or, with `allow_shrink`, shrink it, losing what lies beyond the new end).

        :raises NotFound: no such pool or volume
        :raises InvalidInput: a malformed size
        :raises Conflict: the size would shrink it (without `allow_shrink`)
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        size_bytes = sizes.parse_size(size)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            record = self._require_volume(pool, name)[OWN_VALUE]
            self._refuse_if_mirror(pool, name, "resize")
            if size_bytes < record["size_bytes"] and not allow_shrink:
                raise Conflict(f"{sizes.human(size_bytes)} would shrink volume '{pool}/{name}' "
                               f"({sizes.human(record['size_bytes'])}) and lose data; allow shrinking to do it")
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_resize", pool, name, size_bytes)
            self._set_size(pool, name, size_bytes)
        return self.volume_info(pool, name)

    def volume_rename(self, pool: str, name: str, new_name: str) -> dict[str, Any]:
        """Rename a volume within its pool, with its snapshots; not while a VM uses it.

        :raises NotFound: no such pool or volume
        :raises InvalidInput: a malformed name
        :raises AlreadyExists: the new name is taken
        :raises Conflict: a VM uses the volume
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.volume_key(pool, new_name)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            record = self._require_volume(pool, name)[OWN_VALUE]
            self._require_absent(pool, new_name)
            self._refuse_if_used(pool, name, "rename", force=False)
            agent = self._pool_agent(pool)
            store = self._context.store
            storage_intents.begin_rename(store, record, new_name, self._context.name)
            try:
                agent("volume_rename", pool, name, new_name)
            except BaseException:
                self._resolve_after_failure(pool, name, agent)
                raise
            finally:
                self._volumes.refresh(schema.volume_key(pool, name))
                self._volumes.refresh(schema.volume_key(pool, new_name))
            storage_intents.settle_rename(store, pool, name, new_name)
            self._volumes.refresh(schema.volume_key(pool, name))
            self._volumes.refresh(schema.volume_key(pool, new_name))
        return self.volume_info(pool, new_name)

    def volume_clone(self, pool: str, name: str, new_name: str, snapshot: str | None = None,
                     linked: bool = False) -> dict[str, Any]:
        """A new independent volume with the data of `name` now, or of its `snapshot`; `linked`, a clone
        sharing `name`'s data until written where the storage can (the provisioner's clones of an OVA's
        volumes: `name` is then removed only after `volume_detach_clones`).

        :raises NotFound: no such pool or volume
        :raises NotFound: no such snapshot
        :raises InvalidInput: a malformed name
        :raises AlreadyExists: the new name is taken
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        if linked and snapshot is not None:
            raise InvalidInput("a linked clone is made from the volume itself, not from a snapshot")
        schema.volume_key(pool, new_name)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, name)
            if snapshot is not None:
                self._require_snapshot(pool, name, raw, snapshot)
            self._require_absent(pool, new_name)
            agent = self._pool_agent(pool)
            self._make(pool, new_name, "clone", raw[OWN_VALUE]["size_bytes"],
                       lambda: agent("volume_clone_linked", pool, name, new_name) if linked
                       else agent("volume_copy", pool, name, new_name, snapshot), agent)
        return self.volume_info(pool, new_name)

    # -- snapshots ----------------------------------------------------------------------------------------

    def snapshot_list(self, pool: str | None = None, volume: str | None = None) -> list[dict[str, Any]]:
        """The snapshots of one volume; without `volume`, of every volume of `pool`, or of every pool.

        :raises NotFound: no such pool or volume
        :raises InvalidInput: a volume without its pool
        """
        if volume is not None:
            if pool is None:
                raise InvalidInput(f"volume '{volume}' is named within its pool: give the pool too")
            return storage_records.snapshot_views(pool, volume, self._require_volume(pool, volume))
        if pool is not None:
            self._require_pool(pool)
        views = []
        for key, raw in sorted(self._volumes.snapshot().items()):
            pool_name, volume_name = schema.split_volume_key(key)
            if raw.get(OWN_VALUE) and pool in (None, pool_name):
                views += storage_records.snapshot_views(pool_name, volume_name, raw)
        return views

    def snapshot_add(self, pool: str, volume: str, name: str) -> dict[str, Any]:
        """Record the volume's current data as snapshot `name`; returns the snapshot.

        :raises NotFound: no such pool or volume
        :raises InvalidInput: a malformed name
        :raises AlreadyExists: the volume has a snapshot of that name
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.check_name("snapshot", name)
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            snapshots = dict(raw.get("snapshots") or {})
            if name in snapshots:
                raise AlreadyExists(f"volume '{pool}/{volume}' has a snapshot named '{name}' already")
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_create", pool, volume, name)
            snapshots[name] = {"created": time.time(), "size_bytes": raw[OWN_VALUE]["size_bytes"]}
            self._record_or_undo(
                lambda: self._context.store.transaction().set(schema.volume_snapshots(pool, volume),
                                                              snapshots).commit(),
                lambda: self._agent(node, agent_uri, "snapshot_remove", pool, volume, name))
            self._volumes.refresh(schema.volume_key(pool, volume))
        return next(view for view in self.snapshot_list(pool, volume) if view["name"] == name)

    def snapshot_remove(self, pool: str, volume: str, name: str) -> None:
        """Remove a snapshot; one a VM snapshot made goes only with it (`pvc vm snapshot remove`).

        :raises NotFound: no such pool or volume
        :raises NotFound: no such snapshot
        :raises Conflict: a VM snapshot made it (remove that instead)
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            self._require_snapshot(pool, volume, raw, name)
            self._refuse_if_part_of_vm_snapshot(pool, volume, raw, name, "remove")
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_remove", pool, volume, name)
            snapshots = {key: value for key, value in (raw.get("snapshots") or {}).items() if key != name}
            self._context.store.transaction().set(schema.volume_snapshots(pool, volume), snapshots).commit()
            self._volumes.refresh(schema.volume_key(pool, volume))

    def snapshot_rename(self, pool: str, volume: str, name: str, new_name: str) -> dict[str, Any]:
        """Rename a snapshot. The storage renames first, then the record follows; a rename cut short between
        the two is finished by asking again (the backend takes a rename done already as done).

        :raises NotFound: no such pool or volume
        :raises NotFound: no such snapshot
        :raises InvalidInput: a malformed name
        :raises AlreadyExists: the new name is taken
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.check_name("snapshot", new_name)
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            self._require_snapshot(pool, volume, raw, name)
            self._refuse_if_part_of_vm_snapshot(pool, volume, raw, name, "rename")
            snapshots = dict(raw.get("snapshots") or {})
            if new_name in snapshots:
                raise AlreadyExists(f"volume '{pool}/{volume}' has a snapshot named '{new_name}' already")
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_rename", pool, volume, name, new_name)
            snapshots[new_name] = snapshots.pop(name)
            self._record_or_undo(
                lambda: self._context.store.transaction().set(schema.volume_snapshots(pool, volume),
                                                              snapshots).commit(),
                lambda: self._agent(node, agent_uri, "snapshot_rename", pool, volume, new_name, name))
            self._volumes.refresh(schema.volume_key(pool, volume))
        return next(view for view in self.snapshot_list(pool, volume) if view["name"] == new_name)

    def snapshot_rollback(self, pool: str, volume: str, name: str) -> dict[str, Any]:
        """Return a volume to a snapshot; refused while a VM uses the volume.

        :raises NotFound: no such pool or volume
        :raises NotFound: no such snapshot
        :raises Conflict: a VM uses the volume
        :raises Busy: another change holds the pool's lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            self._require_snapshot(pool, volume, raw, name)
            self._refuse_if_used(pool, volume, "roll back", force=False)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_rollback", pool, volume, name)
            self._set_size(pool, volume, self._agent(node, agent_uri, "volume_size", pool, volume))
        return self.volume_info(pool, volume)

    # -- uploads ------------------------------------------------------------------------------------------

    def upload_begin(self, pool: str, volume: str, size_bytes: int, checksum: str, image_format: str = "auto",
                     force: bool = False) -> dict[str, Any]:
        """Check an upload and get a single-use token for it: ``{"address": HOST:PORT, "token", "node"}``.

        The token is bound to `checksum` (`pvc.bulk`), declared here, on the authenticated call, so that whoever
        sees the token cannot spend it on other content. The client then streams exactly `size_bytes` with
        that checksum to that address; the node imports the image, creating the volume or replacing an
        existing one's data (refused while a VM uses it, unless `force`: checked here, and again on the node
        just before the data changes), and records it. Use `pvc.storage_client.StorageClient.upload`, which
        does all of this.

        :raises InvalidInput: an empty upload or an unknown format
        :raises NotFound: no such pool
        :raises Conflict: a VM uses the volume (without `force`)
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.volume_key(pool, volume)
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
            raise InvalidInput(f"invalid upload size {size_bytes!r}: the image must be a non-empty file")
        self._require_pool(pool)
        if self._volume_raw(pool, volume) is not None:
            self._refuse_if_mirror(pool, volume, "overwrite")
            self._refuse_if_used(pool, volume, "overwrite", force)
        node, agent_uri, _backend = self._storage_node(pool)
        ticket = self._agent(node, agent_uri, "open_upload", pool, volume, size_bytes, image_format,
                             checksum, force)
        return {**ticket, "node": node}

    def upload_end(self, pool: str, volume: str) -> dict[str, Any]:
        """The uploaded volume as recorded; makes the node's record visible to this caller's next read.

        :raises NotFound: no such pool or volume
        :raises OperationFailed: the upload failed or was refused on the node (its reason)
        """
        self._volumes.refresh(schema.volume_key(pool, volume))
        return self.volume_info(pool, volume)

    # -- helpers ------------------------------------------------------------------------------------------

    @contextmanager
    def _pool_lock(self, pool: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[list[str]]:
        """Hold the pool's lock. Every change holds it while it runs, so an intent found under it belongs to
        a change cut off: it is resolved first, and what was done is yielded."""
        lock = self._context.store.lock(schema.storage_lock(pool), self._context.name)
        if not lock.acquire(timeout=timeout):
            raise Busy(f"storage pool '{pool}' is locked by another change; try again")
        try:
            yield self._resolve_intents(pool, lambda: self._zookeeper_now(lock))
        finally:
            lock.release()

    def _intents(self, pool: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        found = {}
        for key, raw in self._volumes.snapshot().items():
            pending = storage_intents.intent(raw)
            pool_name, volume_name = schema.split_volume_key(key)
            if pending is not None and pool in (None, pool_name):
                found[(pool_name, volume_name)] = pending
        return found

    def _zookeeper_now(self, lock: Any) -> int:
        """ZooKeeper's time now, in ms: when the held lock's own znode was made (asked only for a timed intent,
        not on every lock)."""
        held = self._context.store.zk.exists(f"{lock.path}/{lock.node}")
        return held.ctime if held else int(time.time() * 1000)

    def _resolve_intents(self, pool: str, now_ms: Callable[[], int]) -> list[str]:
        intents = self._intents(pool)
        if not intents:
            return self._remove_waiting(pool)
        try:
            agent = self._pool_agent(pool)
        except Unavailable as error:
            log.warning("storage pool %s: its unfinished changes wait for a node: %s", pool, error)
            return []
        done = []
        for (pool_name, name), pending in sorted(intents.items()):
            self._volumes.refresh(schema.volume_key(pool_name, name))
            current = storage_intents.intent(self._volumes.get(schema.volume_key(pool_name, name)))
            if current is None:
                continue
            created = self._context.store.zk.exists(schema.volume(pool_name, name)) if "for_s" in current else None
            now = now_ms() if created is not None else 0
            if created is not None and storage_intents.acting(current, created.ctime, now):
                log.info("storage pool %s: %s waits %.0f s more for its node to give up", pool_name, name,
                         (created.ctime + current["for_s"] * 1000 - now) / 1000)
                continue
            users = self._context.volume_users(pool_name, name) if "removal_of" in current else []
            if users:
                storage_intents.settle(self._context.store, pool_name, name)
                log.warning("storage check: %s/%s is kept: VM(s) %s use it since the removal of %s marked it",
                            pool_name, name, ", ".join(users), current["removal_of"])
                continue
            try:
                outcome = storage_intents.resolve(self._context.store, agent, pool_name, name, current)
            except PVCError as error:
                # One volume the storage cannot act on (an image still open somewhere) must not hold up every
                # other change in its pool: it is tried again by the next holder of the lock.
                log.warning("storage check: %s/%s stays unresolved: %s", pool_name, name, error)
                continue
            if outcome:
                log.warning("storage check: %s", outcome)
                done.append(outcome)
            for each in (name, current.get("to"), current.get("from")):
                if each:
                    self._volumes.refresh(schema.volume_key(pool_name, each))
        return done + self._remove_waiting(pool)

    def resolve_orphaned_intents(self) -> None:
        """For the leader: resolve the intents recorded by coordinators that are gone or whose node's time to act
        has passed, and the volumes a VM's removal marked (`pvc.rpc.removal`), pool by pool, without waiting for
        a lock another change holds.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        zk = self._context.store.zk
        pools = {pool for (pool, _name), pending in self._intents().items()
                 if "removal_of" in pending or storage_intents.expired(pending)
                 or zk.exists(schema.live_coordinator(pending.get("coordinator", "?"))) is None} \
            | {pool for pool, _name in self._waiting_removals()}
        for pool in sorted(pools):
            try:
                with self._pool_lock(pool, timeout=0.1):
                    pass
            except Exception as error:
                log.info("storage pool %s: its unfinished changes are resolved later: %s", pool, error)

    def _removed_with(self, vm: str, volumes: list[str]) -> dict[str, Any]:
        """Remove the volumes that the removal of `vm` marked, by taking their pools' locks (which resolves the
        marks); which of `volumes` are gone, and which are kept and why."""
        for pool in sorted({volume.partition("/")[0] for volume in volumes}):
            try:
                with self._pool_lock(pool):
                    pass
            except PVCError as error:
                log.info("the volumes of removed VM %s in pool %s go later: %s", vm, pool, error)
        removed, kept = [], []
        for volume in volumes:
            pool, _, name = volume.partition("/")
            self._volumes.refresh(schema.volume_key(pool, name))
            raw = self._volumes.get(schema.volume_key(pool, name))
            if raw is None:
                removed.append(volume)
                continue
            record, users = raw.get(OWN_VALUE) or {}, self._context.volume_users(pool, name)
            marked = (storage_intents.intent(raw) or {}).get("removal_of") == vm or record.get("remove_after") == vm
            kept.append({"volume": volume, "why": f"used by VM(s) {', '.join(users)}" if users
                         else "marked for removal: it goes within seconds once a storage node answers and no "
                         "other change holds it" if marked else "not marked for removal (a vm undefine withdrew "
                         "its removal)"})
        return {"volumes_removed": removed, "volumes_kept": kept}

    def _waiting_removals(self, pool: str | None = None) -> dict[tuple[str, str], str]:
        """The volumes a removed VM's removal left to go once another change's intent is over, with the VM."""
        found = {}
        for key, raw in self._volumes.snapshot().items():
            vm = (raw.get(OWN_VALUE) or {}).get("remove_after")
            pool_name, volume_name = schema.split_volume_key(key)
            if vm and pool in (None, pool_name):
                found[(pool_name, volume_name)] = vm
        return found

    def _remove_waiting(self, pool: str) -> list[str]:
        """Remove the volumes of `_waiting_removals` whose other change is over (the pool's lock held, after its
        intents were resolved): one a VM has come to use meanwhile is kept, its mark dropped."""
        done = []
        for (pool_name, name), vm in sorted(self._waiting_removals(pool).items()):
            self._volumes.refresh(schema.volume_key(pool_name, name))
            record = (self._volumes.get(schema.volume_key(pool_name, name)) or {}).get(OWN_VALUE)
            if not record or not record.get("remove_after") or record.get("intent"):
                continue
            users = self._context.volume_users(pool_name, name)
            try:
                if users:
                    self._context.store.transaction().set(
                        schema.volume(pool_name, name),
                        {key: value for key, value in record.items() if key != "remove_after"}).commit()
                    done.append(f"{pool_name}/{name}: kept, VM(s) {', '.join(users)} use it")
                else:
                    self._remove_locked(record)
                    done.append(f"{pool_name}/{name}: removed with VM {vm}")
            except PVCError as error:
                log.warning("storage check: %s/%s stays: %s", pool_name, name, error)
            finally:
                self._volumes.refresh(schema.volume_key(pool_name, name))
        for outcome in done:
            log.warning("storage check: %s", outcome)
        return done

    def _pool_record(self, name: str) -> dict[str, Any] | None:
        raw = self._pools.get(name)
        return raw.get(OWN_VALUE) if raw else None

    def _pool_view(self, name: str) -> dict[str, Any]:
        return next(pool for pool in self.pool_list() if pool["name"] == name)

    def _require_pool(self, name: str) -> dict[str, Any]:
        schema.check_name("pool", name)
        record = self._pool_record(name)
        if record is None:
            raise NotFound(f"no storage pool named '{name}'")
        return record

    def _volume_raw(self, pool: str, name: str) -> dict[str, Any] | None:
        raw = self._volumes.get(schema.volume_key(pool, name))
        return raw if raw and raw.get(OWN_VALUE) else None

    def _require_volume(self, pool: str, name: str) -> dict[str, Any]:
        schema.volume_key(pool, name)
        self._require_pool(pool)
        raw = self._volume_raw(pool, name)
        if raw is None:
            raise NotFound(f"no volume '{name}' in storage pool '{pool}'")
        return raw

    def _require_absent(self, pool: str, name: str) -> None:
        if self._volume_raw(pool, name) is not None:
            raise AlreadyExists(f"volume '{pool}/{name}' exists already")

    @staticmethod
    def _require_snapshot(pool: str, volume: str, raw: dict[str, Any], name: str) -> None:
        schema.check_name("snapshot", name)
        if name not in (raw.get("snapshots") or {}):
            raise NotFound(f"volume '{pool}/{volume}' has no snapshot named '{name}'")

    @staticmethod
    def _refuse_if_part_of_vm_snapshot(pool: str, volume: str, raw: dict[str, Any], name: str, action: str) -> None:
        owner = ((raw.get("snapshots") or {}).get(name) or {}).get("vm_snapshot")
        if owner:
            raise Conflict(f"snapshot '{pool}/{volume}@{name}' is part of VM snapshot '{owner}'; refusing to "
                           f"{action} it alone (pvc vm snapshot remove removes the whole VM snapshot)")

    # -- for whole-VM snapshots (`pvc.rpc.vm_snapshots`) --------------------------------------------------

    @contextmanager
    def _pools_locked(self, pools: list[str], timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the locks of several pools (for `pvc.rpc.vm_snapshots` and `pvc.rpc.vm_backups`), always taken in
        name order so that two holders never deadlock."""
        with ExitStack() as stack:
            for pool in sorted(set(pools)):
                self._require_pool(pool)
                stack.enter_context(self._pool_lock(pool, timeout))
            yield

    def _refresh_volume(self, pool: str, volume: str) -> None:
        """Read the volume's record into this coordinator's cache again, after a write of its own."""
        self._volumes.refresh(schema.volume_key(pool, volume))

    def _refuse_if_used(self, pool: str, name: str, action: str, force: bool) -> None:
        users = self._context.volume_users(pool, name)
        if users and not force:
            raise Conflict(f"volume '{pool}/{name}' is used by VM(s) {', '.join(users)}; refusing to {action} "
                           "it" + ("" if action in ("rename", "roll back") else " unless forced"))

    def _refuse_if_mirror(self, pool: str, name: str, action: str) -> None:
        """A mirror's volumes change only by its sends: the next send builds on the snapshot it sent last, so a
        volume changed, resized or removed under it would leave a mirror matching no snapshot of its source."""
        users = self._context.volume_users(pool, name)
        vms = self._context.cache.vms.snapshot()
        mirrors = [vm for vm in users if (vms.get(vm) or {}).get("state") == schema.MIRROR_STATE]
        if mirrors:
            raise Conflict(f"volume '{pool}/{name}' belongs to mirror VM {', '.join(mirrors)}, which only its "
                           f"sends change; refusing to {action} it, even forced (pvc vm mirror promote "
                           f"{mirrors[0]} first, or pvc vm remove it)")

    def _storage_node(self, pool: str | None) -> tuple[str, str, str]:
        """A running node serving the pool's backend (any backend for a new pool): name, agent URI, backend."""
        return self._storage_nodes(pool)[0]

    def _storage_nodes(self, pool: str | None) -> list[tuple[str, str, str]]:
        """Every running node serving the pool's backend, in random order (the first spreads the work; the
        others are for work that only some node can do, such as an export beside one a node keeps locally)."""
        backend = self._require_pool(pool)["backend"] if pool is not None else None
        candidates = []
        for name, raw in self._context.cache.nodes.snapshot().items():
            facts = raw.get(OWN_VALUE) or {}
            if raw.get("daemon_state") == "run" and facts.get("storage_agent_uri") \
                    and backend in (None, facts.get("storage_backend")):
                candidates.append((name, facts["storage_agent_uri"], facts["storage_backend"]))
        if not candidates:
            wanted = f" with the '{backend}' storage backend" if backend else " that serves storage"
            raise Unavailable(f"no running node{wanted}")
        random.shuffle(candidates)
        return candidates

    def _taken(self, node: str, agent_uri: str, volume: str) -> bool:
        """Whether ``POOL/NAME`` is recorded or present in the storage: a volume only the storage holds (made by
        hand, or left by a crash) must never be taken for one's own and removed when an action is undone. Asked
        under the pool's lock, so that nothing takes the name between the question and the intent."""
        pool, name = volume.split("/", 1)
        return self._context.store.read(schema.volume(pool, name)) is not None or \
            self._agent(node, agent_uri, "volume_size", pool, name) is not None

    def _agent(self, node: str, agent_uri: str, method: str, *args: Any) -> Any:
        """Storage actions copy whole volumes (clone, snapshot, rollback): they get minutes, not the default
        seconds, so that a slow copy is not reported failed (and left unrecorded) while the node finishes it."""
        return self._context.agents.call(node, agent_uri, method, *args, timeout=STORAGE_ACTION_TIMEOUT_S)

    def _make(self, pool: str, name: str, action: str, size_bytes: int, act: Callable[[], Any],
              agent: storage_intents.Agent) -> None:
        """Record a new volume's intent, have the storage make it, and settle the record with the size the
        storage reports; a failed action is undone at once (or, failing that, by a later resolution). A name the
        storage refuses as taken (an image made by hand, or left by a crash, with no record) is not this
        change's: only its intent goes. The undo of that refusal had removed the image, and its data."""
        store = self._context.store
        record = storage_records.volume_record(pool, name, size_bytes)
        storage_intents.begin_new(store, record, action, self._context.name)
        try:
            act()
        except AlreadyExists:
            storage_intents.forget(store, pool, name)
            raise AlreadyExists(f"volume '{pool}/{name}' exists already in the storage, though not in `pvc storage "
                                "volume list`; nothing was made (remove or rename it there first)") from None
        except BaseException:
            self._resolve_after_failure(pool, name, agent)
            raise
        finally:
            self._volumes.refresh(schema.volume_key(pool, name))
        actual = agent("volume_size", pool, name)
        store.transaction().set(schema.volume(pool, name), {**record, "size_bytes": actual or size_bytes}).commit()
        self._volumes.refresh(schema.volume_key(pool, name))

    def _resolve_after_failure(self, pool: str, name: str, agent: storage_intents.Agent) -> None:
        """A storage action failed: undo what it may have done now, or leave its intent for a later pass."""
        store = self._context.store
        try:
            pending = storage_intents.intent({OWN_VALUE: store.read(schema.volume(pool, name))})
            if pending is not None:
                log.info("%s", storage_intents.resolve(store, agent, pool, name, pending, finish_creation=False))
        except Exception as error:
            log.warning("volume %s/%s: its failed change stays recorded for `pvc storage check`: %s", pool, name,
                        error)

    def _pool_agent(self, pool: str) -> storage_intents.Agent:
        node, agent_uri, _backend = self._storage_node(pool)
        return lambda method, *args: self._agent(node, agent_uri, method, *args)

    @staticmethod
    def _record_or_undo(record, undo) -> None:
        """Record an action already taken; if recording fails, undo the action so that nothing is left."""
        try:
            record()
        except BaseException:
            undo()
            raise
