"""The client's `vms` area: every remote method, plus `snapshot_export_to`, which streams a VM snapshot's export
from the storage node that stages it to the caller over the bulk channel (`pvc.bulk.stream_download`).

A streamed export is one file: a JSON line (`STREAM_FORMAT`, the manifest a mirror send declares
(`pvc.mirror_manifest`), the size and checksum of the data), then the data, exactly the stream a mirror send
carries (each volume's ``rbd diff v1`` stream in the manifest's order). Its first line says how long it is, so
several can be read one after another from one pipe: an import streamed from the client
(`snapshot_import_from`) reads a full export followed by its incrementals (``cat full inc1 inc2``).
"""
import json
import tempfile
from typing import Any, BinaryIO

from pvc import bulk, mirror_manifest
from pvc.client import Area
from pvc.errors import InvalidInput

STREAM_FORMAT = "pvc-vm-stream/1"
DOWNLOAD_CONNECT_TIMEOUT_S = 30.0
MAX_HEAD_BYTES = 1 << 20


class VMsClient(Area):
    def snapshot_export_to(self, vm: str, snapshot: str, output: BinaryIO,
                           incremental_parent: str | None = None) -> dict[str, Any]:
        """Write snapshot `snapshot` of `vm` (whole, or the changes since `incremental_parent`) to the binary
        file-like `output` as a streamed export; returns its manifest with the number of bytes written.

        :raises InvalidInput: the stream ended short or its checksum differs from the one the coordinator
            announced (what arrived before is in `output`)
        """
        ticket = self.snapshot_export_stream(vm, snapshot, incremental_parent)
        head = {"format": STREAM_FORMAT, "manifest": ticket["manifest"], "size_bytes": ticket["size_bytes"],
                "checksum": ticket["checksum"]}
        line = json.dumps(head, sort_keys=True).encode() + b"\n"
        output.write(line)
        bulk.stream_download(ticket["address"], ticket["token"], ticket["size_bytes"], ticket["checksum"], output,
                             DOWNLOAD_CONNECT_TIMEOUT_S, bulk.client_context(ticket, self._connection.tls_ca))
        output.flush()
        return {**ticket["manifest"], "bytes": len(line) + ticket["size_bytes"], "node": ticket["node"]}

    def snapshot_import_from(self, source: BinaryIO, name: str | None = None, pool: str | None = None,
                             spool_directory: str | None = None) -> dict[str, Any]:
        """Define a new, stopped VM from streamed exports read from the binary file-like `source`: a full export
        then its incrementals, in order. Each export's size and checksum are checked as it is read (into a
        private temporary file) and the chain's order from the manifests before anything is sent; the storage
        node checks the whole stream as it lands in its staging space, then every volume's stream against its
        manifest as it applies it, and any failure leaves no volume and no VM behind. Returns the new VM.

        :raises InvalidInput: a truncated or corrupted export, or a broken, reordered or incomplete chain
        :raises AlreadyExists: a VM, or a volume, of the new names exists
        """
        with tempfile.TemporaryFile(dir=spool_directory) as spool:
            links = _read_exports(source, spool)
            mirror_manifest.checked_chain(links)
            size = spool.tell()
            spool.seek(0)
            checksum = bulk.checksum_of_file(spool, 0, size)
            ticket = self.snapshot_import_stream_begin(links, size, checksum, name, pool)
            with bulk.SpooledSource(spool) as spooled:
                bulk.stream_upload(ticket["address"], ticket["token"], spooled, checksum, DOWNLOAD_CONNECT_TIMEOUT_S,
                                   tls=bulk.client_context(ticket, self._connection.tls_ca))
        return self.snapshot_import_stream_end(links, ticket["node"], ticket["stage"], name, pool)

def _read_exports(source: BinaryIO, spool: BinaryIO) -> list[dict[str, Any]]:
    """Every streamed export in `source`, each one's data appended to `spool` and checked against its head."""
    links = []
    while line := source.readline(MAX_HEAD_BYTES + 1):
        number = len(links) + 1
        if not line.endswith(b"\n"):
            raise InvalidInput(f"export {number} in the input has no head line (truncated, or not a streamed export)")
        try:
            head = json.loads(line)
            if head["format"] != STREAM_FORMAT:
                raise ValueError(head["format"])
            size, checksum, manifest = head["size_bytes"], head["checksum"], head["manifest"]
            label = f"export {number} ({manifest['vm']}@{manifest['snapshot']})"
            if not isinstance(size, int) or size < 0:
                raise ValueError(size)
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(f"export {number} in the input is not a {STREAM_FORMAT} stream") from None
        digests, remaining = [], size
        while remaining:
            piece = source.read(min(bulk.PIECE_BYTES, remaining))
            while piece and len(piece) < min(bulk.PIECE_BYTES, remaining):
                more = source.read(min(bulk.PIECE_BYTES, remaining) - len(piece))
                if not more:
                    break
                piece += more
            if len(piece) < min(bulk.PIECE_BYTES, remaining):
                raise InvalidInput(f"{label} is truncated: it ends {remaining - len(piece)} bytes short")
            digests.append(bulk.piece_digest(piece))
            spool.write(piece)
            remaining -= len(piece)
        if bulk.combine_digests(digests) != checksum:
            raise InvalidInput(f"{label} is corrupted: its data does not match its checksum")
        links.append(manifest)
    return links
