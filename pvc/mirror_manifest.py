"""What a mirror send declares before its data (`pvc.rpc.mirror`, `pvc.node.mirror_transfer`): the VM, the
snapshot and the parent it builds on (with when each was taken on the sending cluster, which is how the receiver
tells its copy of a snapshot from another of the same name), the VM's document and metadata, and per volume its
size and its stream's byte count and SHA-256."""
from __future__ import annotations

from typing import Any

from pvc import schema
from pvc.errors import InvalidInput


def checked(manifest: object) -> dict[str, Any]:
    """A received send's manifest, checked before a ticket is issued for it."""
    try:
        schema.check_name("VM", manifest["vm"])
        schema.check_name("snapshot", manifest["snapshot"])
        if not isinstance(manifest["created"], (int, float)):
            raise ValueError("no time the snapshot was taken")
        if manifest["parent"] is not None:
            schema.check_name("snapshot", manifest["parent"])
            if not isinstance(manifest["parent_created"], (int, float)):
                raise ValueError("no time the parent snapshot was taken")
        if not isinstance(manifest["spec"], dict) or not isinstance(manifest["spec"].get("xml"), str):
            raise ValueError("no domain document")
        if not manifest["volumes"]:
            raise ValueError("no volume")
        for volume in manifest["volumes"]:
            pool, name = volume["volume"].split("/", 1)
            schema.check_name("pool", pool)
            schema.check_name("volume", name)
            if not isinstance(volume["bytes"], int) or not isinstance(volume["size_bytes"], int) \
                    or not isinstance(volume["sha256"], str) or len(volume["sha256"]) != 64:
                raise ValueError(f"volume {volume['volume']} is described wrongly")
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInput) as error:
        raise InvalidInput(f"malformed mirror manifest: {error}") from None
    return manifest
