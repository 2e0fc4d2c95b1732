"""Storage as ZooKeeper records it and as users see it.

Records hold only what the storage cannot tell quickly (which backend made a pool, a volume's size, its
snapshots); views are the flat dicts the `storage` remote object returns and ``--format json`` prints, sizes
in bytes under ``*_bytes`` keys.
"""
import time
from typing import Any, Callable

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.store import Store, Transaction


def volume_record(pool: str, volume: str, size_bytes: int) -> dict[str, Any]:
    return {"pool": pool, "name": volume, "size_bytes": size_bytes, "created": time.time()}


def record_upload(store: Store, transaction: Callable[[], Transaction], pool: str, volume: str, size_bytes: int,
                  image_format: str) -> dict[str, Any]:
    """Record a completed upload: a new volume (its record and empty snapshot list together), or the new size of
    an existing one. The node that took the upload writes it through `transaction`, which checks that it still
    owns its node (`pvc.node.ownership`)."""
    existing = store.read(schema.volume(pool, volume))
    if existing is None:
        transaction() \
            .create(schema.volume(pool, volume), volume_record(pool, volume, size_bytes)) \
            .create(schema.volume_snapshots(pool, volume), {}) \
            .commit()
    else:
        transaction().set(schema.volume(pool, volume), {**existing, "size_bytes": size_bytes}).commit()
    return {"pool": pool, "name": volume, "size_bytes": size_bytes, "image_format": image_format}


def volume_users(store: Store, pool: str, volume: str) -> list[str]:
    """The VMs whose record lists volume `pool/volume`, read from ZooKeeper itself: for a node, which keeps no
    cache of the VMs, when it must know now."""
    wanted = f"{pool}/{volume}"
    return [name for name in store.children(schema.VMS)
            if wanted in ((store.read(schema.vm(name)) or {}).get("volumes") or [])]


def volume_view(key: str, raw: dict[str, Any], used_by: list[str]) -> dict[str, Any]:
    record = raw.get(OWN_VALUE) or {}
    pool, name = schema.split_volume_key(key)
    snapshots = raw.get("snapshots") or {}
    return {
        "name": name,
        "pool": pool,
        "size_bytes": record.get("size_bytes"),
        "snapshots": sorted(snapshots),
        "used_by": used_by,
        "pending": (record.get("intent") or {}).get("action"),
    }


def snapshot_views(pool: str, volume: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    snapshots = raw.get("snapshots") or {}
    return [{"name": name, "pool": pool, "volume": volume, "created": facts.get("created"),
             "vm_snapshot": facts.get("vm_snapshot")}
            for name, facts in sorted(snapshots.items())]


def pool_view(name: str, record: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "backend": record.get("backend"),
        "options": record.get("options") or {},
        "volumes": len(volumes),
        "provisioned_bytes": sum(volume["size_bytes"] or 0 for volume in volumes),
    }
