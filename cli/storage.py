"""`pvc storage`: pools, volumes, snapshots and image uploads."""
import sys
import time

import click

from pvc import sizes
from pvc.cli import output
from pvc.cli.confirm import confirm_option
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
    output.column("POOL", "pool"),
    output.column("VOLUME", "volume"),
    output.column("CREATED", "created",
                  lambda stamp: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"),
    output.column("VM SNAPSHOT", "vm_snapshot"),
]


def _volume_details(volume: dict) -> str:
    return output.details([
        ("Name", volume["name"]),
        ("Pool", volume["pool"]),
        ("Size", f"{sizes.human(volume['size_bytes'])} ({volume['size_bytes']} bytes)"),
        ("Snapshots", output.plain(volume["snapshots"])),
        ("Used by", output.plain(volume["used_by"])),
        ("Pending", volume["pending"] or "-"),
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


@group.command("check")
@click.argument("pool", required=False)
@output.format_option
@click.pass_obj
def check(session, pool: str | None, output_format: str) -> None:
    """Finish or undo volume changes that were cut off (a coordinator that died midway, a node action that
    failed and could not be undone), in POOL or in every pool."""
    output.show(session.client.storage.check(pool), output_format,
                lambda done: "\n".join(done) if done else "nothing to resolve")


@group.group("pool")
def pool() -> None:
    """Storage pools."""


def _replication(_context: click.Context, _parameter: click.Parameter, value: str | None) -> dict[str, int]:
    """Upstream's ``copies=3,mincopies=2`` as pool options."""
    if value is None:
        return {}
    options = {}
    for part in value.split(","):
        key, _, number = part.partition("=")
        if key.strip() not in ("copies", "mincopies") or not number.strip().isdigit():
            raise click.BadParameter(f"expected copies=N,mincopies=M, not {value!r}")
        options[key.strip()] = int(number)
    return options


@pool.command("add")
@click.argument("name")
@click.argument("pgs", metavar="[PGS]", type=int, required=False)
@click.option("--pg-num", type=int, default=None, help="ceph: placement groups (default: from the OSD count)")
@click.option("--replcfg", callback=_replication, metavar="copies=N,mincopies=M",
              help="ceph: replicas kept, and how many must be up for I/O (default: Ceph's)")
@output.format_option
@click.pass_obj
def pool_add(session, name: str, pgs: int | None, pg_num: int | None, replcfg: dict[str, int],
             output_format: str) -> None:
    """Create a pool on the cluster's storage backend; PGS (upstream's spelling) is --pg-num. A backend
    without placement groups or replicas (file) refuses them."""
    if pgs is not None and pg_num is not None and pgs != pg_num:
        raise click.UsageError(f"PGS {pgs} and --pg-num {pg_num} disagree: give one")
    pg_num = pg_num if pg_num is not None else pgs
    options = {**({"pg_num": pg_num} if pg_num is not None else {}), **replcfg}
    output.show(session.client.storage.pool_add(name, options), output_format,
                lambda pool_view: output.table([pool_view], _POOL_COLUMNS))


@pool.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="also remove every volume the pool holds")
@confirm_option("Remove storage pool {name} and destroy its data")
@click.pass_obj
def pool_remove(session, name: str, force: bool) -> None:
    """Remove a pool (one holding volumes only with --force)."""
    session.client.storage.pool_remove(name, force)
    click.echo(f"Removed storage pool {name}")


@pool.command("list")
@click.argument("limit", metavar="[REGEX]", required=False)
@output.list_format_option
@click.pass_obj
def pool_list(session, limit: str | None, output_format: str) -> None:
    """Every pool; with REGEX, those whose name it matches."""
    output.show(output.matching(session.client.storage.pool_list(), limit), output_format,
                lambda rows: output.table(rows, _POOL_COLUMNS))


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
@confirm_option("Resize volume {pool}/{name} to {size}")
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
@confirm_option("Rename volume {pool}/{name} to {new_name}")
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
@confirm_option("Remove volume {pool}/{name} and delete its data")
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
@click.option("-p", "--pool", "pool_option", metavar="POOL", help="only this pool's volumes (as POOL)")
@output.list_format_option
@click.pass_obj
def volume_list(session, pool: str | None, pool_option: str | None, output_format: str) -> None:
    """Every volume, or those of POOL."""
    output.show(session.client.storage.volume_list(_one_pool(pool, pool_option)), output_format,
                lambda rows: output.table(rows, _VOLUME_COLUMNS),
                lambda rows: [f"{row['pool']}/{row['name']}" for row in rows])


def _one_pool(argument: str | None, option: str | None) -> str | None:
    if argument and option and argument != option:
        raise click.UsageError(f"POOL {argument} and --pool {option} disagree: give one")
    return argument or option


@volume.command("upload")
@click.argument("pool")
@click.argument("name")
@click.argument("file", type=click.File("rb", lazy=False))
@click.option("-f", "--format", "image_format", default="auto", show_default=True,
              help=f"the image's format: auto detects it on the node from its magic bytes; "
                   f"{', '.join(SUPPORTED_FORMATS)}; or a format an image importer plugin declares "
                   "(pvc plugin list), which is never detected")
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
@confirm_option("Remove snapshot {pool}/{volume_name}@{name}")
@click.pass_obj
def snapshot_remove(session, pool: str, volume_name: str, name: str) -> None:
    """Remove a snapshot."""
    session.client.storage.snapshot_remove(pool, volume_name, name)
    click.echo(f"Removed snapshot {pool}/{volume_name}@{name}")


@snapshot.command("rollback")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@click.argument("name", metavar="SNAPSHOT")
@confirm_option("Roll volume {pool}/{volume_name} back to snapshot {name}: what it holds now is lost")
@output.format_option
@click.pass_obj
def snapshot_rollback(session, pool: str, volume_name: str, name: str, output_format: str) -> None:
    """Return a volume to a snapshot (not while a VM uses it)."""
    output.show(session.client.storage.snapshot_rollback(pool, volume_name, name), output_format,
                _volume_details)


@snapshot.command("rename")
@click.argument("pool")
@click.argument("volume_name", metavar="VOLUME")
@click.argument("name", metavar="SNAPSHOT")
@click.argument("new_name")
@output.format_option
@click.pass_obj
def snapshot_rename(session, pool: str, volume_name: str, name: str, new_name: str, output_format: str) -> None:
    """Rename a snapshot of a volume."""
    output.show(session.client.storage.snapshot_rename(pool, volume_name, name, new_name), output_format,
                lambda view: output.table([view], _SNAPSHOT_COLUMNS))


@snapshot.command("list")
@click.argument("pool", required=False)
@click.argument("volume_name", metavar="[VOLUME]", required=False)
@click.option("-p", "--pool", "pool_option", metavar="POOL", help="only this pool's snapshots (as POOL)")
@click.option("-o", "--volume", "volume_option", metavar="VOLUME",
              help="only this volume's snapshots (as VOLUME; in any pool when no pool is given)")
@output.list_format_option
@click.pass_obj
def snapshot_list(session, pool: str | None, volume_name: str | None, pool_option: str | None,
                  volume_option: str | None, output_format: str) -> None:
    """Every snapshot of every volume, or those of POOL, or of POOL's VOLUME."""
    pool = _one_pool(pool, pool_option)
    if volume_name and volume_option and volume_name != volume_option:
        raise click.UsageError(f"VOLUME {volume_name} and --volume {volume_option} disagree: give one")
    volume_name = volume_name or volume_option
    if pool and volume_name:
        rows = session.client.storage.snapshot_list(pool, volume_name)
    else:
        rows = [row for row in session.client.storage.snapshot_list(pool)
                if volume_name in (None, row["volume"])]
    output.show(rows, output_format, lambda shown: output.table(shown, _SNAPSHOT_COLUMNS),
                lambda shown: [f"{row['pool']}/{row['volume']}@{row['name']}" for row in shown])
