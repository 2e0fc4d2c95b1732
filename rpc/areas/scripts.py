"""The install-script calls of the provisioner area (`pvc.rpc.areas.provisioner`): scripts a profile may name
(``script``, with ``script_args``), which `provisioner create` runs on a node that enables them after the VM's
volumes exist and before it is defined (`pvc.rpc.provisioning`). A script a profile names cannot be removed.
"""
import threading
from typing import Any

import Pyro5.server

from pvc import provisioner_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Conflict, NotFound

_collection_lock = threading.Lock()


@Pyro5.server.expose
class ScriptCalls:
    """Mixed into `ProvisionerArea`, which provides ``_context``, ``_locked``, ``_profile_records`` and
    ``_stored_profiles``."""

    @property
    def _scripts(self) -> WatchedCollection:
        with _collection_lock:
            if getattr(self, "_script_collection", None) is None:
                collection = WatchedCollection(self._context.store, schema.SCRIPTS, schema.script)
                collection.start()
                self._script_collection = collection
            return self._script_collection

    def script_add(self, name: str, script: str) -> dict[str, Any]:
        """A new install script `name` (a program text starting with ``#!``, at most 256 KiB).

        :raises InvalidInput: a malformed name, or a text that does not start with ``#!`` or is too large
        :raises AlreadyExists: a script of that name exists
        :raises Busy: another change holds the provisioner's lock
        """
        path = schema.script(name)
        record = {"script": provisioner_records.check_script(script)}
        with self._locked():
            try:
                self._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"an install script named '{name}' exists already") from None
            self._scripts.refresh(name)
        return self.script_info(name)

    def script_list(self) -> list[dict[str, Any]]:
        """Every install script: name, size, the profiles that name it.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        profiles = self._profile_records()
        return [_view(name, raw[OWN_VALUE], profiles, detail=False)
                for name, raw in sorted(self._scripts.snapshot().items()) if raw.get(OWN_VALUE)]

    def script_info(self, name: str) -> dict[str, Any]:
        """One install script with its text and the profiles that name it.

        :raises InvalidInput: a malformed name
        :raises NotFound: no script of that name
        """
        schema.script(name)
        raw = self._scripts.get(name)
        if not raw or not raw.get(OWN_VALUE):
            raise NotFound(f"no install script named '{name}'")
        return _view(name, raw[OWN_VALUE], self._profile_records(), detail=True)

    def script_remove(self, name: str) -> None:
        """Remove a script no profile names.

        :raises InvalidInput: a malformed name
        :raises NotFound: no script of that name
        :raises Conflict: a profile names it (the message names the profiles)
        :raises Busy: another change holds the provisioner's lock
        """
        path = schema.script(name)
        with self._locked():
            if not self._context.store.zk.exists(path):
                raise NotFound(f"no install script named '{name}'")
            users = provisioner_records.users_of_script(self._stored_profiles(), name)
            if users:
                raise Conflict(f"install script '{name}' is used by profile(s) {', '.join(users)}; change or "
                               "remove them first")
            self._context.store.transaction().delete(path).commit()
            self._scripts.refresh(name)


def _view(name: str, record: dict[str, Any], profiles: dict[str, dict[str, Any]], detail: bool) -> dict[str, Any]:
    view = {"name": name, "size_bytes": len(record["script"].encode()),
            "used_by": provisioner_records.users_of_script(profiles, name)}
    if detail:
        view["script"] = record["script"]
    return view
