"""The install-script calls of the provisioner area (`pvc.rpc.areas.provisioner`): scripts a profile may name
(``script``, with ``script_args``), which `provisioner create` runs on a node that enables them after the VM's
volumes exist and before it is defined (`pvc.rpc.provisioning`). A script a profile names cannot be removed.
"""
from typing import Any

import Pyro5.server

from pvc import provisioner_records, schema
from pvc.rpc.areas.named_texts import NamedTexts, TextKind, texts_of

SCRIPTS = TextKind("install script", "an", schema.SCRIPTS, schema.script, "script", provisioner_records.check_script,
                   provisioner_records.users_of_script)


@Pyro5.server.expose
class ScriptCalls:
    """Mixed into `ProvisionerArea`, which provides ``_context``, ``_locked``, ``_profile_records`` and
    ``_stored_profiles``."""

    @property
    def _scripts(self) -> NamedTexts:
        return texts_of(self, "_script_texts", SCRIPTS)

    def script_add(self, name: str, script: str) -> dict[str, Any]:
        """A new install script `name` (a program text starting with ``#!``, at most 256 KiB).

        :raises InvalidInput: a malformed name, or a text that does not start with ``#!`` or is too large
        :raises AlreadyExists: a script of that name exists
        :raises Busy: another change holds the provisioner's lock
        """
        self._scripts.add(name, script)
        return self.script_info(name)

    def script_list(self) -> list[dict[str, Any]]:
        """Every install script: name, size, the profiles that name it.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return self._scripts.list()

    def script_info(self, name: str) -> dict[str, Any]:
        """One install script with its text and the profiles that name it.

        :raises InvalidInput: a malformed name
        :raises NotFound: no script of that name
        """
        return self._scripts.info(name)

    def script_remove(self, name: str) -> None:
        """Remove a script no profile names.

        :raises InvalidInput: a malformed name
        :raises NotFound: no script of that name
        :raises Conflict: a profile names it (the message names the profiles)
        :raises Busy: another change holds the provisioner's lock
        """
        self._scripts.remove(name)
