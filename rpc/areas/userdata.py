"""The user-data calls of the provisioner area (`pvc.rpc.areas.provisioner`): named cloud-init documents, as
upstream's ``provisioner userdata`` keeps them, which a profile names (``userdata``) instead of holding the text
itself. A document a profile names cannot be removed; changes go under the provisioner's lock, like templates.
"""
import threading
from typing import Any

import Pyro5.server

from pvc import provisioner_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound

_collection_lock = threading.Lock()


@Pyro5.server.expose
class UserdataCalls:
    """Mixed into `ProvisionerArea`, which provides ``_context``, ``_locked``, ``_profile_records`` and
    ``_stored_profiles``."""

    @property
    def _userdata(self) -> WatchedCollection:
        with _collection_lock:
            if getattr(self, "_userdata_collection", None) is None:
                collection = WatchedCollection(self._context.store, schema.USERDATA_DOCUMENTS, schema.userdata)
                collection.start()
                self._userdata_collection = collection
            return self._userdata_collection

    def userdata_add(self, name: str, data: str) -> dict[str, Any]:
        """A new user-data document `name` holding `data` (cloud-config or a script, at most 256 KiB).

        :raises InvalidInput: a malformed name, or `data` empty, not text, or too large
        :raises AlreadyExists: a document of that name exists
        :raises Busy: another change holds the provisioner's lock
        """
        path = schema.userdata(name)
        record = _checked(data)
        with self._locked():
            try:
                self._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"a user-data document named '{name}' exists already") from None
            self._userdata.refresh(name)
        return self.userdata_info(name)

    def userdata_modify(self, name: str, data: str) -> dict[str, Any]:
        """Replace the document's text; profiles naming it give it to the VMs created from now on.

        :raises InvalidInput: a malformed name, or `data` empty, not text, or too large
        :raises NotFound: no document of that name
        :raises Busy: another change holds the provisioner's lock
        """
        path = schema.userdata(name)
        record = _checked(data)
        with self._locked():
            if not self._context.store.zk.exists(path):
                raise NotFound(f"no user-data document named '{name}'")
            self._context.store.transaction().set(path, record).commit()
            self._userdata.refresh(name)
        return self.userdata_info(name)

    def userdata_list(self) -> list[dict[str, Any]]:
        """Every document: name, size, the profiles that name it.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        profiles = self._profile_records()
        return [_view(name, raw[OWN_VALUE], profiles, detail=False)
                for name, raw in sorted(self._userdata.snapshot().items()) if raw.get(OWN_VALUE)]

    def userdata_info(self, name: str) -> dict[str, Any]:
        """One document with its text and the profiles that name it.

        :raises InvalidInput: a malformed name
        :raises NotFound: no document of that name
        """
        record = self._userdata_record(name)
        if record is None:
            raise NotFound(f"no user-data document named '{name}'")
        return _view(name, record, self._profile_records(), detail=True)

    def userdata_remove(self, name: str) -> None:
        """Remove a document no profile names.

        :raises InvalidInput: a malformed name
        :raises NotFound: no document of that name
        :raises Conflict: a profile names it (the message names the profiles)
        :raises Busy: another change holds the provisioner's lock
        """
        path = schema.userdata(name)
        with self._locked():
            if not self._context.store.zk.exists(path):
                raise NotFound(f"no user-data document named '{name}'")
            users = provisioner_records.users_of_userdata(self._stored_profiles(), name)
            if users:
                raise Conflict(f"user-data document '{name}' is used by profile(s) {', '.join(users)}; change or "
                               "remove them first")
            self._context.store.transaction().delete(path).commit()
            self._userdata.refresh(name)

    def _userdata_record(self, name: str) -> dict[str, Any] | None:
        schema.userdata(name)
        raw = self._userdata.get(name)
        return raw.get(OWN_VALUE) if raw and raw.get(OWN_VALUE) else None


def _checked(data: Any) -> dict[str, Any]:
    text = provisioner_records.check_user_data(data)
    if text is None:
        raise InvalidInput("a user-data document needs some text")
    return {"data": text}


def _view(name: str, record: dict[str, Any], profiles: dict[str, dict[str, Any]], detail: bool) -> dict[str, Any]:
    view = {"name": name, "size_bytes": len(record["data"].encode()),
            "used_by": provisioner_records.users_of_userdata(profiles, name)}
    if detail:
        view["data"] = record["data"]
    return view
