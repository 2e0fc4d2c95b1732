"""qemu-img, run as if every image were hostile.

An uploaded image is attacker-controlled. qemu-img follows whatever an image names: a qcow2 backing file or
external data file, a VMDK descriptor's extents in other files. Converted blindly, such an image copies a file
of the host (``/etc/shadow``, another tenant's volume) into the new volume. So:

* qemu-img never probes: the format is read from the image's magic bytes here (`detect_format`), a given
  format must agree with them (`resolve_format`), and every run is told it (``-f``) — qemu-img's own probing
  would open a VMDK text descriptor, and with it the host files it names, before PVC could refuse it;
* a VMDK must be a self-contained sparse one (``KDMV`` magic); a text descriptor is refused unread;
* every run is under `prlimit` (address space and CPU time) and a wall-clock limit (a process blocked on
  I/O uses no CPU time), so a crafted image cannot exhaust or stall the node;
* `check_self_contained` refuses an image that names any other file, before anything is converted.
"""
import json
import os
import re
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from pvc.errors import InvalidInput, OperationFailed

SUPPORTED_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc", "qed")
SELF_CONTAINED_VMDK_TYPES = ("monolithicSparse", "streamOptimized")
MAGIC_AT_START = {b"QFI\xfb": "qcow2", b"QED\0": "qed", b"KDMV": "vmdk", b"vhdxfile": "vhdx", b"conectix": "vpc"}
VDI_SIGNATURE_OFFSET, VDI_SIGNATURE = 0x40, struct.pack("<I", 0xbeda107f)
VMDK_SPARSE_MAGIC = b"KDMV"
VMDK_HEADER_BYTES = 512
QCOW2_V3_HEADER_BYTES = 104
QCOW2_EXTERNAL_DATA_FILE = 1 << 2
"""The qcow2 header's incompatible-features bit that says its data is in another file."""
_VMDK_DESCRIPTOR = re.compile(rb"(?:(?:#[^\n]*| *\r?)\n)*version=\d\r?\n")
INFO_TIMEOUT_S = 60
WAIT_STEP_S = 0.2
CONVERT_TIMEOUT_S, CONVERT_BYTES_PER_S = 120, 50 << 20
_OPENING = re.compile(r"^(Could not open '[^']*': |[^:]*: error while converting \w+: )")


class QemuImgTimeout(Exception):
    """qemu-img overran its wall-clock limit and was killed."""


