"""The user-data calls of the provisioner area (`pvc.rpc.areas.provisioner`): named cloud-init documents, as
upstream's ``provisioner userdata`` keeps them, which a profile names (``userdata``) instead of holding the text
itself. A document a profile names cannot be removed; changes go under the provisioner's lock, like templates.
"""
from typing import Any

import Pyro5.server

from pvc import provisioner_records, schema
from pvc.errors import InvalidInput
from pvc.rpc.areas.named_texts import NamedTexts, TextKind, texts_of


def _document_text(data: Any) -> str:
    """A profile's inline user data may be empty (none at all); a named document exists to hold some."""
    text = provisioner_records.check_user_data(data)
    if text is None:
        raise InvalidInput("a user-data document needs some text")
    return text


DOCUMENTS = TextKind("user-data document", "a", schema.USERDATA_DOCUMENTS, schema.userdata, "data", _document_text,
                     provisioner_records.users_of_userdata)


@Pyro5.server.expose
class UserdataCalls:
    """Mixed into `ProvisionerArea`, which provides ``_context``, ``_locked``, ``_profile_records`` and
    ``_stored_profiles``."""

    @property
    def _userdata(self) -> NamedTexts:
        return texts_of(self, "_userdata_texts", DOCUMENTS)

    def userdata_add(self, name: str, data: str) -> dict[str, Any]:
        """A new user-data document `name` holding `data` (cloud-config or a script, at most 256 KiB).

        :raises InvalidInput: a malformed name, or `data` empty, not text, or too large
        :raises AlreadyExists: a document of that name exists
        :raises Busy: another change holds the provisioner's lock
        """
        self._userdata.add(name, data)
        return self.userdata_info(name)

    def userdata_modify(self, name: str, data: str) -> dict[str, Any]:
        """Replace the document's text; profiles naming it give it to the VMs created from now on.

        :raises InvalidInput: a malformed name, or `data` empty, not text, or too large
        :raises NotFound: no document of that name
        :raises Busy: another change holds the provisioner's lock
        """
        self._userdata.modify(name, data)
        return self.userdata_info(name)

    def userdata_list(self) -> list[dict[str, Any]]:
        """Every document: name, size, the profiles that name it.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return self._userdata.list()

    def userdata_info(self, name: str) -> dict[str, Any]:
        """One document with its text and the profiles that name it.

        :raises InvalidInput: a malformed name
        :raises NotFound: no document of that name
        """
        return self._userdata.info(name)

    def userdata_remove(self, name: str) -> None:
        """Remove a document no profile names.

        :raises InvalidInput: a malformed name
        :raises NotFound: no document of that name
        :raises Conflict: a profile names it (the message names the profiles)
        :raises Busy: another change holds the provisioner's lock
        """
        self._userdata.remove(name)

    def _userdata_record(self, name: str) -> dict[str, Any] | None:
        return self._userdata.record(name)
