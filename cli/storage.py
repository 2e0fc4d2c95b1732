"""`pvc storage`: pools, volumes, snapshots and image uploads."""
import sys
import time

import click

from pvc import sizes
from pvc.cli import output
from pvc.qemu_img import SUPPORTED_FORMATS

_POOL_COLUMNS = [
    output.column("NAME", "name"),
    output.column("BACKEND", "backend"),
    output.column("VOLUMES", "volumes"),
    output.column("PROVISIONED", "provisioned_bytes", sizes.human),
    output.column("OPTIONS", "options", lambda options: ",".join(f"{k}={v}" for k, v in sorted(options.items()))
                  or "-"),
]

_STATUS_COLUMNS = [
    output.column("POOL", "name"),
    output.column("BACKEND", "backend"),
    output.column("VOLUMES", "volumes"),
    output.column("CAPACITY", "capacity_bytes", sizes.human),
    output.column("USED", "used_bytes", sizes.human),
    output.column("FREE", "free_bytes", sizes.human),
    output.column("PROVISIONED", "provisioned_bytes", sizes.human),
]

_VOLUME_COLUMNS = [
    output.column("POOL", "pool"),
    output.column("NAME", "name"),
    output.column("SIZE", "size_bytes", sizes.human),
    output.column("SNAPSHOTS", "snapshots", lambda names: str(len(names))),
    output.column("USED BY", "used_by"),
]

_SNAPSHOT_COLUMNS = [
    output.column("NAME", "name"),
    output.column("VOLUME", "volume"),
    output.column("CREATED", "created",
                  lambda stamp: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"),
]


def _volume_details(volume: dict) -> str:
    return output.details([
        ("Name", volume["name"]),
        ("Pool", volume["pool"]),
        ("Size", f"{sizes.human(volume['size_bytes'])} ({volume['size_bytes']} bytes)"),
        ("Snapshots", output.plain(volume["snapshots"])),
        ("Used by", output.plain(volume["used_by"])),
    ])


@click.group("storage")
def group() -> None:
    """Storage pools, volumes, snapshots and image uploads."""


@group.command("status")
@output.format_option
@click.pass_obj
def status(session, output_format: str) -> None:
    """Capacity, used and free space of every pool."""
    output.show(session.client.storage.status(), output_format,
                lambda rows: output.table(rows, _STATUS_COLUMNS))


@group.group("pool")
def pool() -> None:
    """Storage pools."""


@pool.command("add")
@click.argument("name")
@click.option("--pg-num", type=int, default=None, help="ceph: placement groups (default: from the OSD count)")
@output.format_option
@click.pass_obj
def pool_add(session, name: str, pg_num: int | None, output_format: str) -> None:
    """Create a pool on the cluster's storage backend."""
    options = {"pg_num": pg_num} if pg_num is not None else {}
    output.show(session.client.storage.pool_add(name, options), output_format,
                lambda pool_view: output.table([pool_view], _POOL_COLUMNS))


@pool.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="also remove every volume the pool holds")
@click.pass_obj
def pool_remove(session, name: str, force: bool) -> None:
    """Remove a pool (one holding volumes only with --force)."""
    session.client.storage.pool_remove(name, force)
    click.echo(f"Removed storage pool {name}")


@pool.command("list")
@output.format_option
@click.pass_obj
def pool_list(session, output_format: str) -> None:
    """Every pool."""
    output.show(session.client.storage.pool_list(), output_format, lambda rows: output.table(rows, _POOL_COLUMNS))


@group.group("volume")
def volume() -> None:
    """Volumes: raw block devices in a pool."""


@volume.command("add")
@click.argument("pool")
@click.argument("name")
@click.argument("size")
@output.format_option
@click.pass_obj
def volume_add(session, pool: str, name: str, size: str, output_format: str) -> None:
    """Create an empty volume of SIZE (binary units: 512M, 10G, 1T)."""
    output.show(session.client.storage.volume_add(pool, name, size), output_format, _volume_details)


@volume.command("resize")
@click.argument("pool")
@click.argument("name")
@click.argument("size")
@click.option("--allow-shrink", is_flag=True, help="allow a smaller size (data beyond it is lost)")
@output.format_option
@click.pass_obj
def volume_resize(session, pool: str, name: str, size: str, allow_shrink: bool, output_format: str) -> None:
    """Resize a volume to SIZE."""
    output.show(session.client.storage.volume_resize(pool, name, size, allow_shrink), output_format,
                _volume_details)


@volume.command("rename")
@click.argument("pool")
@click.argument("name")
@click.argument("new_name")
@output.format_option
@click.pass_obj
def volume_rename(session, pool: str, name: str, new_name: str, output_format: str) -> None:
    """Rename a volume (with its snapshots)."""
    output.show(session.client.storage.volume_rename(pool, name, new_name), output_format, _volume_details)


@volume.command("clone")
@click.argument("pool")
@click.argument("name")
@click.argument("new_name")
@click.option("--snapshot", default=None, help="clone this snapshot of the volume instead of its current data")
@output.format_option
@click.pass_obj
def volume_clone(session, pool: str, name: str, new_name: str, snapshot: str | None, output_format: str) -> None:
    """Copy a volume (or one of its snapshots) into a new volume."""
    output.show(session.client.storage.volume_clone(pool, name, new_name, snapshot), output_format,
                _volume_details)


