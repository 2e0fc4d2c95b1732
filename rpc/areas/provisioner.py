"""Remote object `provisioner`: templates, profiles, and creating VMs from profiles (and, through `OvaCalls`,
importing OVA appliances, each of which brings a system template and an ``ova`` profile named after it).

Templates and profiles change under one ZooKeeper lock, so a template cannot go while a profile starts to use
it; each is checked whole before it is written (`pvc.provisioner_records`), so a refused request writes
nothing. A creation is planned and checked here, then recorded as a task the leader carries out
(`pvc.rpc.provisioning`).
"""
from contextlib import contextmanager
from typing import Any, Iterator

import Pyro5.server

from pvc import placement, provisioner_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound, Unavailable
from pvc.rpc import provisioning
from pvc.rpc.areas.ova import OvaCalls
from pvc.rpc.areas.scripts import ScriptCalls
from pvc.rpc.areas.storage import StorageArea
from pvc.rpc.areas.userdata import UserdataCalls
from pvc.rpc.areas.vms import VMsArea
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.provisioning_plan import Planner
from pvc.rpc.retries import retry_safe

LOCK_TIMEOUT_S = 30


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"template_list", "template_info", "profile_list", "profile_info", "creation", "ova_list",
                   "ova_info", "userdata_list", "userdata_info", "script_list", "script_info"})
