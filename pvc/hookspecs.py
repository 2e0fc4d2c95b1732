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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterable, Literal, Mapping, Protocol, Sequence

import pluggy

from pvc.qemu_img import QemuImg

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


@dataclass(frozen=True)
class FenceResult:
    """What one fencing attempt proved about a node.

    ``off``: the node is powered off (its VMs are gone with it). ``isolated``: the node's storage clients can
    no longer write, though the node may still run. ``failed``: nothing was proven; `reason` says why, in
    words an administrator can act on (it is shown by ``node info`` and logged by the coordinator).
    """

    proven: Literal["off", "isolated", "failed"]
    reason: str
    details: Mapping[str, Any] | None = None
    """What the policy did, for the node's record (the addresses it blocklisted, the BMC it asked)."""
    device_answered: bool | None = None
    """For a *power* level that failed: whether its device answered at all. ``True``: it did (the chassis is
    still on, the credentials were refused, a command was rejected), so the node may well be running and no
    I/O fence alone is accepted in its place. ``False``: it could not be reached (no answer at all, as from a
    BMC that lost power with its host), the one case in which the cluster's ``accept_io_fence`` lets the I/O
    levels stand alone. ``None``: the policy does not say (policies written before this field), which counts
    as answered: an I/O fence is accepted on evidence only."""

    @property
    def confirmed(self) -> bool:
        """Whether anything was proven."""
        return self.proven != "failed"

    @classmethod
    def off(cls, reason: str, **details: Any) -> "FenceResult":
        return cls("off", reason, details or None)

    @classmethod
    def isolated(cls, reason: str, **details: Any) -> "FenceResult":
        return cls("isolated", reason, details or None)

    @classmethod
    def failed(cls, reason: str, device_answered: bool | None = None, **details: Any) -> "FenceResult":
        """Nothing proven; a power level says whether its device answered (`device_answered`)."""
        return cls("failed", reason, details or None, device_answered)


class FencingPolicy(Protocol):
    """One level of a node's fencing chain: a way to make a dead node safe before its VMs run elsewhere.

    A *power* policy (``kind = "power"``) turns the node off and must prove it (``FenceResult.off``); an *I/O*
    policy (``kind = "io"``) cuts the node off from shared storage (``FenceResult.isolated``). A policy must
    never report more than it has proven: anything short of proof is ``FenceResult.failed`` with the reason.
    A power policy that fails says whether its device answered (``FenceResult.failed(reason,
    device_answered=...)``): only a device that could not be reached lets an I/O fence stand alone.
    A policy never raises for an expected failure (an unreachable BMC, refused credentials, a storage error);
    the chain treats an exception as a failed level.

    Policies are called by the leader coordinator, maybe again by the next leader after a failover: `fence`
    must be safe to repeat.

    A policy whose fence outlives the node's return (a storage blocklist) also defines
    ``unfence(node, options, deadline) -> tuple[bool, str]``, called with the same arguments when the node is
    made ready again: it removes what `fence` left in place and returns ``(done, explanation)``. Power
    policies have nothing to undo and leave it out; callers look it up with ``getattr(policy, "unfence",
    None)``.
    """

    description: str
    kind: Literal["power", "io"]

    def fence(self, node: Mapping[str, Any], options: Mapping[str, Any], deadline: float) -> FenceResult:
        """Fence `node` and say what was proven.

        :param node: the node's record as ``nodes.info`` returns it (``name``, ``bmc``, ...), plus
            ``volumes``: every volume (``POOL/VOLUME``) of the VMs placed on the node, for storage fences.
            ``bmc.password`` is in plain text: stored sealed, it is opened in memory for this call only.
        :param options: this level's options for this node (the cluster's fencing settings with the node's
            overrides applied), such as BMC credentials or a Ceph configuration file; a ``password`` is
            opened as the node's is.
        :param deadline: a `time.monotonic` time by which the policy must have returned; it bounds every
            command it runs by the time left and returns ``failed`` once that is gone.
        """