@dataclass(frozen=True)
class QemuImg:
    """How qemu-img runs on this node: its resource limits.

    `source_complete`, when set, is an event the wall-clock limit waits for before it starts: qemu-img reading
    an upload that is still arriving waits for the upload, which bounds itself (it fails when it stalls).
    `working_directory` is where it runs: an upload's staging export is named relative to it."""

    memory_limit_bytes: int = 2 << 30
    cpu_limit_seconds: int = 3600
    source_complete: threading.Event | None = None
    working_directory: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "QemuImg":
        """The limits a node's settings give (``qemu_img_memory_limit_mib``, ``qemu_img_cpu_limit_s``)."""
        return cls(settings["qemu_img_memory_limit_mib"] << 20, settings["qemu_img_cpu_limit_s"])

    def command(self, *arguments: str) -> list[str]:
        return ["prlimit", f"--as={self.memory_limit_bytes}", f"--cpu={self.cpu_limit_seconds}", "--",
                "qemu-img", *arguments]

    def run(self, *arguments: str, timeout_s: float, env: Mapping[str, str] | None = None) \
            -> subprocess.CompletedProcess:
        """Run qemu-img; raises `QemuImgTimeout`, having killed it, if it takes longer than `timeout_s`."""
        with subprocess.Popen(self.command(*arguments), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                              cwd=self.working_directory) as process:
            deadline = None if self.source_complete is not None else time.monotonic() + timeout_s
            while True:
                try:
                    stdout, stderr = process.communicate(timeout=WAIT_STEP_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if deadline is None and self.source_complete.is_set():
                    deadline = time.monotonic() + timeout_s
                elif deadline is not None and time.monotonic() > deadline:
                    process.kill()
                    process.communicate()
                    raise QemuImgTimeout()
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def info(self, path: str, image_format: str) -> dict[str, Any]:
        """``qemu-img info -f FORMAT`` as JSON.

        Raises InvalidInput with qemu-img's own reason when it cannot read the image as that format."""
        try:
            result = self.run("info", "--output=json", "-f", image_format, path, timeout_s=INFO_TIMEOUT_S)
        except QemuImgTimeout:
            raise InvalidInput(f"refused: qemu-img took over {INFO_TIMEOUT_S} s to read the {image_format} "
                               "image's header; it was stopped") from None
        if result.returncode != 0:
            raise InvalidInput(f"the upload is not a valid {image_format} image: {_reason(result.stderr)}")
        return json.loads(result.stdout)

    def convert(self, source: str, image_format: str, target: str, size_bytes: int,
                env: Mapping[str, str] | None = None, existing_target: bool = False) -> None:
        """Convert `source` (of `image_format`, `size_bytes` virtual) to raw data in `target` (a path or
        ``rbd:POOL/IMAGE``), writing out of order (``-W``): a raw target has no metadata to keep in order, and
        it is faster. The wall-clock limit grows with the size, far below the node's disk speed."""
        reuse = ["-n"] if existing_target else []
        timeout_s = CONVERT_TIMEOUT_S + size_bytes // CONVERT_BYTES_PER_S
        try:
            result = self.run("convert", "-q", "-W", "-f", image_format, "-O", "raw", *reuse, source, target,
                              timeout_s=timeout_s, env=env)
        except QemuImgTimeout:
            raise OperationFailed(f"converting the {image_format} image took over {timeout_s} s; qemu-img was "
                                  "stopped") from None
        if result.returncode != 0:
            raise InvalidInput(f"converting the {image_format} image failed: {_reason(result.stderr)}")


def detect_format(head: bytes | bytearray) -> str:
    """The format the image's first bytes say, by magic number, as qemu-img would probe it but without
    opening anything: ``raw`` when no format's magic is there. A VMDK text descriptor (which qemu-img would
    probe as vmdk, then read the files it names) is detected as ``vmdk`` so that `check_vmdk` refuses it.
    A fixed VHD keeps its signature only in its last 512 bytes; qemu-img does not probe it either."""
    for magic, image_format in MAGIC_AT_START.items():
        if head.startswith(magic):
            return image_format
    if head[VDI_SIGNATURE_OFFSET:VDI_SIGNATURE_OFFSET + len(VDI_SIGNATURE)] == VDI_SIGNATURE:
        return "vdi"
    if _VMDK_DESCRIPTOR.match(head):
        return "vmdk"
    return "raw"


def resolve_format(given: str, head: bytes | bytearray, plugin_formats: Collection[str] = ()) -> str:
    """The format to import the upload as: the detected one, which a given format (other than ``auto``)
    must match. ``raw`` is refused for data that a format's magic claims (a volume holding an image
    container is a trap for anything that probes it later); ``vpc`` is let through for data with no magic,
    as a fixed VHD has none at its start (``qemu-img -f vpc`` checks its footer).

    A format only a plugin's image importer declares (`plugin_formats`: an ISO, say) has no magic PVC knows:
    it is never detected, only named, and its importer checks the data; data a known format's magic claims
    is refused under it as under ``raw``."""
    detected = detect_format(head)
    if given in plugin_formats and given not in SUPPORTED_FORMATS:
        if detected != "raw":
            raise InvalidInput(f"the upload is a {detected} image, not {given} as given; upload it as "
                               f"{detected} or auto")
        return given
    image_format = detected if given == "auto" else check_supported(given)
    if image_format != detected and not (image_format == "vpc" and detected == "raw"):
        if detected == "raw":
            raise InvalidInput(f"the upload is not a valid {image_format} image: Image is not in {image_format} "
                               "format")
        raise InvalidInput(f"the upload is a {detected} image, not {image_format} as given; upload it as "
                           f"{detected} or auto")
    check_header(image_format, head)
    return image_format


def check_header(image_format: str, head: bytes | bytearray) -> None:
    """Refuse, from its first bytes, an image whose header names other files that ``qemu-img info`` would open
    before `check_self_contained` could refuse them (`check_vmdk`, `check_qcow2`)."""
    if image_format == "vmdk":
        check_vmdk(head)
    elif image_format == "qcow2":
        check_qcow2(head)


def check_vmdk(head: bytes | bytearray) -> None:
    """Refuse a VMDK that is not a binary sparse extent (monolithicSparse, streamOptimized): only a text
    descriptor lacks the magic, and it names its data in other files, which qemu-img opens just to read it. A
    sparse header with no capacity and a descriptor offset is one too: qemu reads that embedded descriptor as
    a text one, and opens the extents it names."""
    if not head.startswith(VMDK_SPARSE_MAGIC):
        raise InvalidInput("VMDK descriptor files are refused: only self-contained sparse VMDK images are accepted")
    if len(head) < VMDK_HEADER_BYTES:
        raise InvalidInput("the VMDK's sparse header is truncated")
    capacity, _grain, descriptor_offset = struct.unpack_from("<QQQ", head, 12)
    if capacity == 0 and descriptor_offset:
        raise InvalidInput("refused: the VMDK's sparse header has no capacity but an embedded descriptor, which "
                           "qemu-img would read as a list of other files")


def check_qcow2(head: bytes | bytearray) -> None:
    """Refuse a qcow2 image whose header names a backing file or an external data file: older qemu-img opened
    the data file just to show the image's information (CVE-2024-4467)."""
    if len(head) < QCOW2_V3_HEADER_BYTES:
        raise InvalidInput("the qcow2 header is truncated")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    if backing_offset:
        raise InvalidInput("refused: the qcow2 image has a backing file; upload a self-contained image "
                           "(qemu-img convert it first)")
    if version >= 3 and struct.unpack_from(">Q", head, 72)[0] & QCOW2_EXTERNAL_DATA_FILE:
        raise InvalidInput("refused: the qcow2 image has an external data file; upload a self-contained image")


def _reason(stderr: str) -> str:
    """qemu-img's last word, without the node's own paths (a user has no business with staging files)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "qemu-img was stopped (resource limit reached?)"
    return _OPENING.sub("", lines[-1].removeprefix("qemu-img: "))


def check_self_contained(info: Mapping[str, Any]) -> None:
    """Refuse an image that refers to any file but itself: a backing file, an external data file, or VMDK
    extents elsewhere (only the single-file VMDK kinds are accepted, and each extent must be the image as
    qemu-img itself names it)."""
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise InvalidInput(f"refused: the {info.get('format')} image has a backing file ({backing!r}); "
                           "upload a self-contained image (qemu-img convert it first)")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise InvalidInput(f"refused: the {info.get('format')} image has an external data file "
                           f"({specific['data-file']!r}); upload a self-contained image")
    if info.get("format") == "vmdk":
        create_type = specific.get("create-type")
        if create_type not in SELF_CONTAINED_VMDK_TYPES:
            raise InvalidInput(f"refused: VMDK of type {create_type!r} keeps its data in other files; upload a "
                               f"single-file VMDK ({' or '.join(SELF_CONTAINED_VMDK_TYPES)})")
        for extent in specific.get("extents") or []:
            if extent.get("filename") != info.get("filename"):
                raise InvalidInput(f"refused: the VMDK names an extent in another file "
                                   f"({extent.get('filename')!r})")


def virtual_size(info: Mapping[str, Any]) -> int:
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise InvalidInput("the image reports no virtual size")
    return size


def check_supported(image_format: str) -> str:
    if image_format not in SUPPORTED_FORMATS:
        raise InvalidInput(f"unsupported image format {image_format!r} (supported: {', '.join(SUPPORTED_FORMATS)})")
    return image_format

