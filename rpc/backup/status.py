"""What `pvc vm autobackup status` shows: the settings, the run in progress, the last outcome, and each VM's
chains as recorded."""
from typing import Any

from pvc import autobackup_settings, schema
from pvc.rpc.backup import chains
from pvc.rpc.context import CoordinatorContext


def status(context: CoordinatorContext) -> dict[str, Any]:
    store = context.store
    vms = []
    for vm in sorted(store.children(schema.AUTOBACKUP_VMS)):
        record = store.read(schema.autobackup_vm(vm)) or chains.empty()
        for chain in record["chains"]:
            vms.append({"name": vm, "chain": chain["id"], "backups": len(chain["backups"]),
                        "last": chain["backups"][-1]["snapshot"] if chain["backups"] else None,
                        "directory": chain["backups"][0]["directory"] if chain["backups"] else None,
                        "bytes": sum(backup.get("bytes") or 0 for backup in chain["backups"]),
                        "removing": chain["id"] in record["removing"]})
    return {"settings": autobackup_settings.resolve(context.cache.config.get()),
            "running": (store.read(schema.AUTOBACKUP_RUN) or {}).get("task"),
            "last_scheduled": (store.read(schema.AUTOBACKUP_SCHEDULE) or {}).get("last_run"),
            "last_outcome": store.read(schema.AUTOBACKUP_OUTCOME), "chains": vms}
