"""The OVA calls of the provisioner area (`pvc.rpc.areas.provisioner`): upload, list, info, remove.

An upload is a recorded intent. `ova_upload` writes the OVA's record (``state: importing``) before it asks a
storage node for a ticket; the node imports the archive and reports (`pvc.node.appliance_uploads`); the
coordinator then copies the report into the record (``state: ready``) and, in that same transaction, creates
the OVA's system template (its hardware) and its ``ova`` profile, both named after it; the names are checked
free, and then reserved by the importing record, before any byte is sent. Whatever dies midway, a later pass
(`ova_upload_end`, or any list, info, upload or remove touching the OVA) settles it: a finished report
becomes a ready OVA; an import with no live node marker and no finished report, once its ticket can no
longer be used, is cleared with every volume it may have landed. Removal records its intent too
(``state: removing``), so an interrupted removal is finished by the next one; it takes the OVA's template and
profile with its record, in one transaction. A VM made from the OVA names it in its record (``made_from``,
`pvc.rpc.provisioning`), which outlives the creation's task.
"""
import threading
import time
from typing import Any

import Pyro5.server

from pvc import provisioner_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound
from pvc.rpc import provisioning

OVA_IMPORTER = "ova"
ABANDONED_AFTER_S = 120
"""An import neither running nor finished this long after its ticket was issued is over: a ticket lives
seconds (`upload_token_lifetime`), and a running import holds its node's marker."""
_collection_lock = threading.Lock()


