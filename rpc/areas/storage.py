"""Remote object `storage`: pools, volumes, snapshots, and the start of image uploads.

Each change takes the pool's lock, checks everything a user can get wrong against ZooKeeper (names, sizes,
existence, VMs using the volume) before anything is touched, has a node that serves storage act, and only
then records the result; if recording fails, the node's action is undone. So a refused or failed request
leaves neither a half-made volume nor a record without storage. Reads come from watched collections.
"""
import random
import time
from contextlib import contextmanager
from typing import Any, Iterator

import Pyro5.server

from pvc import schema, sizes, storage_records
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound, Unavailable
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.retries import retry_safe
from pvc.storage_client import STORAGE_CALL_TIMEOUT_S

LOCK_TIMEOUT_S = 30
STORAGE_ACTION_TIMEOUT_S = STORAGE_CALL_TIMEOUT_S - 30
"""A node's storage action may take this long: inside the client's own wait, so the client hears the outcome."""


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"pool_list", "status", "volume_list", "volume_info", "snapshot_list"})
class StorageArea:
    def __init__(self, context: CoordinatorContext):
        self._context = context
        self._pools = WatchedCollection(context.store, schema.POOLS, schema.pool)
        self._volumes = WatchedCollection(context.store, schema.VOLUMES, schema.volume_by_key, schema.VOLUME_KEYS)
        self._pools.start()
        self._volumes.start()

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The volume as it now is, for a call whose coordinator died before answering; None for a pool
        call, or once the volume is gone."""
        if not method.startswith(("volume_", "snapshot_")):
            return None
        names = ("pool", "name", "new_name") if method in ("volume_rename", "volume_clone") else \
            ("pool", "name") if method.startswith("volume_") else ("pool", "volume")
        arguments = {**dict(zip(names, args)), **kwargs}
        try:
            volume = arguments["volume"] if method.startswith("snapshot_") else \
                arguments.get("new_name") or arguments["name"]
            return self.volume_info(arguments["pool"], volume)
        except NotFound:
            return None

    # -- pools --------------------------------------------------------------------------------------------

    def pool_list(self) -> list[dict[str, Any]]:
        """Every pool with its backend, options, volume count and provisioned bytes."""
        volumes = self.volume_list()
        return [storage_records.pool_view(name, raw.get(OWN_VALUE) or {},
                                          [volume for volume in volumes if volume["pool"] == name])
                for name, raw in sorted(self._pools.snapshot().items()) if raw.get(OWN_VALUE)]

    def pool_add(self, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a pool on the cluster's storage; `options` go to the backend (ceph: ``pg_num``)."""
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
        """Remove a pool; one holding volumes only with `force`, which removes its volumes too."""
        self._require_pool(name)
        with self._pool_lock(name):
            volumes = [volume["name"] for volume in self.volume_list(name)]
            if volumes and not force:
                raise Conflict(f"storage pool '{name}' holds {len(volumes)} volume(s) ({', '.join(volumes)}); "
                               "remove them first or force it")
            node, agent_uri, _backend = self._storage_node(name)
            for volume in volumes:
                self._agent(node, agent_uri, "volume_remove", name, volume)
                self._delete_volume_records(name, volume)
            self._agent(node, agent_uri, "pool_remove", name)
            self._context.store.transaction().delete(schema.pool(name)).commit()
            self._pools.refresh(name)

    def status(self) -> list[dict[str, Any]]:
        """Per pool: capacity, used and free bytes as the storage reports them, and bytes provisioned."""
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

    def volume_list(self, pool: str | None = None) -> list[dict[str, Any]]:
        """Every volume, or those of one pool, sorted by pool and name."""
        if pool is not None:
            self._require_pool(pool)
        views = []
        for key, raw in sorted(self._volumes.snapshot().items()):
            pool_name, volume_name = schema.split_volume_key(key)
            if raw.get(OWN_VALUE) and (pool is None or pool_name == pool):
                views.append(storage_records.volume_view(
                    key, raw, self._context.volume_users(pool_name, volume_name)))
        return views

    def volume_info(self, pool: str, name: str) -> dict[str, Any]:
        key = schema.volume_key(pool, name)
        raw = self._require_volume(pool, name)
        return storage_records.volume_view(key, raw, self._context.volume_users(pool, name))

    def volume_add(self, pool: str, name: str, size: int | str) -> dict[str, Any]:
        """A new empty volume; `size` in bytes or with a binary unit (``10G``)."""
        schema.volume_key(pool, name)
        size_bytes = sizes.parse_size(size)
        self._require_pool(pool)
        with self._pool_lock(pool):
            self._require_absent(pool, name)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_create", pool, name, size_bytes)
            self._record_or_undo(lambda: storage_records.create_volume_records(
                self._context.store, pool, name, size_bytes),
                lambda: self._agent(node, agent_uri, "volume_remove", pool, name))
            self._volumes.refresh(schema.volume_key(pool, name))
        return self.volume_info(pool, name)

    def volume_remove(self, pool: str, name: str, force: bool = False) -> None:
        """Remove a volume and its snapshots; one that a VM uses only with `force`."""
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            self._require_volume(pool, name)
            self._refuse_if_used(pool, name, "remove", force)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_remove", pool, name)
            self._delete_volume_records(pool, name)

    def volume_resize(self, pool: str, name: str, size: int | str, allow_shrink: bool = False) -> dict[str, Any]:
        """Grow a volume (or, with `allow_shrink`, shrink it, losing what lies beyond the new end)."""
        size_bytes = sizes.parse_size(size)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            record = self._require_volume(pool, name)[OWN_VALUE]
            if size_bytes < record["size_bytes"] and not allow_shrink:
                raise Conflict(f"{sizes.human(size_bytes)} would shrink volume '{pool}/{name}' "
                               f"({sizes.human(record['size_bytes'])}) and lose data; allow shrinking to do it")
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_resize", pool, name, size_bytes)
            self._context.store.transaction().set(schema.volume(pool, name),
                                                  {**record, "size_bytes": size_bytes}).commit()
            self._volumes.refresh(schema.volume_key(pool, name))
        return self.volume_info(pool, name)

    def volume_rename(self, pool: str, name: str, new_name: str) -> dict[str, Any]:
        """Rename a volume within its pool, with its snapshots; not while a VM uses it."""
        schema.volume_key(pool, new_name)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, name)
            self._require_absent(pool, new_name)
            self._refuse_if_used(pool, name, "rename", force=False)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_rename", pool, name, new_name)
            self._record_or_undo(
                lambda: self._context.store.transaction()
                .create(schema.volume(pool, new_name), {**raw[OWN_VALUE], "name": new_name})
                .create(schema.volume_snapshots(pool, new_name), raw.get("snapshots") or {})
                .delete(schema.volume_snapshots(pool, name))
                .delete(schema.volume(pool, name))
                .commit(),
                lambda: self._agent(node, agent_uri, "volume_rename", pool, new_name, name))
            self._volumes.refresh(schema.volume_key(pool, name))
            self._volumes.refresh(schema.volume_key(pool, new_name))
        return self.volume_info(pool, new_name)

    def volume_clone(self, pool: str, name: str, new_name: str, snapshot: str | None = None) -> dict[str, Any]:
        """A new independent volume with the data of `name` now, or of its `snapshot`."""
        schema.volume_key(pool, new_name)
        self._require_volume(pool, name)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, name)
            if snapshot is not None:
                self._require_snapshot(pool, name, raw, snapshot)
            self._require_absent(pool, new_name)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "volume_copy", pool, name, new_name, snapshot)
            size_bytes = self._agent(node, agent_uri, "volume_size", pool, new_name)
            self._record_or_undo(lambda: storage_records.create_volume_records(
                self._context.store, pool, new_name, size_bytes),
                lambda: self._agent(node, agent_uri, "volume_remove", pool, new_name))
            self._volumes.refresh(schema.volume_key(pool, new_name))
        return self.volume_info(pool, new_name)

    # -- snapshots ----------------------------------------------------------------------------------------

    def snapshot_list(self, pool: str, volume: str) -> list[dict[str, Any]]:
        return storage_records.snapshot_views(pool, volume, self._require_volume(pool, volume))

    def snapshot_add(self, pool: str, volume: str, name: str) -> dict[str, Any]:
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
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            self._require_snapshot(pool, volume, raw, name)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_remove", pool, volume, name)
            snapshots = {key: value for key, value in (raw.get("snapshots") or {}).items() if key != name}
            self._context.store.transaction().set(schema.volume_snapshots(pool, volume), snapshots).commit()
            self._volumes.refresh(schema.volume_key(pool, volume))

    def snapshot_rollback(self, pool: str, volume: str, name: str) -> dict[str, Any]:
        """Return a volume to a snapshot; refused while a VM uses the volume."""
        self._require_volume(pool, volume)
        with self._pool_lock(pool):
            raw = self._require_volume(pool, volume)
            self._require_snapshot(pool, volume, raw, name)
            self._refuse_if_used(pool, volume, "roll back", force=False)
            node, agent_uri, _backend = self._storage_node(pool)
            self._agent(node, agent_uri, "snapshot_rollback", pool, volume, name)
            size_bytes = self._agent(node, agent_uri, "volume_size", pool, volume)
            self._context.store.transaction().set(schema.volume(pool, volume),
                                                  {**raw[OWN_VALUE], "size_bytes": size_bytes}).commit()
            self._volumes.refresh(schema.volume_key(pool, volume))
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
        does all of this."""
        schema.volume_key(pool, volume)
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
            raise InvalidInput(f"invalid upload size {size_bytes!r}: the image must be a non-empty file")
        self._require_pool(pool)
        if self._volume_raw(pool, volume) is not None:
            self._refuse_if_used(pool, volume, "overwrite", force)
        node, agent_uri, _backend = self._storage_node(pool)
        ticket = self._agent(node, agent_uri, "open_upload", pool, volume, size_bytes, image_format,
                             checksum, force)
        return {**ticket, "node": node}

    def upload_end(self, pool: str, volume: str) -> dict[str, Any]:
        """The uploaded volume as recorded; makes the node's record visible to this caller's next read."""
        self._volumes.refresh(schema.volume_key(pool, volume))
        return self.volume_info(pool, volume)

    # -- helpers ------------------------------------------------------------------------------------------

    @contextmanager
    def _pool_lock(self, pool: str) -> Iterator[None]:
        lock = self._context.store.lock(schema.storage_lock(pool), self._context.name)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise Busy(f"storage pool '{pool}' is locked by another change; try again")
        try:
            yield
        finally:
            lock.release()

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

    def _refuse_if_used(self, pool: str, name: str, action: str, force: bool) -> None:
        users = self._context.volume_users(pool, name)
        if users and not force:
            raise Conflict(f"volume '{pool}/{name}' is used by VM(s) {', '.join(users)}; refusing to {action} "
                           "it" + ("" if action in ("rename", "roll back") else " unless forced"))

    def _storage_node(self, pool: str | None) -> tuple[str, str, str]:
        """A running node serving the pool's backend (any backend for a new pool): name, agent URI, backend."""
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
        return random.choice(candidates)

    def _agent(self, node: str, agent_uri: str, method: str, *args: Any) -> Any:
        """Storage actions copy whole volumes (clone, snapshot, rollback): they get minutes, not the default
        seconds, so that a slow copy is not reported failed (and left unrecorded) while the node finishes it."""
        return self._context.agents.call(node, agent_uri, method, *args, timeout=STORAGE_ACTION_TIMEOUT_S)

    def _delete_volume_records(self, pool: str, name: str) -> None:
        self._context.store.transaction() \
            .delete(schema.volume_snapshots(pool, name)) \
            .delete(schema.volume(pool, name)) \
            .commit()
        self._volumes.refresh(schema.volume_key(pool, name))

    @staticmethod
    def _record_or_undo(record, undo) -> None:
        """Record an action already taken; if recording fails, undo the action so that nothing is left."""
        try:
            record()
        except BaseException:
            undo()
            raise
