"""The client's `vms` area: every remote method, plus `snapshot_export_to`, which streams a VM snapshot's export
from the storage node that stages it to the caller over the bulk channel (`pvc.bulk.stream_download`).

A streamed export is one file: a JSON line (`STREAM_FORMAT`, the manifest a mirror send declares
(`pvc.mirror_manifest`), the size and checksum of the data), then the data, exactly the stream a mirror send
carries (each volume's ``rbd diff v1`` stream in the manifest's order). Its first line says how long it is, so
several can be read one after another from one pipe.
"""
import json
from typing import Any, BinaryIO

from pvc import bulk
from pvc.client import Area

STREAM_FORMAT = "pvc-vm-stream/1"
DOWNLOAD_CONNECT_TIMEOUT_S = 30.0


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
