"""Every hook a PVC plugin can implement.

A plugin is a module or object with functions marked `@pvc.hookimpl`, published under the setuptools
entry-point group ``pvc``::

    [options.entry_points]
    pvc =
        my_selectors = my_package.selectors

PVC's own built-ins (``pvc.plugins.*``) are registered through that same group. Each hook here is a
*registration hook*: it is called once, when a process builds its registries, and returns a mapping of names
to implementations. Two plugins registering the same name is an error naming both (see `pvc.plugins`).
"""
from typing import Any, Mapping, Protocol

import pluggy

PROJECT = "pvc"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MigrationSelector(Protocol):
    """Ranks candidate nodes for a VM. The host has already filtered the candidates (daemon state ``run``,
    domain state ``ready``, not the VM's current node, within its ``node_limit``); a selector only scores."""

    description: str

    def score(self, node: Mapping[str, Any], vm: Mapping[str, Any]) -> float:
        """The cost of placing `vm` on `node`; the lowest cost wins, ties go to the first node by name.

        :param node: the node as ``nodes.info`` returns it, its figures already including the VMs placed
            on it earlier in the same batch.
        :param vm: the VM as ``vms.info`` returns it.
        """


class FencingPolicy(Protocol):
    """Decides how a dead node is made safe before its VMs are restarted elsewhere."""

    description: str

    def fence(self, node: Mapping[str, Any]) -> tuple[bool, str]:
        """Power the node off, returning ``(confirmed_off, explanation)``.

        Only a True first element lets recovery restart the node's VMs elsewhere; anything short of proof
        that the node is off must return False, with the reason in the explanation.
        """


class ImageImporter(Protocol):
    """Turns an uploaded image file into the raw bytes of a volume."""

    description: str
    formats: tuple[str, ...]

    def import_image(self, source_path: str, source_format: str, target: str) -> None:
        """Write the image at `source_path`, in `source_format`, as raw data into `target`."""


class StorageBackend(Protocol):
    """Where volumes live; constructed with the cluster's storage settings."""

    description: str


@hookspec
def pvc_migration_selectors() -> Mapping[str, MigrationSelector]:
    """Register migration selectors by name (``node_selector`` of a VM, the cluster default).

    Called once per process when the selector registry is built.

    :return: a mapping of selector name to an object implementing `MigrationSelector`.

    Example::

        @pvc.hookimpl
        def pvc_migration_selectors():
            return {"fewest-disks": FewestDisks()}
    """


@hookspec
def pvc_fencing_policies() -> Mapping[str, FencingPolicy]:
    """Register fencing policies by name, chosen by the cluster's fencing settings.

    Called once per process when the fencing registry is built.

    :return: a mapping of policy name to an object implementing `FencingPolicy`.
    """


@hookspec
def pvc_image_importers() -> Mapping[str, ImageImporter]:
    """Register image importers by name; an upload is handled by the importer whose `formats` include the
    detected (or given) image format.

    Called once per process when the importer registry is built.

    :return: a mapping of importer name to an object implementing `ImageImporter`.
    """


@hookspec
def pvc_storage_backends() -> Mapping[str, type[StorageBackend]]:
    """Register storage backends by name, chosen per cluster in the configuration.

    Called once per process when the backend registry is built.

    :return: a mapping of backend name to a class implementing `StorageBackend`.
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "pvc_migration_selectors": "migration selector",
    "pvc_fencing_policies": "fencing policy",
    "pvc_image_importers": "image importer",
    "pvc_storage_backends": "storage backend",
}
"""Each registration hook and what one of its registered names is called in messages."""
