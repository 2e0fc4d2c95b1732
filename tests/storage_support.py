"""What the storage tests share: images made by the real qemu-img, and looking at the storage itself (the volume's
bytes, leftovers) the way an administrator would, apart from PVC's own answers."""
from __future__ import annotations

import hashlib
import random
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from click.testing import CliRunner, Result

from pvc.cli.localcluster.guest import domain_xml
from pvc.cli.main import cli

MIB = 1 << 20

# name -> (qemu-img output format, its -o options)
IMAGE_KINDS = {
    "raw": ("raw", ""),
    "qcow2": ("qcow2", ""),
    "vmdk-monolithicSparse": ("vmdk", "subformat=monolithicSparse"),
    "vmdk-streamOptimized": ("vmdk", "subformat=streamOptimized"),
    "vdi": ("vdi", ""),
    "vhdx": ("vhdx", ""),
    "vpc": ("vpc", ""),
    "qed": ("qed", ""),
}


def pvc(cluster, *args: str, input: bytes | str | None = None) -> Result:
    """Run `pvc ARGS` in-process, configured as a user would be (PVC_CONFIG)."""
    return CliRunner().invoke(cli, list(args), input=input,
                                              env={"PVC_CONFIG": str(cluster.local.client_config),
                                                   "PVC_URI": None, "PVC_API_KEY": None})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def known_raw(path: Path, size: int = 3 * MIB, seed: int = 7) -> Path:
    """A raw image with recognisable content: random data, a zero hole, random data again."""
    rng = random.Random(seed)
    third = size // 3
    with open(path, "wb") as file:
        file.write(rng.randbytes(third))
        file.write(bytes(third))
        file.write(rng.randbytes(size - 2 * third))
    return path


def vm_on_known_disk(client, prefix: str, directory: Path, seed: int) -> tuple[str, str, Path]:
    """A new pool holding volume ``disk`` uploaded from an 8 MiB `known_raw` image, and a stopped VM on it
    placed on hv1: (pool, VM, the image)."""
    pool, vm = unique(prefix), unique(f"{prefix}vm")
    client.storage.pool_add(pool)
    image = known_raw(directory / "base.raw", size=8 * MIB, seed=seed)
    client.storage.upload(pool, "disk", str(image))
    client.vms.define(domain_xml(vm, disk=f"{pool}/disk", domain_type="kvm"), target="hv1")
    return pool, vm, image


@contextmanager
def mounted_xfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    """A fresh XFS with reflinks, loop-mounted from a sparse image in `directory` (mkfs.xfs accepts no less than
    300 MiB); yields its mount point, unmounted afterwards."""
    image, mountpoint = directory / "xfs.img", directory / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as file:
        file.truncate(size_bytes)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def make_image(directory: Path, kind: str, size: int = 3 * MIB, seed: int = 7) -> Path:
    """An image of `kind` (see IMAGE_KINDS) that qemu-img made from known raw content."""
    source = known_raw(directory / f"source-{seed}-{size}.raw", size, seed)
    image_format, options = IMAGE_KINDS[kind]
    if image_format == "raw":
        return source
    target = directory / f"image-{kind}-{seed}.{image_format}"
    run("qemu-img", "convert", "-f", "raw", "-O", image_format, *(["-o", options] if options else []),
        str(source), str(target))
    return target


def qemu_raw_sha256(image: Path, directory: Path) -> tuple[str, int]:
    """What `qemu-img convert -O raw` makes of `image`: its checksum and size."""
    raw = directory / f"{image.name}.expected.raw"
    run("qemu-img", "convert", "-O", "raw", str(image), str(raw))
    data = raw.read_bytes()
    raw.unlink()
    return hashlib.sha256(data).hexdigest(), len(data)


def run(*command: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(command, capture_output=True, input=input)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def volume_bytes(cluster, pool: str, volume: str) -> bytes:
    """The volume's data read from the storage itself: the file, or `rbd export`."""
    if cluster.backend == "file":
        return (cluster.local.storage_dir / pool / volume).read_bytes()
    return run("rbd", "-c", cluster.local.state["ceph_conf"], "export", "--no-progress", f"{pool}/{volume}", "-")


def write_in_place(cluster, pool: str, volume: str, offset: int, data: bytes, scratch: Path) -> None:
    """Write `data` into the volume at `offset` as a guest would, touching nothing else: on Ceph through librbd
    (qemu-io), so that `rbd diff` sees only those extents written (an upload writes every one)."""
    if cluster.backend == "file":
        with open(cluster.local.storage_dir / pool / volume, "r+b") as file:
            file.seek(offset)
            file.write(data)
        return
    write_through_librbd(cluster.local.state["ceph_conf"], f"{pool}/{volume}", offset, data, scratch)


def write_through_librbd(conf: str, image: str, offset: int, data: bytes, scratch: Path) -> None:
    """Write `data` into RBD image POOL/NAME at `offset` as a guest would (qemu-io), touching nothing else."""
    scratch.write_bytes(data)
    run("qemu-io", "-f", "raw", f"rbd:{image}:conf={conf}", "-c", f"write -q -s {scratch} {offset} {len(data)}")


@contextmanager
def volume_by_hand(cluster, pool: str, volume: str, data: bytes, scratch: Path) -> Iterator[None]:
    """A volume only the storage holds, made as an administrator would (a file, or `rbd import`), gone after."""
    conf = cluster.local.state.get("ceph_conf")
    if cluster.backend == "file":
        (cluster.local.storage_dir / pool / volume).write_bytes(data)
    else:
        scratch.write_bytes(data)
        run("rbd", "-c", conf, "import", "--no-progress", str(scratch), f"{pool}/{volume}")
    try:
        yield
    finally:
        if cluster.backend == "file":
            (cluster.local.storage_dir / pool / volume).unlink()
        else:
            run("rbd", "-c", conf, "rm", "--no-progress", f"{pool}/{volume}")


def volume_sha256(cluster, pool: str, volume: str) -> str:
    return hashlib.sha256(volume_bytes(cluster, pool, volume)).hexdigest()


def stored_names(cluster, pool: str) -> list[str]:
    """Every name in the pool as the storage lists it, hidden ones included (uploads in progress)."""
    if cluster.backend == "file":
        return sorted(path.name for path in (cluster.local.storage_dir / pool).iterdir() if path.name != ".snapshots")
    import json
    return sorted(json.loads(run("rbd", "-c", cluster.local.state["ceph_conf"], "ls", "--format", "json", pool)))


def staging_files(cluster) -> list[str]:
    return sorted(path.name for node in cluster.local.node_names
                  for path in cluster.local.staging_dir(node).iterdir())


def leftovers(cluster, pool: str) -> list[str]:
    """Whatever a failed upload could have left: hidden volumes in the pool, files in the staging directories."""
    return [name for name in stored_names(cluster, pool) if name.startswith(".")] + staging_files(cluster)