class VolumeTarget(Protocol):
    """A volume an importer writes into, as its storage backend exposes it."""

    qemu_name: str
    """What qemu-img takes as its output: a path, or ``rbd:POOL/IMAGE``."""
    qemu_env: Mapping[str, str]
    """Environment qemu-img needs to reach it (``CEPH_CONF``), empty for a plain file."""

    def raw_writer(self, size_bytes: int) -> ContextManager[BinaryIO]:
        """A writable stream that creates the volume, `size_bytes` long, from raw bytes written in order.

        Zero blocks may be skipped (the volume stays sparse or thin). Leaving the context without an
        exception completes the volume; with one, the backend leaves the partial volume for the caller to
        remove."""


class ImageImporter(Protocol):
    """Turns an uploaded image into the raw bytes of a new volume.

    The upload path picks the importer whose `formats` include the image's format (given by the user or
    detected from its magic bytes: `pvc.qemu_img.resolve_format`; a format only a plugin declares is given).
    Every upload is hostile: an importer must never let the image make it read any file but the upload itself
    (see `pvc.qemu_img`)."""

    description: str
    formats: tuple[str, ...]
    needs_seekable_source: bool
    """False if the bytes can go straight into the volume as they arrive; True if they must first be staged
    in a temporary file (qemu-img cannot read a pipe or a socket)."""

    def inspect(self, source_path: str, image_format: str, qemu_img: QemuImg) -> int:
        """The image's virtual size in bytes, after refusing (`pvc.errors.InvalidInput`) anything hostile or
        broken. Called before anything is written to storage; not called for streamed sources.

        :param source_path: what qemu-img reads: the staging file, served over NBD (an ``nbd+unix://`` URL)
            while it is still arriving, so the importer may work as the upload streams in."""

    def import_image(self, source: str | Iterable[bytes], size_bytes: int, image_format: str,
                     target: VolumeTarget, qemu_img: QemuImg) -> None:
        """Write the image as raw data into the new volume `target`, `size_bytes` long.

        :param source: the staged upload's path or URL (as for `inspect`) when `needs_seekable_source`,
            else the upload's chunks as they arrive.
        :param size_bytes: the virtual size `inspect` returned, or for a streamed source its length.
        """


class ApplianceVolumes(Protocol):
    """Where an appliance importer puts the appliance's disks: new volumes in the upload's pool, one per disk
    `index` (the order of the appliance's disks). They stay hidden until the whole appliance is imported and
    checked, and are removed if anything fails, so an importer never cleans up after itself."""

    staging_directory: Path
    """Where the importer may stage files it must seek (a streamOptimized VMDK): a name starting with
    ``.stage-`` there is swept if the node dies mid-import."""

    def check_room(self, size_bytes: int) -> None:
        """Refuse (`pvc.errors.InvalidInput`) an appliance whose disks, `size_bytes` in all, the pool cannot
        hold; an importer calls it once it knows the disks' capacities, before writing any."""

    def check_hardware(self, vcpus: int, memory_bytes: int) -> None:
        """Refuse (`pvc.errors.InvalidInput`) an appliance with more vCPUs than the CPUs, or more memory than
        the memory, of the cluster's largest node, naming the figures; an importer calls it once it has read
        the appliance's hardware, before writing any disk."""

    def target(self, index: int) -> VolumeTarget:
        """Disk `index`'s volume, not yet created, as an importer's output (qemu-img creates it)."""

    def create(self, index: int, size_bytes: int) -> None:
        """Create disk `index`'s volume empty (zero), `size_bytes` long: a disk the appliance ships blank."""

    def resize(self, index: int, size_bytes: int) -> None:
        """Grow disk `index`'s volume to `size_bytes` (an image smaller than the disk's declared capacity)."""


