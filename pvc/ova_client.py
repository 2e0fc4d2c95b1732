"""Uploading an OVA: the file streams to the storage node that imports it over the bulk channel (`pvc.bulk`),
under a ticket of the appliance kind, and the coordinator settles the OVA's record once the stream is over."""
from typing import Any, BinaryIO, Callable

from pvc import bulk
from pvc.errors import PVCError

UPLOAD_CONNECT_TIMEOUT_S = 30.0


def upload_ova(client: Any, name: str, pool: str, source: BinaryIO | str, progress: bulk.Progress | None = None,
               on_size: Callable[[int], None] | None = None, importer: str = "ova") -> dict[str, Any]:
    """Upload the OVA `source` (a path or a binary file) as `name`, its disks landing in `pool`; the OVA as
    recorded (`provisioner.ova_info`). A refused or failed upload leaves nothing behind and raises the node's
    reason. The file is hashed while it is sent, its checksum following the data (`pvc.bulk`'s trailer): the
    node checks it before it settles, and a mismatch removes everything the upload imported.

    :param client: a connected client (`pvc.connect()`).
    :param progress: told how the upload goes (`pvc.bulk.Progress`).
    :param on_size: called once with the file's size, before it is sent.
    :param importer: the appliance importer that reads it: the built-in ``ova``, or a plugin's.
    """
    with bulk.SpooledSource(source) as spooled:
        if on_size:
            on_size(spooled.size)
        declared, key = bulk.trailer_key()
        ticket = client.provisioner.ova_upload(name, pool, spooled.size, declared, importer)
        try:
            bulk.stream_upload(ticket["address"], ticket["token"], spooled, "", UPLOAD_CONNECT_TIMEOUT_S,
                               progress, bulk.client_context(ticket, client.connection.tls_ca), trailer=key)
        except BaseException:
            try:
                client.provisioner.ova_upload_end(name)
            except PVCError:
                pass
            raise
    return client.provisioner.ova_upload_end(name)
