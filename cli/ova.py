"""`pvc provisioner ova`: upload, list, inspect and remove OVA appliances."""
import click

from pvc import sizes
from pvc.cli import output
from pvc.cli.confirm import confirm_option
from pvc.cli.storage import _UploadProgress
from pvc.ova_client import upload_ova

_COLUMNS = [
    output.column("NAME", "name"),
    output.column("STATE", "state"),
    output.column("POOL", "pool"),
    output.column("VCPUS", "vcpus"),
    output.column("MEMORY", "memory_mib", output.mib),
    output.column("DISKS", "disks"),
    output.column("SIZE", "size_bytes", sizes.human),
    output.column("FIRMWARE", "firmware"),
    output.column("MANIFEST", "manifest"),
]


def _disks(ova: dict) -> str:
    declared = ova["hardware_disks"]
    return "; ".join(
        f"{volume['pool']}/{volume['name']} {sizes.human(volume['size_bytes'])}"
        + (f" on {declared[index]['bus']}" if index < len(declared) else "")
        + (f" from {volume['source']}" if volume.get("source") else " (blank)")
        for index, volume in enumerate(ova["volumes"])) or "-"


def _details(ova: dict) -> str:
    return output.details([
        ("Name", ova["name"]),
        ("State", ova["state"]),
        ("Pool", output.plain(ova["pool"])),
        ("OS", output.plain(ova["os_description"] or ova["os_type"])),
        ("vCPUs", output.plain(ova["vcpus"])),
        ("Memory", output.mib(ova["memory_mib"])),
        ("Firmware", output.plain(ova["firmware"])),
        ("Disks", _disks(ova)),
        ("NICs", ", ".join(f"{nic['model']} on {nic['network'] or '-'}" for nic in ova["nics"]) or "-"),
        ("Template", output.plain(ova["template"])),
        ("Profile", output.plain(ova["profile"])),
        ("Manifest", output.plain(ova["manifest"])),
        ("Unverified", output.plain(ova.get("unverified_files"))),
        ("Certificate", "recorded" if ova["certificate"] else "none"),
        ("Not imported", output.plain(ova["skipped_files"])),
    ])


@click.group("ova")
def group() -> None:
    """OVA appliances: their disks become volumes, their hardware is recorded for VMs made from them."""


@group.command("upload")
@click.argument("name")
@click.argument("file", type=click.File("rb", lazy=False))
@click.option("--pool", required=True, help="the storage pool the OVA's disks go into")
@click.option("--importer", default="ova", show_default=True,
              help="the appliance importer that reads FILE: ova, or a plugin's (pvc plugin list)")
@output.format_option
@click.pass_obj
def upload(session, name: str, file, pool: str, importer: str, output_format: str) -> None:
    """Upload the OVA FILE ('-' for standard input) as NAME; the node imports it while it arrives."""
    progress = _UploadProgress()
    try:
        result = upload_ova(session.client, name, pool, file, progress=progress, on_size=progress.begin,
                            importer=importer)
    finally:
        progress.finish()
    output.show(result, output_format, _details)


@group.command("list")
@click.argument("limit", required=False)
@output.list_format_option
@click.pass_obj
def list_ovas(session, limit: str | None, output_format: str) -> None:
    """Every OVA (or those whose name matches LIMIT)."""
    output.show(output.matching(session.client.provisioner.ova_list(), limit), output_format,
                lambda rows: output.table(rows, _COLUMNS))


@group.command("info")
@click.argument("name")
@output.format_option
@click.pass_obj
def info(session, name: str, output_format: str) -> None:
    """One OVA: its hardware, volumes and manifest status."""
    output.show(session.client.provisioner.ova_info(name), output_format, _details)


@group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="remove it even while VMs made from it exist")
@confirm_option("Remove OVA {name}, its volumes, its template and its profile")
@click.pass_obj
def remove(session, name: str, force: bool) -> None:
    """Remove an OVA with its volumes, its system template and its profile."""
    session.client.provisioner.ova_remove(name, force)
    click.echo(f"Removed OVA {name}")