@Pyro5.server.expose
class OvaCalls:
    """Mixed into `ProvisionerArea`, which provides ``_context`` (`CoordinatorContext`), ``_storage``
    (`StorageArea`), ``_locked`` (the templates' and profiles' lock) and their collections ``_templates`` and
    ``_profiles``. Exposed here: Pyro5 exposes only the methods a decorated class defines itself."""

    @property
    def _ovas(self) -> WatchedCollection:
        with _collection_lock:
            if getattr(self, "_ova_collection", None) is None:
                collection = WatchedCollection(self._context.store, schema.OVAS, schema.ova, schema.OVA_KEYS)
                collection.start()
                self._ova_collection = collection
            return self._ova_collection

    def ova_upload(self, name: str, pool: str, size_bytes: int, checksum: str,
                   importer: str = OVA_IMPORTER) -> dict[str, Any]:
        """Record the upload of OVA `name` into `pool` and get a single-use token for its stream:
        ``{"address", "token", "tls", "node"}``. Use `pvc.ova_client.upload_ova`, which streams the file and
        calls `ova_upload_end`. `importer` names the appliance importer that reads the archive (the built-in
        ``ova``, or a plugin's: `pvc.hookspecs.pvc_appliance_importers`).

        :raises InvalidInput: a malformed name
        :raises InvalidInput: an empty upload
        :raises InvalidInput: an appliance importer the storage node does not have
        :raises AlreadyExists: an OVA, template or profile of that name exists
        :raises Busy: another change holds the templates' and profiles' lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        path = schema.ova(name)
        schema.check_name("appliance importer", importer)
        schema.ova_volume(name, schema.MAX_OVA_DISKS - 1)
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
            raise InvalidInput(f"invalid upload size {size_bytes!r}: the OVA must be a non-empty file")
        self._storage._require_pool(pool)
        self._settle(name)
        if self._ova_raw(name) is not None:
            raise AlreadyExists(f"an OVA named '{name}' exists already")
        node, agent_uri, _backend = self._storage._storage_node(pool)
        record = {"name": name, "pool": pool, "state": "importing", "node": node, "started": time.time(),
                  "size_bytes": size_bytes}
        with self._locked():
            self._require_appliance_names_free(name)
            try:
                self._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"an OVA named '{name}' exists already") from None
        try:
            ticket = self._context.agents.call(node, agent_uri, "open_appliance_upload", pool, name, size_bytes,
                                               importer, checksum)
        except BaseException:
            self._delete_record(name)
            raise
        self._ovas.refresh(name)
        return {**ticket, "node": node}

    def ova_upload_end(self, name: str) -> dict[str, Any]:
        """Settle the upload once its stream is over, whatever its outcome: the OVA as recorded, or NotFound
        when the import failed (and was cleared).

        :raises NotFound: no OVA of that name
        :raises OperationFailed: the import failed on the node (its reason)
        """
        schema.ova(name)
        self._ovas.refresh(name)
        self._settle(name, stream_over=True)
        return self.ova_info(name)

    def ova_list(self) -> list[dict[str, Any]]:
        """Every OVA: name, state, pool, vCPUs, memory, disk count and size, manifest status.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        views = []
        for name in self._ovas.names():
            self._settle(name)
            raw = self._ova_raw(name)
            if raw is not None:
                views.append(_list_view(raw[OWN_VALUE]))
        return views

    def ova_info(self, name: str) -> dict[str, Any]:
        """One OVA: its record with the hardware its descriptor declares and its volumes.

        :raises NotFound: no OVA of that name
        """
        schema.ova(name)
        self._settle(name)
        raw = self._ova_raw(name)
        if raw is None:
            raise NotFound(f"no OVA named '{name}'")
        return _info_view(raw[OWN_VALUE])

    def ova_remove(self, name: str, force: bool = False) -> None:
        """Remove an OVA, its volumes, its system template and its profile; refused while a VM made from it
        exists, unless `force`, and while another profile uses its template. The volumes' linked clones (the
        disks of VMs made from it, on Ceph) are made independent first (flattened), before the removal is
        recorded, so a removal that fails there leaves the OVA ``ready``, never stuck in ``removing``.

        :raises NotFound: no OVA of that name
        :raises Busy: the OVA is being imported
        :raises Conflict: VMs were made from it (without `force`)
        :raises Busy: another change holds the templates' and profiles' lock
        :raises Unavailable: no storage node answered
        :raises OperationFailed: the storage refused (its reason)
        """
        schema.ova(name)
        self._settle(name)
        raw = self._ova_raw(name)
        if raw is None:
            raise NotFound(f"no OVA named '{name}'")
        record = raw[OWN_VALUE]
        if record.get("state") == "importing":
            raise Busy(f"OVA '{name}' is being imported; remove it once the import is over")
        users = self._vms_made_from(name, record)
        if users and not force:
            raise Conflict(f"OVA '{name}' has VM(s) made from it: {', '.join(users)}; refusing to remove it unless "
                           "forced")
        store = self._context.store
        with self._locked():
            record = store.read(schema.ova(name))
            if record is None:
                raise NotFound(f"no OVA named '{name}'")
            appliance_paths = self._appliance_paths(name, record)
            for volume in record.get("volumes") or []:
                self._detach_clones(volume["pool"], volume["name"])
            if record.get("state") != "removing":
                store.transaction().set(schema.ova(name), {**record, "state": "removing"}).commit()
            for volume in record.get("volumes") or []:
                self._remove_volume(volume["pool"], volume["name"])
            self._delete_record(name, appliance_paths)
            self._templates["system"].refresh(name)
            self._profiles.refresh(name)

    # -- settling -----------------------------------------------------------------------------------------

    def _settle(self, name: str, stream_over: bool = False) -> None:
        """Bring an importing OVA to its outcome when the import is over (see the module's docstring). What
        the node did is read from ZooKeeper itself: the cache may not have seen its last writes yet."""
        raw = self._ova_raw(name)
        if raw is None or raw[OWN_VALUE].get("state") != "importing":
            return
        store = self._context.store
        record = store.read(schema.ova(name))
        if record is None or record.get("state") != "importing" or store.zk.exists(schema.ova_importing(name)):
            return
        report = store.read(schema.ova_import(name)) or {}
        if report.get("state") == "done":
            self._make_ready(name, report)
        elif stream_over or time.time() - record.get("started", 0) > ABANDONED_AFTER_S:
            for reference in report.get("volumes") or []:
                pool, _, volume = reference.partition("/")
                self._remove_volume(pool, volume)
            self._delete_record(name)

    def _make_ready(self, name: str, report: dict[str, Any]) -> None:
        """Copy the node's report into the record and create the OVA's template and profile, in one transaction
        under the provisioner's lock (so no other coordinator settles it at the same time). The names were
        reserved at the upload's beginning; one that exists all the same is left as it is, not overwritten,
        and the record says which of the two the OVA owns (``template``, ``profile``: its name or None)."""
        store = self._context.store
        with self._locked():
            record = store.read(schema.ova(name))
            if record is None or record.get("state") != "importing":
                return
            for volume in report.get("volumes") or []:
                self._storage._volumes.refresh(schema.volume_key(volume["pool"], volume["name"]))
            volumes = [{key: volume.get(key) for key in ("pool", "name", "size_bytes", "source", "image_format")}
                       for volume in report.get("volumes") or []]
            hardware = report.get("hardware") or {}
            transaction = store.transaction()
            template_path, profile_path = schema.template("system", name), schema.profile(name)
            owns_template = not store.zk.exists(template_path)
            if owns_template:
                transaction.create(template_path, provisioner_records.appliance_system_template(hardware))
            owns_profile = not store.zk.exists(profile_path)
            if owns_profile:
                transaction.create(profile_path, provisioner_records.appliance_profile(name))
            ready = {**record, "state": "ready", "volumes": volumes, "hardware": hardware,
                     "manifest": report.get("manifest"), "unverified_files": report.get("unverified_files") or [],
                     "certificate": report.get("certificate"),
                     "skipped_files": report.get("skipped_files") or [], "imported": time.time(),
                     "template": name if owns_template else None, "profile": name if owns_profile else None}
            transaction.set(schema.ova(name), ready).commit()
            self._ovas.refresh(name)
            self._templates["system"].refresh(name)
            self._profiles.refresh(name)

    def _require_appliance_names_free(self, name: str) -> None:
        """Refuse an upload whose template or profile would take a name in use (called under the lock)."""
        store = self._context.store
        for what, path in (("system template", schema.template("system", name)), ("profile", schema.profile(name))):
            if store.zk.exists(path):
                raise AlreadyExists(f"a {what} named '{name}' exists already, and an OVA's template and profile "
                                    "take its name: remove it or upload the OVA under another name")

    def _appliance_paths(self, name: str, record: dict[str, Any]) -> list[str]:
        """The OVA's profile (while it still names the OVA) and template (while no other profile uses it) that
        go with it; called under the lock, refusing a template another profile uses."""
        store = self._context.store
        paths = []
        profile = record.get("profile")
        if profile and (store.read(schema.profile(profile)) or {}).get("ova") == name:
            paths.append(schema.profile(profile))
        template = record.get("template")
        if template and store.zk.exists(schema.template("system", template)):
            users = [user for user in provisioner_records.users_of_template(self._stored_profiles(), "system",
                                                                            template)
                     if schema.profile(user) not in paths]
            if users:
                raise Conflict(f"OVA '{name}''s system template '{template}' is used by profile(s) "
                               f"{', '.join(users)}; change or remove them first")
            paths.append(schema.template("system", template))
        return paths

    def _remove_volume(self, pool: str, volume: str) -> None:
        """Remove a volume of the OVA and its records, whichever exist (a crash may have landed it without
        them). The storage area's own helpers, not its remote methods: each of those answers once per request
        (`pvc.rpc.retries`), and one OVA call removes several volumes."""
        storage, store = self._storage, self._context.store
        with storage._pool_lock(pool):
            node, agent_uri, _backend = storage._storage_node(pool)
            storage._agent(node, agent_uri, "volume_remove", pool, volume)
            paths = [path for path in (schema.volume_snapshots(pool, volume), schema.volume(pool, volume))
                     if store.zk.exists(path) is not None]
            if paths:
                store.transaction().delete_tree(paths).commit()
            storage._volumes.refresh(schema.volume_key(pool, volume))

    def _detach_clones(self, pool: str, volume: str) -> None:
        storage = self._storage
        with storage._pool_lock(pool):
            node, agent_uri, _backend = storage._storage_node(pool)
            storage._agent(node, agent_uri, "volume_detach_clones", pool, volume)

    def _delete_record(self, name: str, also: list[str] | None = None) -> None:
        """The OVA's record and its children, whichever exist, with the paths `also` (in one transaction)."""
        store = self._context.store
        children = [path for path in (schema.ova_importing(name), schema.ova_import(name))
                    if store.zk.exists(path) is not None]
        store.transaction().delete_tree([*children, schema.ova(name), *(also or [])]).commit()
        self._ovas.refresh(name)

    # -- helpers ------------------------------------------------------------------------------------------

    def _ova_raw(self, name: str) -> dict[str, Any] | None:
        raw = self._ovas.get(name)
        return raw if raw and raw.get(OWN_VALUE) else None

    def _vms_made_from(self, name: str, record: dict[str, Any]) -> list[str]:
        """The VMs using the OVA's volumes, those whose record says they were made from it, and those a creation
        in progress is making from it. The tasks are read first: a creation names the OVA in its VM's record
        before its task ends, and the cache is brought up to date after, so no VM falls between the two."""
        sources = {(volume["pool"], volume["name"]) for volume in record.get("volumes") or []}
        users = {user for pool, volume in sources for user in self._context.volume_users(pool, volume)}
        for task in provisioning.active_tasks(self._context):
            plan = task.get("plan") or {}
            planned = plan.get("volumes") or []
            if plan.get("ova") == name or any((volume.get("pool"), volume.get("source")) in sources
                                              for volume in planned):
                users.add(task["vm"])
        self._context.cache.catch_up()
        for vm, raw in self._context.cache.vms.snapshot().items():
            if ((raw.get(OWN_VALUE) or {}).get(provisioning.MADE_FROM) or {}).get("ova") == name:
                users.add(vm)
        return sorted(users)


def _list_view(record: dict[str, Any]) -> dict[str, Any]:
    hardware = record.get("hardware") or {}
    volumes = record.get("volumes") or []
    return {"name": record["name"], "state": record.get("state"), "pool": record.get("pool"),
            "vcpus": hardware.get("vcpus"), "memory_mib": (hardware.get("memory_bytes") or 0) >> 20 or None,
            "disks": len(volumes), "size_bytes": sum(volume.get("size_bytes") or 0 for volume in volumes),
            "firmware": hardware.get("firmware"), "manifest": record.get("manifest")}


def _info_view(record: dict[str, Any]) -> dict[str, Any]:
    hardware = record.get("hardware") or {}
    return {**_list_view(record), "node": record.get("node"), "os_type": hardware.get("os_type"),
            "os_description": hardware.get("os_description"), "memory_bytes": hardware.get("memory_bytes"),
            "volumes": record.get("volumes") or [], "hardware_disks": hardware.get("disks") or [],
            "nics": hardware.get("nics") or [], "networks": hardware.get("networks") or [],
            "unverified_files": record.get("unverified_files") or [],
            "certificate": record.get("certificate"), "skipped_files": record.get("skipped_files") or [],
            "template": record.get("template"), "profile": record.get("profile")}
