"""The node's storage: its backend, the remote object coordinators call for storage actions, and the upload
listener.

The storage agent is a Pyro5 object of its own (`STORAGE_OBJECT_ID`) in the node agent's daemon, so it is
served only to connections presenting the cluster secret. It acts on the storage and reports; recording the
result in ZooKeeper is the coordinator's job, except for uploads, which end here (see `pvc.node.uploads`).
"""
import logging
from pathlib import Path
from typing import Any, Callable

import Pyro5.server

from pvc import bulk, config, mirror_manifest, plugin_manager, schema
from pvc.errors import ConfigError, InvalidInput, OperationFailed
from pvc.hookspecs import ApplianceImporter, StorageBackend
from pvc.node import backups, guest_snapshots, mirror_transfer
from pvc.node.autobackup_exports import AutobackupExports
from pvc.node.pool_room import PoolRoom
from pvc.node.provision_scripts import ScriptRunner
from pvc.node.uploads import Tickets, UploadContext, UploadListener, sweep_leftovers, upload_formats
from pvc.qemu_img import SUPPORTED_FORMATS, QemuImg
from pvc.store import Store, Transaction

log = logging.getLogger(__name__)

STORAGE_OBJECT_ID = "pvc.node.storage"
EXPORT_JOURNAL = ".exports"
"""Below the snapshot pause directory: the exports under way (a name no VM can have)."""


