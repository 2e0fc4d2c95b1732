"""The client's `storage` area: every remote method, plus `upload`, which streams an image to the node that
imports it over the bulk channel (`pvc.bulk`) instead of through Pyro5."""
from typing import Any, BinaryIO, Callable

from pvc import bulk
from pvc.client import Area, Connection

UPLOAD_CONNECT_TIMEOUT_S = 30.0
STORAGE_CALL_TIMEOUT_S = 600.0
"""Storage actions copy, convert and remove data on a node, which takes longer than a control call."""


class StorageClient(Area):
    def __init__(self, connection: Connection, name: str):
        super().__init__(connection, name)
        connection.call_timeouts[name] = STORAGE_CALL_TIMEOUT_S

    def upload(self, pool: str, volume: str, source: BinaryIO | str, image_format: str = "auto",
               force: bool = False, progress: bulk.Progress | None = None,
               on_size: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload an image into `pool`/`volume` and return the volume as recorded.

        :param source: a path, or a binary file-like object (a pipe or an in-memory file is first copied to a
            private temporary file: its size and checksum are announced before the first byte).
        :param image_format: ``auto`` (the node detects it from its magic bytes), one of
            `pvc.qemu_img.SUPPORTED_FORMATS`, or a format an image importer plugin declares (never detected).
        :param force: overwrite a volume even while a VM uses it.
        :param progress: told how the upload goes (`pvc.bulk.Progress`): bytes hashed, bytes sent, then that
            the node is importing them.
        :param on_size: called once with the total size, before the checksum pass.
        """
        with bulk.SpooledSource(source) as spooled:
            if on_size:
                on_size(spooled.size)
            checksum = bulk.checksum_of_file(spooled.file, spooled.offset, spooled.size, progress)
            ticket = self.upload_begin(pool, volume, spooled.size, checksum, image_format, force)
            bulk.stream_upload(ticket["address"], ticket["token"], spooled, checksum, UPLOAD_CONNECT_TIMEOUT_S,
                               progress, bulk.client_context(ticket, self._connection.tls_ca))
        return self.upload_end(pool, volume)