@dataclass(frozen=True)
class ApplianceResult:
    """What an appliance importer made of an archive."""

    volumes: list[dict[str, Any]]
    """One entry per volume written, in `index` order: ``{"index", "size_bytes", "source", "image_format"}``
    (``source``: the file in the archive it came from, None for a blank disk)."""
    hardware: dict[str, Any]
    """The appliance's virtual hardware as plain data (`pvc.ovf.Appliance.hardware` for an OVA): name,
    vcpus, memory_bytes, firmware, disks (capacity, bus), nics, ..."""
    details: dict[str, Any]
    """What else a user should know, as plain data: for an OVA its manifest status (``verified``, ``partial``,
    ``absent``), the files no digest covered, and its certificate."""


class ApplianceImporter(Protocol):
    """Turns an uploaded appliance archive (an OVA, ...) into several volumes and a hardware description.

    The archive arrives as a stream that cannot seek: the importer reads it once, in order, keeping memory
    bounded (never a whole disk in memory). Every archive is hostile: an importer refuses anything unsafe or
    broken with a one-line `pvc.errors.InvalidInput` and must never let it make the node read any other file
    (see `pvc.qemu_img`)."""

    description: str

    def import_appliance(self, source: BinaryIO, size_bytes: int, volumes: ApplianceVolumes,
                         qemu_img: QemuImg) -> ApplianceResult:
        """Read the archive from `source` (exactly `size_bytes`), write its disks into `volumes`.

        :param source: the upload's bytes as they arrive; reading past its end gives ``b""``. The upload's
            checksum is verified when the stream is read to its end, after this returns.
        :param volumes: where disks go (`ApplianceVolumes`).
        :param qemu_img: how qemu-img runs on this node (limits).
        :return: the volumes written and the appliance's hardware (`ApplianceResult`).
        """