class ProvisionerArea(OvaCalls, UserdataCalls, ScriptCalls):
    """``client.provisioner``: templates and profiles, VM creation from a profile, OVA appliances (the methods
    of `OvaCalls`), named user-data documents (`UserdataCalls`) and install scripts (`ScriptCalls`)."""

    def __init__(self, context: CoordinatorContext, storage: StorageArea, vms: VMsArea):
        self._context = context
        self._storage = storage
        self._vms = vms
        self._planner = Planner(context)
        self._templates = {kind: WatchedCollection(context.store, schema.templates(kind),
                                                   lambda name, kind=kind: schema.template(kind, name))
                           for kind in schema.TEMPLATE_KINDS}
        self._profiles = WatchedCollection(context.store, schema.PROFILES, schema.profile)
        for collection in (*self._templates.values(), self._profiles):
            collection.start()

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a call whose coordinator died before answering did, read now: the template, profile, document,
        script or VM as it is (None for a removal, or once the thing is gone). An OVA upload cannot be
        answered again: its stream's single-use ticket went with that coordinator's answer."""
        first = {**dict(zip(("first", "second"), args)), **kwargs}
        try:
            if method.startswith("template_disk"):
                return self.template_info("storage", first.get("name", first.get("first")))
            if method.endswith("remove"):
                return None
            if method.startswith("template"):
                return self.template_info(first.get("kind", first.get("first")),
                                          first.get("name", first.get("second")))
            if method.startswith(("profile", "userdata", "script")):
                return getattr(self, f"{method.split('_')[0]}_info")(first.get("name", first.get("first")))
            if method == "create":
                return self._vms.info(first.get("vm", first.get("first")))
            if method == "ova_upload_end":
                return self.ova_info(first.get("name", first.get("first")))
        except NotFound:
            return None
        raise Unavailable(f"the coordinator that carried out {method} left before answering; check its effect "
                          "(an OVA upload begun then is settled by `pvc provisioner ova remove`)")

    # -- templates ------------------------------------------------------------------------------------

    def template_list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every template (or those of one kind: system, storage, network), sorted by kind and name.

        :raises InvalidInput: an unknown `kind`
        """
        kinds = [kind] if kind is not None else list(schema.TEMPLATE_KINDS)
        profiles = self._profile_records()
        views = []
        for each in kinds:
            schema.templates(each)
            for name, raw in sorted(self._templates[each].snapshot().items()):
                if raw.get(OWN_VALUE):
                    views.append(provisioner_records.template_view(
                        each, name, raw[OWN_VALUE], provisioner_records.users_of_template(profiles, each, name)))
        return views

    def template_info(self, kind: str, name: str) -> dict[str, Any]:
        """The template of `kind` (system, storage or network) and the profiles that use it.

        :raises NotFound: no such template
        :raises InvalidInput: an unknown `kind`
        """
        record = self._require_template(kind, name)
        users = provisioner_records.users_of_template(self._profile_records(), kind, name)
        return provisioner_records.template_view(kind, name, record, users)

    def template_add(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A new template of `kind` (system, storage or network); see `pvc.provisioner_records` for the fields.

        :raises InvalidInput: an unknown `kind`, a malformed name or field
        :raises AlreadyExists: the template exists, or an OVA being imported will take the name
        :raises Busy: another change holds the templates' and profiles' lock
        """
        path = schema.template(kind, name)
        record = self._checked_template(kind, spec)
        with self._locked():
            if self._template_record(kind, name) is not None:
                raise AlreadyExists(f"a {kind} template named '{name}' exists already")
            if kind == "system":
                self._refuse_name_of_importing_ova(f"a {kind} template", name)
            try:
                self._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"a {kind} template named '{name}' exists already") from None
            self._templates[kind].refresh(name)
        return self.template_info(kind, name)

    def template_modify(self, kind: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the fields named in `changes` (a storage template's ``disks`` or a network template's ``nics``
        are replaced whole); the template is checked whole again.

        :raises NotFound: no such template
        :raises InvalidInput: a bad field
        :raises Busy: another change holds the templates' and profiles' lock
        """
        schema.template(kind, name)
        if not isinstance(changes, dict):
            raise InvalidInput(f"template changes are a mapping of fields, not {type(changes).__name__}")
        with self._locked():
            record = self._require_template(kind, name)
            updated = self._checked_template(kind, {**record, **changes})
            self._context.store.transaction().set(schema.template(kind, name), updated).commit()
            self._templates[kind].refresh(name)
        return self.template_info(kind, name)

    def template_disk_add(self, name: str, disk_id: str, pool: str, size: str | int | None = None,
                          source_volume: str | None = None, filesystem: str | None = None,
                          mountpoint: str | None = None) -> dict[str, Any]:
        """Append disk `disk_id` (``sda``, ...) to storage template `name`, as upstream builds templates step by
        step; `filesystem` and `mountpoint` are for the profile's install script.

        :raises InvalidInput: a malformed name, or a disk the storage template checks refuse (pool, size or
            source volume, filesystem, mount point)
        :raises NotFound: no storage template of that name
        :raises AlreadyExists: the template has a disk of that id
        :raises Busy: another change holds the provisioner's lock
        """
        disk = {"disk_id": disk_id, "pool": pool, "size": size, "source_volume": source_volume,
                "filesystem": filesystem, "mountpoint": mountpoint}
        with self._locked():
            record = self._require_template("storage", name)
            if any(each.get("disk_id") == disk_id for each in record["disks"]):
                raise AlreadyExists(f"storage template '{name}' has a disk {disk_id} already")
            updated = self._checked_template("storage", {"disks": [*record["disks"], disk]})
            self._context.store.transaction().set(schema.template("storage", name), updated).commit()
            self._templates["storage"].refresh(name)
        return self.template_info("storage", name)

    def template_disk_remove(self, name: str, disk_id: str) -> dict[str, Any]:
        """Remove disk `disk_id` from storage template `name`.

        :raises InvalidInput: a malformed name
        :raises NotFound: no storage template of that name, or no disk of that id in it
        :raises Busy: another change holds the provisioner's lock
        """
        with self._locked():
            record = self._require_template("storage", name)
            disks = [disk for disk in record["disks"] if disk.get("disk_id") != disk_id]
            if len(disks) == len(record["disks"]):
                raise NotFound(f"storage template '{name}' has no disk {disk_id}")
            updated = self._checked_template("storage", {"disks": disks})
            self._context.store.transaction().set(schema.template("storage", name), updated).commit()
            self._templates["storage"].refresh(name)
        return self.template_info("storage", name)

    def template_remove(self, kind: str, name: str) -> None:
        """Remove a template that no profile uses.

        :raises NotFound: no such template
        :raises Conflict: a profile uses it
        :raises Busy: another change holds the templates' and profiles' lock
        """
        with self._locked():
            self._require_template(kind, name)
            users = provisioner_records.users_of_template(self._stored_profiles(), kind, name)
            if users:
                raise Conflict(f"{kind} template '{name}' is used by profile(s) {', '.join(users)}; change or "
                               "remove them first")
            self._context.store.transaction().delete(schema.template(kind, name)).commit()
            self._templates[kind].refresh(name)

    # -- profiles -------------------------------------------------------------------------------------

    def profile_list(self) -> list[dict[str, Any]]:
        """Every profile, with what a VM creation from it would still need (`missing`).

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return [provisioner_records.profile_view(name, record, self._ova_record(record), detail=False,
                                                 userdata_exists=self._userdata_exists(record))
                for name, record in sorted(self._profile_records().items())]

    def profile_info(self, name: str) -> dict[str, Any]:
        """The profile, its components, and what a creation from it still needs.

        :raises NotFound: no such profile
        """
        record = self._require_profile(name)
        return provisioner_records.profile_view(name, record, self._ova_record(record),
                                                userdata_exists=self._userdata_exists(record))

    def profile_add(self, name: str, profile_type: str = "provisioner", system_template: str | None = None,
                    storage_template: str | None = None, network_template: str | None = None,
                    user_data: str | None = None, ova: str | None = None,
                    userdata: str | None = None, script: str | None = None,
                    script_args: list[str] | None = None) -> dict[str, Any]:
        """A new profile of `profile_type` (provisioner or ova); every component may be given later. User data
        is its text (`user_data`) or the name of a stored document (`userdata`), not both.

        :raises InvalidInput: a malformed name, type or component
        :raises NotFound: a named template or OVA does not exist
        :raises AlreadyExists: the profile exists, or an OVA being imported will take the name
        :raises Busy: another change holds the templates' and profiles' lock
        """
        path = schema.profile(name)
        record = provisioner_records.check_profile({
            "type": profile_type, "system_template": system_template, "storage_template": storage_template,
            "network_template": network_template, "user_data": user_data, "ova": ova, "userdata": userdata,
            "script": script, "script_args": script_args})
        with self._locked():
            self._check_components(record)
            if self._profile_record(name) is not None:
                raise AlreadyExists(f"a profile named '{name}' exists already")
            self._refuse_name_of_importing_ova("a profile", name)
            try:
                self._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"a profile named '{name}' exists already") from None
            self._profiles.refresh(name)
        return self.profile_info(name)

    def profile_modify(self, name: str, **changes: Any) -> dict[str, Any]:
        """Set the components named (system_template, storage_template, network_template, user_data, ova);
        a component given as None or "" is removed from the profile.

        :raises NotFound: no such profile or component
        :raises InvalidInput: an unknown component
        :raises Busy: another change holds the templates' and profiles' lock
        """
        schema.profile(name)
        unknown = sorted(set(changes) - set(provisioner_records.PROFILE_COMPONENTS))
        if unknown:
            raise InvalidInput(f"unknown profile component(s): {', '.join(unknown)} "
                               f"(known: {', '.join(provisioner_records.PROFILE_COMPONENTS)})")
        with self._locked():
            record = provisioner_records.check_profile({**self._require_profile(name), **changes})
            self._check_components(record)
            self._context.store.transaction().set(schema.profile(name), record).commit()
            self._profiles.refresh(name)
        return self.profile_info(name)

    def profile_remove(self, name: str) -> None:
        """Remove the profile (its templates stay).

        :raises NotFound: no such profile
        :raises Busy: another change holds the templates' and profiles' lock
        """
        with self._locked():
            self._require_profile(name)
            self._context.store.transaction().delete(schema.profile(name)).commit()
            self._profiles.refresh(name)

    # -- creating VMs ---------------------------------------------------------------------------------

    def create(self, vm: str, profile: str, define_only: bool = False, start: bool = False,
               wait: bool = False) -> dict[str, Any]:
        """Create VM `vm` from `profile`: its volumes, its cloud-init config drive when the profile has user
        data, and its definition with the system template's metadata; with `start`, start it. `define_only`
        says explicitly that it stays stopped (the default), and cannot be combined with `start`.

        Everything a user can get wrong is refused before anything is made. The creation is then a task the
        leader runs (it survives the loss of any coordinator and ends with the whole VM or nothing). Without
        `wait`, the task is returned at once (see `creation`); with `wait`, the VM once created (and, with
        `start`, running), or the creation's error.

        :raises InvalidInput: a malformed name, `define_only` with `start`, or an incomplete profile (the parts
            named)
        :raises NotFound: no such profile
        :raises AlreadyExists: a VM or volume of that name exists
        :raises Conflict: no node can take the VM
        :raises OperationFailed: with `wait`, a step failed for good (all it made is removed)
        """
        if define_only and start:
            raise InvalidInput("--define-only leaves the VM stopped: it cannot be combined with --start")
        schema.check_name("VM", vm)
        record = self._require_profile(profile)
        if self._context.cache.vms.get(vm) is not None:
            raise AlreadyExists(f"a VM named '{vm}' exists already")
        plan = self._planner.plan(vm, profile, record, start)
        task = provisioning.record_task(self._context, plan, profile)
        if not wait:
            return provisioning.task_view(task)
        task = provisioning.wait_for(self._context, task["id"])
        self._context.cache.vms.refresh(vm)
        if start:
            return self._vms.start(vm, wait=True)
        return self._vms.info(vm)

    def creation(self, task_id: str) -> dict[str, Any]:
        """A VM creation's progress: state (pending, running, done, failed), volumes made, error.

        :raises NotFound: no such creation task
        :raises InvalidInput: a malformed id
        """
        task = self._context.store.read(schema.task(schema.check_name("task", task_id)))
        if task is None or task.get("kind") != provisioning.KIND:
            raise NotFound(f"no VM creation task '{task_id}'")
        return provisioning.task_view(task)

    # -- helpers --------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._context.store.lock(schema.PROVISIONER_LOCK, self._context.name)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise Busy("the provisioner's templates and profiles are locked by another change; try again")
        try:
            yield
        finally:
            lock.release()

    def _checked_template(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        record = provisioner_records.check_template(kind, spec)
        if kind == "system" and record["node_selector"]:
            self._context.selector(record)
        if kind == "system":
            placement.check_fits_a_node(self._context.node_views(), record, "the system template")
        return record

    def _template_record(self, kind: str, name: str) -> dict[str, Any] | None:
        raw = self._templates[kind].get(name)
        return raw.get(OWN_VALUE) if raw else None

    def _require_template(self, kind: str, name: str) -> dict[str, Any]:
        schema.template(kind, name)
        record = self._template_record(kind, name)
        if record is None:
            raise NotFound(f"no {kind} template named '{name}'")
        return record

    def _profile_records(self) -> dict[str, dict[str, Any]]:
        return {name: raw[OWN_VALUE] for name, raw in self._profiles.snapshot().items() if raw.get(OWN_VALUE)}

    def _stored_profiles(self) -> dict[str, dict[str, Any]]:
        """The profiles as ZooKeeper holds them now, not as this coordinator's cache last heard: read under the
        lock, so no profile begins to use a template another coordinator is removing."""
        store = self._context.store
        return {name: record for name in store.children(schema.PROFILES)
                if (record := store.read(schema.profile(name))) is not None}

    def _profile_record(self, name: str) -> dict[str, Any] | None:
        raw = self._profiles.get(name)
        return raw.get(OWN_VALUE) if raw else None

    def _require_profile(self, name: str) -> dict[str, Any]:
        schema.check_name("profile", name)
        record = self._profile_record(name)
        if record is None:
            raise NotFound(f"no profile named '{name}'")
        return record

    def _check_components(self, record: dict[str, Any]) -> None:
        for kind in schema.TEMPLATE_KINDS:
            name = record.get(f"{kind}_template")
            if name is not None and not self._context.store.zk.exists(schema.template(kind, name)):
                raise NotFound(f"no {kind} template named '{name}'")
        if record.get("ova") and self._ova_record(record) is None:
            raise NotFound(f"no OVA named '{record['ova']}'")
        if record.get("userdata") and not self._context.store.zk.exists(schema.userdata(record["userdata"])):
            raise NotFound(f"no user-data document named '{record['userdata']}'")
        if record.get("script") and not self._context.store.zk.exists(schema.script(record["script"])):
            raise NotFound(f"no install script named '{record['script']}'")

    def _userdata_exists(self, record: dict[str, Any]) -> bool | None:
        return self._userdata_record(record["userdata"]) is not None if record.get("userdata") else None

    def _refuse_name_of_importing_ova(self, what: str, name: str) -> None:
        """An OVA being imported holds the names its template and profile will take (called under the lock,
        as the upload's check of those names is)."""
        if (self._context.store.read(schema.ova(name)) or {}).get("state") == "importing":
            raise AlreadyExists(f"{what} cannot be named '{name}': OVA '{name}' is being imported, and its "
                                "template and profile take that name")

    def _ova_record(self, profile: dict[str, Any]) -> dict[str, Any] | None:
        return self._context.store.read(schema.ova(profile["ova"])) if profile.get("ova") else None