HEALTH_TIMEOUT_S = 10.0
"""Seconds the backend's own health judgement (`health`) may take."""


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
class StorageAgent:
    """Storage actions on this node's backend; every name is checked again here, as a path is built from it."""

    def __init__(self, backend_name: str, backend: StorageBackend, tickets: Tickets,
                 appliance_importers: dict[str, ApplianceImporter] | None = None,
                 scripts: ScriptRunner | None = None, backup_roots: backups.BackupRoots | None = None,
                 autobackups: AutobackupExports | None = None, staging_directory: Path | None = None,
                 upload_formats: tuple[str, ...] = ("auto", *SUPPORTED_FORMATS)):
        self._backend_name = backend_name
        self._upload_formats = upload_formats
        self._scripts = scripts
        self._appliance_importers = appliance_importers or {}
        self._backend = backend
        self._backup_roots = backup_roots or backups.BackupRoots([], "/nonexistent")
        self._autobackups = autobackups or AutobackupExports(backend, self._backup_roots, {})
        self._tickets = tickets
        self._mirror_stages = mirror_transfer.MirrorStages(backend, staging_directory or Path("/nonexistent"))
        self.upload_address = ""
        self.upload_tls = False
        """Where clients send upload streams, known once the listener runs."""

    def backend(self) -> str:
        return self._backend_name

    def pool_create(self, pool: str, options: dict[str, Any]) -> dict[str, Any]:
        return self._backend.pool_create(schema.check_name("pool", pool), options)

    def pool_remove(self, pool: str) -> None:
        self._backend.pool_remove(schema.check_name("pool", pool))

    def pool_usage(self, pool: str) -> dict[str, int]:
        return self._backend.pool_usage(schema.check_name("pool", pool))

    def health(self) -> dict[str, Any]:
        """The backend's own judgement (`StorageBackend.health`): ``{"backend", "delta", "message"}``; a
        backend without one says nothing (delta None)."""
        judge = getattr(self._backend, "health", None)
        if judge is None:
            return {"backend": self._backend_name, "delta": None, "message": "no judgement"}
        delta, message = judge(HEALTH_TIMEOUT_S)
        return {"backend": self._backend_name, "delta": delta, "message": message}

    def volume_create(self, pool: str, volume: str, size_bytes: int) -> None:
        self._backend.volume_create(*_names(pool, volume), _size(size_bytes))

    def volume_remove(self, pool: str, volume: str) -> None:
        self._backend.volume_remove(*_names(pool, volume))

    def volume_size(self, pool: str, volume: str) -> int | None:
        return self._backend.volume_size(*_names(pool, volume))

    def volume_resize(self, pool: str, volume: str, size_bytes: int) -> None:
        self._backend.volume_resize(*_names(pool, volume), _size(size_bytes))

    def volume_rename(self, pool: str, volume: str, new_name: str) -> None:
        self._backend.volume_rename(*_names(pool, volume), schema.check_name("volume", new_name))

    def volume_copy(self, pool: str, volume: str, new_name: str, snapshot: str | None = None) -> None:
        self._backend.volume_copy(*_names(pool, volume), schema.check_name("volume", new_name),
                                  schema.check_name("snapshot", snapshot) if snapshot is not None else None)

    def volume_clone_linked(self, pool: str, volume: str, new_name: str) -> None:
        clone = getattr(self._backend, "volume_clone_linked", None)
        if clone is None:
            self._backend.volume_copy(*_names(pool, volume), schema.check_name("volume", new_name), None)
        else:
            clone(*_names(pool, volume), schema.check_name("volume", new_name))

    def volume_detach_clones(self, pool: str, volume: str) -> list[str]:
        detach = getattr(self._backend, "volume_detach_clones", None)
        return detach(*_names(pool, volume)) if detach is not None else []

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        self._backend.snapshot_create(*_names(pool, volume), schema.check_name("snapshot", snapshot))

    def snapshot_volumes(self, vm: str, volumes: list[str], snapshot: str) -> dict[str, Any]:
        """Snapshot the volumes (``POOL/VOLUME``) of `vm`, which runs nowhere, at one moment
        (`pvc.node.guest_snapshots`), all or none."""
        if not isinstance(volumes, list) or not volumes:
            raise InvalidInput("give the list of volumes to snapshot")
        return {"paused_ms": None,
                "method": guest_snapshots.snapshot_volumes(self._backend, vm, volumes, snapshot)}

    def export_snapshot(self, manifest: dict[str, Any], destination: str) -> dict[str, Any]:
        """Export a VM snapshot to the new directory `destination` under a backup root (`pvc.node.backups`)."""
        return backups.export(self._backend, self._backup_roots, manifest, destination)

    def autobackup_export(self, manifest: dict[str, Any], destination: str) -> dict[str, Any]:
        """An autobackup's export, between this node's own pre and post commands (`pvc.node.autobackup_exports`)."""
        return self._autobackups.export(manifest, destination)

    def autobackup_state(self, destination: str) -> str:
        """``writing``, ``whole`` or ``absent``: what became of an autobackup export to `destination`."""
        return self._autobackups.state(destination)

    def autobackup_remove(self, paths: list[str]) -> list[str]:
        """Remove whole exports under a backup root (autobackup's retention); those that were there."""
        if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
            raise InvalidInput("give the list of export directories to remove")
        return self._autobackups.remove(paths)

    def backup_chain(self, source: str) -> list[dict[str, Any]]:
        """The checked chain of export manifests ending at `source`, oldest first."""
        return backups.chain(self._backup_roots, source)

    def restore_backup(self, source: str, targets: dict[str, str], within_s: float | None = None) -> dict[str, int]:
        """Make the volumes `targets` maps to from the chain ending at `source`, giving up (and removing them)
        after `within_s`; their sizes."""
        for target in targets.values():
            guest_snapshots.split_volume(target)
        return backups.restore(self._backend, self._backup_roots, source, targets, backups.Deadline(within_s))

    def snapshot_in_progress(self, vm: str, snapshot: str) -> bool:
        """Whether this node is taking snapshot `snapshot` of `vm` now."""
        return guest_snapshots.in_progress(schema.check_name("VM", vm), schema.check_name("snapshot", snapshot))

    def snapshot_remove(self, pool: str, volume: str, snapshot: str) -> None:
        self._backend.snapshot_remove(*_names(pool, volume), schema.check_name("snapshot", snapshot))

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str) -> None:
        self._backend.snapshot_rollback(*_names(pool, volume), schema.check_name("snapshot", snapshot))

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        rename = getattr(self._backend, "snapshot_rename", None)
        if rename is None:
            raise OperationFailed(f"the {self._backend_name} storage backend cannot rename snapshots")
        rename(*_names(pool, volume), schema.check_name("snapshot", snapshot), schema.check_name("snapshot", new_name))

    def open_upload(self, pool: str, volume: str, size_bytes: int, image_format: str, checksum: str,
                    force: bool) -> dict[str, Any]:
        """A single-use token for one upload of exactly `size_bytes` with `checksum` (`pvc.bulk`) into
        `pool`/`volume` (with `force`, even over a volume a VM uses), and where to send it."""
        if image_format not in self._upload_formats:
            raise InvalidInput(f"unknown image format {image_format!r} (use one of: "
                               f"{', '.join(self._upload_formats)})")
        ticket = self._tickets.issue(*_names(pool, volume), _size(size_bytes), image_format, _checksum(checksum),
                                     force is True)
        return {"address": self.upload_address, "token": ticket.token, "tls": self.upload_tls}

    def open_mirror_upload(self, pool: str, manifest: dict[str, Any], size_bytes: int,
                           checksum: str) -> dict[str, Any]:
        """A single-use token for one mirror send from another cluster (`pvc.node.mirror_transfer`): exactly
        `size_bytes` with `checksum`, the streams `manifest` lists, applied to its volumes (which exist)."""
        manifest = mirror_manifest.checked(manifest)
        ticket = self._tickets.issue(schema.check_name("pool", pool), manifest["vm"], _size(size_bytes), "raw",
                                     _checksum(checksum), False, mirror=manifest)
        return {"address": self.upload_address, "token": ticket.token, "tls": self.upload_tls}

    def mirror_receive_stop(self, vm: str, snapshot: str) -> bool:
        """For the undo of a mirror send: no unused ticket of it is honoured from now on; whether its stream is
        still being applied here."""
        return self._tickets.stop_mirror(schema.check_name("VM", vm), schema.check_name("snapshot", snapshot))

    def mirror_stage(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write a VM snapshot's streams for a send to another cluster into this node's staging directory."""
        for volume in manifest["volumes"]:
            guest_snapshots.split_volume(volume)
        return self._mirror_stages.stage(manifest)

    def mirror_push(self, stage: str, ticket: dict[str, Any], tls_ca: str | None) -> dict[str, Any]:
        """Send a staged snapshot under the receiving cluster's ticket; the receiving node's answer."""
        return self._mirror_stages.push(stage, ticket, tls_ca)

    def open_export_download(self, pool: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Stage a VM snapshot's streams as for a mirror send and issue a single-use token under which a client
        fetches them (`pvc.node.mirror_transfer.send_stage`); an unused stage goes when its token expires."""
        staged = self.mirror_stage(manifest)
        path = self._mirror_stages.path(staged["stage"])
        ticket = self._tickets.issue(schema.check_name("pool", pool), schema.check_name("VM", manifest["vm"]),
                                     staged["size_bytes"], "raw", staged["checksum"], False, download=str(path))
        return {"address": self.upload_address, "token": ticket.token, "tls": self.upload_tls,
                "size_bytes": staged["size_bytes"], "checksum": staged["checksum"], "volumes": staged["volumes"]}

    def open_stream_stage(self, pool: str, vm: str, size_bytes: int, checksum: str) -> dict[str, Any]:
        """A single-use token for an import streamed from a client: exactly `size_bytes` with `checksum`, checked
        into a stage of this node (`pvc.node.mirror_transfer.receive_stage`) for `restore_stream` to apply."""
        stage = self._mirror_stages.reserve()
        ticket = self._tickets.issue(schema.check_name("pool", pool), schema.check_name("VM", vm), _size(size_bytes),
                                     "raw", _checksum(checksum), False,
                                     stage_into=str(self._mirror_stages.path(stage, mirror_transfer.IMPORT_PREFIX)))
        return {"address": self.upload_address, "token": ticket.token, "tls": self.upload_tls, "stage": stage}

    def restore_stream(self, stage: str, links: list[dict[str, Any]], within_s: float | None = None
                       ) -> dict[str, int]:
        """Make a streamed import's volumes from its stage (`pvc.node.mirror_transfer.MirrorStages.apply_chain`):
        `links`, their volumes renamed to the new ones, giving up after `within_s`; returns their sizes."""
        links = mirror_manifest.checked_chain(links)
        for link in links:
            for volume in link["volumes"]:
                guest_snapshots.split_volume(volume["volume"])
        return self._mirror_stages.apply_chain(stage, links, backups.Deadline(within_s))

    def mirror_discard(self, stage: str) -> None:
        self._mirror_stages.discard(stage)

    def import_discard(self, stage: str) -> None:
        self._mirror_stages.discard(stage, mirror_transfer.IMPORT_PREFIX)

    def open_appliance_upload(self, pool: str, appliance: str, size_bytes: int, importer: str,
                              checksum: str) -> dict[str, Any]:
        """A single-use token for one appliance upload (`pvc.node.appliance_uploads`) of exactly `size_bytes`
        with `checksum`, read by the appliance importer `importer`, its disks landing in `pool`."""
        if importer not in self._appliance_importers:
            known = ", ".join(sorted(self._appliance_importers)) or "none"
            raise InvalidInput(f"unknown appliance importer {importer!r} (known: {known})")
        declared = checksum if isinstance(checksum, str) and checksum.startswith(bulk.TRAILER_PREFIX) \
            and _checksum(checksum[len(bulk.TRAILER_PREFIX):]) else _checksum(checksum)
        ticket = self._tickets.issue(schema.check_name("pool", pool), schema.check_name("OVA", appliance),
                                     _size(size_bytes), "auto", declared, False, importer)
        return {"address": self.upload_address, "token": ticket.token, "tls": self.upload_tls}


    # -- provisioner install scripts (`pvc.node.provision_scripts`) ---------------------------------------

    def script_start(self, run_id: str, script: str, document: dict[str, Any]) -> dict[str, Any]:
        """Start install-script run `run_id` (nothing if it exists here already) with `document` as its input,
        each of its ``disks`` given the ``path`` of its volume here; returns the run's status."""
        runner = self._script_runner()
        if not isinstance(document, dict) or not isinstance(document.get("disks"), list):
            raise InvalidInput("an install script's input is a mapping with a list of disks")
        disks = []
        for disk in document["disks"]:
            target = self._backend.volume_target(*_names(disk.get("pool"), disk.get("volume")))
            if not target.qemu_name.startswith("/"):
                raise OperationFailed(f"volume {disk['pool']}/{disk['volume']} is not a file or device on "
                                      f"this node ({self._backend_name} storage): install scripts need volumes "
                                      "they can open as paths")
            disks.append({**disk, "path": target.qemu_name})
        return runner.start(run_id, script, {**document, "disks": disks})

    def script_status(self, run_id: str) -> dict[str, Any]:
        return self._script_runner().status(run_id)

    def script_forget(self, run_id: str) -> None:
        self._script_runner().forget(run_id)

    def _script_runner(self) -> ScriptRunner:
        if self._scripts is None:
            raise OperationFailed("this node does not run provisioner install scripts (provisioner_scripts is "
                                  "off in its pvcnoded.yaml)")
        return self._scripts


def _names(pool: str, volume: str) -> tuple[str, str]:
    return schema.check_name("pool", pool), schema.check_name("volume", volume)


def _checksum(checksum: object) -> str:
    if not isinstance(checksum, str) or len(checksum) != 64 or any(c not in "0123456789abcdef" for c in checksum):
        raise InvalidInput(f"invalid checksum {checksum!r}: must be 64 lowercase hex digits (`pvc.bulk`)")
    return checksum


def _size(size_bytes: object) -> int:
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
        raise InvalidInput(f"invalid size {size_bytes!r}: must be a positive number of bytes")
    return size_bytes


class NodeStorage:
    """Everything storage on a node, started and stopped with its daemon."""

    def __init__(self, node_name: str, settings: dict[str, Any], store: Store,
                 transaction: Callable[[], Transaction]):
        self.backend_name = settings["storage_backend"]
        plugins = plugin_manager.load()
        backend_class = plugins.get("pvc_storage_backends", self.backend_name)
        self.backend: StorageBackend = backend_class(settings)
        self._importers = plugins.registry("pvc_image_importers")
        self._appliance_importers = plugins.registry("pvc_appliance_importers")
        self._node_name = node_name
        self._store = store
        self._transaction = transaction
        self._qemu_img = QemuImg.from_settings(settings)
        self._staging = Path(settings["upload_staging_directory"])
        self._tickets = Tickets(settings["upload_token_lifetime"])
        self._listen_address = settings["upload_listen_address"]
        self._tls = bulk.server_context(settings["tls_cert"], settings["tls_key"])
        self._room = PoolRoom(self.backend)
        self._advertise_host = settings["upload_advertise_host"]
        self._listener: UploadListener | None = None
        self.scripts = ScriptRunner(settings["provisioner_script_directory"], settings["provisioner_script_timeout"]) \
            if settings["provisioner_scripts"] else None
        self.backup_roots = backups.BackupRoots(settings["backup_roots"],
                                                Path(settings["snapshot_pause_directory"]) / EXPORT_JOURNAL)
        self.agent = StorageAgent(self.backend_name, self.backend, self._tickets, self._appliance_importers,
                                  self.scripts, self.backup_roots,
                                  AutobackupExports(self.backend, self.backup_roots, settings), self._staging,
                                  upload_formats(self._importers))

    def start(self) -> None:
        """Prepare the staging directory, sweep what uploads left before a crash, and listen for uploads; a
        refused address is one clear error."""
        self._staging.mkdir(parents=True, exist_ok=True)
        self.backup_roots.sweep()
        sweep_leftovers(self._upload_context(), self.backend_name)
        host, port = config.split_address(self._listen_address)
        try:
            self._listener = UploadListener(host, port, self._tickets, self._upload_context, tls=self._tls)
        except OSError as error:
            raise ConfigError(f"cannot listen for uploads on {self._listen_address}: "
                              f"{error.strerror or error}") from None
        port = self._listener.address.rsplit(":", 1)[1]
        self.agent.upload_address = f"{self._advertise_host}:{port}" if self._advertise_host \
            else self._listener.address
        self.agent.upload_tls = self._tls is not None
        self._listener.start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()

    def facts(self, agent_uri: str) -> dict[str, Any]:
        """What the node record says about storage, so coordinators know where to send storage actions."""
        return {"storage_backend": self.backend_name, "storage_agent_uri": agent_uri,
                "upload_address": self.agent.upload_address, "provisioner_scripts": self.scripts is not None}

    def _upload_context(self) -> UploadContext:
        return UploadContext(self._node_name, self._store, self._transaction, self.backend, self._importers,
                             self._qemu_img, self._staging, self._room, self._appliance_importers)