class StorageBackend(Protocol):
    """Where volumes live. A node constructs its backend class once, as ``backend(settings)`` with the node's
    settings, and runs every storage action through it; the coordinator records the results in ZooKeeper.

    Every method acts at once and raises a `pvc.errors.PVCError` (usually `OperationFailed`) whose message
    says, on one line, what failed and the storage's own reason. Names reaching a backend are already
    checked (`pvc.schema.check_name`): never empty, never a path."""

    description: str
    shares_volumes: bool
    """Whether every node reaches the same volumes (network storage, a shared mount), so a live migration
    leaves the disks where they are; libvirt is told a migration is safe only when this is true."""

    def pool_create(self, pool: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Make the pool; return the options as applied (defaults filled in), for the pool's record."""

    def pool_remove(self, pool: str) -> None:
        """Remove an empty pool (the coordinator has checked it holds no volumes)."""

    def pool_usage(self, pool: str) -> dict[str, int]:
        """``{"used_bytes", "free_bytes"}``: what the pool's data takes and what it can still hold."""

    def volume_create(self, pool: str, volume: str, size_bytes: int) -> None:
        """A new, empty (zero) volume of `size_bytes`."""

    def volume_remove(self, pool: str, volume: str) -> None:
        """Remove the volume and its snapshots; a missing volume is not an error (removal is idempotent)."""

    def volume_size(self, pool: str, volume: str) -> int | None:
        """The volume's size in bytes, or None if it does not exist."""

    def volume_resize(self, pool: str, volume: str, size_bytes: int) -> None:
        """Grow or shrink the volume to `size_bytes`."""

    def volume_rename(self, pool: str, volume: str, new_name: str) -> None:
        """Rename within the pool, keeping data and snapshots."""

    def volume_copy(self, pool: str, volume: str, new_name: str, snapshot: str | None = None) -> None:
        """A new independent volume `new_name` with the data of `volume` (or of its `snapshot`)."""

    def volume_clone_linked(self, pool: str, volume: str, new_name: str) -> None:
        """Optional (without it the node makes a copy with `volume_copy`): a new volume `new_name` with the data
        of `volume`, sharing it until written where the storage has copy-on-write clones (Ceph RBD). A volume
        with linked clones can be removed only once `volume_detach_clones` has made them independent."""

    def volume_detach_clones(self, pool: str, volume: str) -> list[str]:
        """Optional, with `volume_clone_linked`: make every linked clone of `volume` independent of it (Ceph:
        flatten), so `volume` can be removed; the clones' names as ``POOL/VOLUME``."""

    def volume_replace(self, pool: str, source: str, target: str) -> ContextManager[None]:
        """A context manager: give `target` the data and size of volume `source`, which is gone afterwards;
        `target`'s snapshots survive. The old data is kept aside until the block ends, and put back if the
        block (recording the change) or the replacement itself fails. Used to land an upload onto an
        existing volume only once it is complete."""

    def volume_names(self, pool: str) -> list[str]:
        """Every volume in the pool as the storage lists it, hidden ones (uploads in progress) included."""

    def volume_target(self, pool: str, volume: str) -> VolumeTarget:
        """The volume as an importer's output."""

    def disk_source(self, pool: str, volume: str) -> Mapping[str, str]:
        """How this node's hypervisor opens the volume as a VM disk, for the domain XML handed to libvirt
        (a stored domain names volumes only as ``POOL/VOLUME``): ``{"type": "file", "file": PATH}``, or
        ``{"type": "network", "protocol": "rbd", "name": "POOL/IMAGE", "config": CEPH_CONF}``."""

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        """Record the volume's current data as `snapshot`."""

    def snapshot_remove(self, pool: str, volume: str, snapshot: str) -> None:
        """Forget the snapshot; a missing one is not an error."""

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str) -> None:
        """Return the volume's data (and size) to the snapshot's."""

    def health(self, timeout: float) -> tuple[int, str]:
        """Optional (without it the node's storage check says nothing): the storage's own judgement, within
        `timeout` seconds, as a health delta (0: healthy) and one line saying what is wrong (Ceph's health and
        OSDs down or near full; a directory's free space)."""

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        """Optional (`pvc storage volume snapshot rename` is refused without it): rename the snapshot. Done
        already (no `snapshot`, a `new_name`) is not an error, so that a rename whose recording was cut short
        can be repeated."""

    def snapshot_batch(self, volumes: Sequence[tuple[str, str]], snapshot: str) -> ContextManager["SnapshotBatch"]:
        """Optional (without it, a whole-VM snapshot takes `snapshot_create` per volume, one after the other):
        a context manager that gets ready to snapshot every ``(pool, volume)`` of `volumes` as `snapshot` at
        one moment (opening files, starting a helper) and yields a `SnapshotBatch`. A guest is paused only
        between entering the block and the batch's `take` returning, so `take` starts no process: it is
        what a guest's pause lasts. A block left without `take`, or with `take` failed, leaves no snapshot."""


    def snapshot_export(self, pool: str, volume: str, snapshot: str, parent: str | None, output: BinaryIO) -> None:
        """Optional (`pvc vm snapshot export` is refused without it): write the snapshot's data to `output` as
        an ``rbd diff v1`` stream (`pvc.block_diff`): every allocated extent, or with `parent` (an older
        snapshot of the volume) the extents changed since."""

    def snapshot_export_size(self, pool: str, volume: str, snapshot: str, parent: str | None) -> int | None:
        """Optional, with `snapshot_export`: at most how many bytes its stream will hold, found without reading
        the data, or None when that cannot be told cheaply. An export whose destination has less room is refused
        before anything is written."""

    def volume_apply_diff(self, pool: str, volume: str, stream: BinaryIO, what: str) -> None:
        """Optional, with `snapshot_export`: apply an ``rbd diff v1`` stream to the volume (a new, empty one
        for a full stream); a malformed stream is `pvc.errors.InvalidInput` naming `what`."""

    def import_finished(self, pool: str, volume: str) -> None:
        """Optional: tidy a volume once a chain of diffs is applied (Ceph's import-diff leaves snapshots)."""