@volume.command("remove")
@click.argument("pool")
@click.argument("name")
@click.option("--force", is_flag=True, help="remove it even while a VM uses it")
@click.pass_obj
def volume_remove(session, pool: str, name: str, force: bool) -> None:
    """Remove a volume and its snapshots."""
    session.client.storage.volume_remove(pool, name, force)
    click.echo(f"Removed volume {pool}/{name}")


@volume.command("info")
@click.argument("pool")
@click.argument("name")
@output.format_option
@click.pass_obj
def volume_info(session, pool: str, name: str, output_format: str) -> None:
    """One volume in detail."""
    output.show(session.client.storage.volume_info(pool, name), output_format, _volume_details)


@volume.command("list")
@click.argument("pool", required=False)
@output.format_option
@click.pass_obj
def volume_list(session, pool: str | None, output_format: str) -> None:
    """Every volume, or those of POOL."""
    output.show(session.client.storage.volume_list(pool), output_format,
                lambda rows: output.table(rows, _VOLUME_COLUMNS))


@volume.command("upload")
@click.argument("pool")
@click.argument("name")
@click.argument("file", type=click.File("rb", lazy=False))
@click.option("--format", "image_format", type=click.Choice(("auto", *SUPPORTED_FORMATS)), default="auto",
              show_default=True, help="the image's format; auto detects it on the node from its magic bytes")
@click.option("--force", is_flag=True, help="overwrite the volume even while a VM uses it")
@click.option("--json", "as_json", is_flag=True, help="print the volume as JSON (--format names the image's)")
@click.pass_obj
def volume_upload(session, pool: str, name: str, file, image_format: str, force: bool, as_json: bool) -> None:
    """Upload a disk image FILE ('-' for standard input) into volume NAME, converting it to raw.

    The volume is created if missing and grown to the image's virtual size if smaller; a failed upload
    leaves an existing volume untouched and creates none."""
    progress = _UploadProgress()
    try:
        result = session.client.storage.upload(pool, name, file, image_format, force, progress=progress,
                                               on_size=progress.begin)
    finally:
        progress.finish()
    output.show(result, "json" if as_json else "table", _volume_details)


class _UploadProgress:
    """What an upload shows on stderr: a bar while the file is hashed (its checksum goes first), a bar with the
    transfer rate beside the ETA while it is sent, then a line while the node converts and records it."""

    LABELS = {"checksum": "Checksumming", "send": "Uploading"}

    def __init__(self):
        self._size = 0
        self._stage: str | None = None
        self._bar = None
        self._started = 0.0
        self._done = 0

    def begin(self, size: int) -> None:
        self._size = size

    def __call__(self, stage: str, count: int) -> None:
        if stage != self._stage:
            self.finish()
            self._stage = stage
            if stage not in self.LABELS:
                click.echo("Importing on the node...", err=True)
                return
            self._bar = click.progressbar(length=self._size, label=self.LABELS[stage], file=sys.stderr,
                                          show_eta=True, show_percent=True, item_show_func=lambda rate: rate)
            self._bar.__enter__()
            self._started, self._done = time.monotonic(), 0
        if self._bar is not None and count:
            self._done += count
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._bar.update(count, f"{sizes.human(int(self._done / elapsed))}/s")

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@volume.group("snapshot")
def snapshot() -> None:
    """Snapshots of a volume."""


@snapshot.command("add")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@click.argument("name", metavar="SNAPSHOT")
@output.format_option
@click.pass_obj
def snapshot_add(session, pool: str, volume_name: str, name: str, output_format: str) -> None:
    """Snapshot a volume."""
    output.show(session.client.storage.snapshot_add(pool, volume_name, name), output_format,
                lambda view: output.table([view], _SNAPSHOT_COLUMNS))


@snapshot.command("remove")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@click.argument("name", metavar="SNAPSHOT")
@click.pass_obj
def snapshot_remove(session, pool: str, volume_name: str, name: str) -> None:
    """Remove a snapshot."""
    session.client.storage.snapshot_remove(pool, volume_name, name)
    click.echo(f"Removed snapshot {pool}/{volume_name}@{name}")


@snapshot.command("rollback")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@click.argument("name", metavar="SNAPSHOT")
@output.format_option
@click.pass_obj
def snapshot_rollback(session, pool: str, volume_name: str, name: str, output_format: str) -> None:
    """Return a volume to a snapshot (not while a VM uses it)."""
    output.show(session.client.storage.snapshot_rollback(pool, volume_name, name), output_format,
                _volume_details)


@snapshot.command("list")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@output.format_option
@click.pass_obj
def snapshot_list(session, pool: str, volume_name: str, output_format: str) -> None:
    """Every snapshot of a volume."""
    output.show(session.client.storage.snapshot_list(pool, volume_name), output_format,
                lambda rows: output.table(rows, _SNAPSHOT_COLUMNS))
