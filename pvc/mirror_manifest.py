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
        if len({volume["volume"] for volume in manifest["volumes"]}) != len(manifest["volumes"]):
            raise ValueError("a volume named twice")
        for volume in manifest["volumes"]:
            pool, name = volume["volume"].split("/", 1)
            schema.check_name("pool", pool)
            schema.check_name("volume", name)
            if not isinstance(volume["bytes"], int) or not isinstance(volume["size_bytes"], int) \
                    or isinstance(volume["bytes"], bool) or isinstance(volume["size_bytes"], bool) \
                    or volume["bytes"] < 0 or volume["size_bytes"] < 1 \
                    or not isinstance(volume["sha256"], str) or len(volume["sha256"]) != 64:
                raise ValueError(f"volume {volume['volume']} is described wrongly")
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInput) as error:
        raise InvalidInput(f"malformed mirror manifest: {error}") from None
    return manifest


MAX_CHAIN = 1000


def checked_chain(links: object) -> list[dict[str, Any]]:
    """The manifests of a streamed import (a whole export, then its incrementals in order), each checked, and
    the chain's order checked from them before any data is read: every link builds on the one before it (the
    same VM, the parent snapshot it names taken when that one was), over the same volumes."""
    if not isinstance(links, list) or not links:
        raise InvalidInput("the import holds no export")
    if len(links) > MAX_CHAIN:
        raise InvalidInput(f"the import holds more than {MAX_CHAIN} exports")
    links = [checked(link) for link in links]
    first = links[0]
    if first["parent"] is not None:
        raise InvalidInput(f"the first export ({first['vm']}@{first['snapshot']}) is incremental since "
                           f"'{first['parent']}': start the chain with a full export")
    for number, (older, link) in enumerate(zip(links, links[1:]), start=2):
        if link["vm"] != older["vm"] or link["parent"] != older["snapshot"] \
                or link["parent_created"] != older["created"]:
            raise InvalidInput(f"export {number} ({link['vm']}@{link['snapshot']}) does not build on the export "
                               f"before it ({older['vm']}@{older['snapshot']}): a link is missing or out of order")
        if sorted(volume["volume"] for volume in link["volumes"]) != \
                sorted(volume["volume"] for volume in older["volumes"]):
            raise InvalidInput(f"export {number} ({link['vm']}@{link['snapshot']}) holds other volumes than the "
                               "export before it")
    return links