class SnapshotBatch(Protocol):
    """Snapshots of several volumes prepared by `StorageBackend.snapshot_batch`."""

    method: str
    """How `take` snapshots, in a few words (``reflink``, ``sparse copy``, ``librbd``), for benchmarks and
    logs."""

    def take(self) -> None:
        """Snapshot every volume now, all or none: a failure removes those already taken."""


SEVERITIES = ("warning", "critical")
"""A fault's severity, from least to most urgent: ``critical`` means the node (or cluster) cannot do its work."""


@dataclass(frozen=True)
class HealthResult:
    """What one run of a health check found.

    ``delta`` is what the problem takes off health (0-100); 0 means healthy, and a result with delta 0 clears
    the check's fault. ``message`` is one line an administrator can act on. ``severity`` defaults to
    ``critical`` from a delta of 50 up, else ``warning``."""

    delta: int
    message: str
    severity: str | None = None

    @classmethod
    def healthy(cls, message: str = "ok") -> "HealthResult":
        return cls(0, message)

    @property
    def level(self) -> str:
        """The fault's severity, stated or derived from the delta."""
        return self.severity or ("critical" if self.delta >= 50 else "warning")


class NodeHealthContext(Protocol):
    """What a node health check may look at: the node daemon's own view, every call bounded by `deadline`."""

    name: str
    """The node's name."""
    settings: Mapping[str, Any]
    """The node daemon's settings (``bmc_host``, ``bmc_user``, ``storage_backend``, directories, ...)."""
    deadline: float
    """A `time.monotonic` time by which the check must have returned; it bounds every command it runs by the
    time left. A check still running then counts as failed, and is not started again until it has returned."""

    def deadline_left(self) -> float:
        """Seconds left until `deadline` (at least a tenth of a second)."""

    def libvirt_lost_s(self) -> float | None:
        """Seconds since libvirt last answered this node, None while it answers."""

    def libvirt_lost_settings(self) -> Mapping[str, Any]:
        """``libvirt_lost_action`` and ``libvirt_lost_after`` for this node (`pvc.health.libvirt_lost`)."""

    def figures(self) -> Mapping[str, Any]:
        """The node's latest figures (as in its keepalive) and its facts (``cpus``, ``memory_total_mib``)."""

    def zookeeper_latency_s(self) -> float:
        """The time one ZooKeeper round trip takes now (raises if ZooKeeper does not answer)."""

    def storage_health(self) -> tuple[int, str]:
        """The node's storage backend's own judgement: a delta and a message."""

    def leader_version(self) -> str | None:
        """The PVC version of the leader coordinator, None when unknown."""


class ClusterHealthContext(Protocol):
    """What a leader-run cluster check may look at: the leader coordinator's watched cache."""

    deadline: float

    def node_views(self) -> list[dict[str, Any]]:
        """Every node as ``nodes.info`` shows it (with ``keepalive_age_s``)."""

    def vm_views(self) -> list[dict[str, Any]]:
        """Every VM as ``vms.list`` shows it (``state``, ``node``, ``running``: None while unknown). The views
        are shared with later rounds: read them, never change them."""

    def recoveries(self) -> list[dict[str, Any]]:
        """Each node's latest fence-and-recover task (``node``, ``state``: failed, done, ...; ``reason``)."""

    def autobackup_outcome(self) -> dict[str, Any] | None:
        """The last autobackup run's outcome (``task``, ``state``: done or failed, ``finished``, ``errors``), or
        None before any run."""

    def zookeeper_members(self) -> list[dict[str, Any]]:
        """Each configured ZooKeeper server: ``{"address", "answers": bool, "mode"}``."""


class HealthCheck(Protocol):
    """One thing a node (or the leader, for the cluster) checks on its own interval, off the keepalive path.

    `check` runs on a thread of its own and must return within `timeout` seconds (its context's
    ``deadline``); one that does not counts as failed with `failure_delta`, and is not run again until that
    run has returned (a Python thread cannot be killed). A check should not raise for an expected problem: an
    exception counts as failed as well, with its message."""

    description: str
    timeout: float
    """Seconds one run may take."""
    failure_delta: int
    """What a failed (hanging or raising) run takes off health."""

    def check(self, context: Any) -> HealthResult:
        """Look, and say what was found.

        :param context: a `NodeHealthContext` for a node check, a `ClusterHealthContext` for a cluster check.
        """


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

    Called once per process when the fencing registry is built. The built-ins are ``ipmi`` (power),
    ``ceph-blocklist`` (I/O) and ``none`` (never proves anything), in `pvc.plugins.fencing`.

    :return: a mapping of policy name to an object implementing `FencingPolicy`.

    Example::

        @pvc.hookimpl
        def pvc_fencing_policies():
            return {"acme-pdu": AcmePduOutlet()}
    """


@hookspec
def pvc_image_importers() -> Mapping[str, ImageImporter]:
    """Register image importers by name; an upload is handled by the importer whose `formats` include the
    detected (or given) image format. A format no built-in importer claims is never detected: an upload
    names it, and data a known format's magic claims is refused under it before the importer is called.

    Called once per process when the importer registry is built.

    :return: a mapping of importer name to an object implementing `ImageImporter`.

    Example::

        @pvc.hookimpl
        def pvc_image_importers():
            return {"example-iso": IsoImporter()}
    """


@hookspec
def pvc_storage_backends() -> Mapping[str, type[StorageBackend]]:
    """Register storage backends by name; a node's ``storage_backend`` setting names the one it uses.

    Called once per process when the backend registry is built.

    :return: a mapping of backend name to a class implementing `StorageBackend`.
    """


@hookspec
def pvc_appliance_importers() -> Mapping[str, ApplianceImporter]:
    """Register appliance importers by name; an appliance upload names the one that reads it (``ova``).

    Called once per process when the appliance importer registry is built. The built-in ``ova`` is in
    `pvc.plugins.appliances`.

    :return: a mapping of importer name to an object implementing `ApplianceImporter`.

    Example::

        @pvc.hookimpl
        def pvc_appliance_importers():
            return {"vagrant-box": VagrantBoxImporter()}
    """


@hookspec
def pvc_node_health_checks() -> Mapping[str, HealthCheck]:
    """Register node health checks by name; every node daemon runs each one on its health interval.

    Called once per process when the node check registry is built. The built-ins (``libvirt``,
    ``zookeeper``, ``bmc``, ``storage``, ``disk-space``, ``load``, ``memory``, ``version``) are in
    `pvc.plugins.health_node`. A check's fault is the node's, under the check's name.

    :return: a mapping of check name to an object implementing `HealthCheck`, called with a
        `NodeHealthContext`.

    Example::

        @pvc.hookimpl
        def pvc_node_health_checks():
            return {"raid": RaidArrayDegraded()}
    """


@hookspec
def pvc_cluster_health_checks() -> Mapping[str, HealthCheck]:
    """Register cluster-wide health checks by name; only the leader coordinator runs them.

    Called once per coordinator when the cluster check registry is built. The built-ins (``nodes``,
    ``libvirt``, ``recoveries``, ``vms``, ``zookeeper-ensemble``, ``autobackup``) are in `pvc.plugins.health_cluster`. A
    check's fault belongs to the cluster, under the check's name.

    :return: a mapping of check name to an object implementing `HealthCheck`, called with a
        `ClusterHealthContext`.

    Example::

        @pvc.hookimpl
        def pvc_cluster_health_checks():
            return {"spare-node": SpareNode()}
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "pvc_migration_selectors": "migration selector",
    "pvc_fencing_policies": "fencing policy",
    "pvc_image_importers": "image importer",
    "pvc_storage_backends": "storage backend",
    "pvc_appliance_importers": "appliance importer",
    "pvc_node_health_checks": "node health check",
    "pvc_cluster_health_checks": "cluster health check",
}
"""Each registration hook and what one of its registered names is called in messages."""
