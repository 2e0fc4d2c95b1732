"""Upload a disk image (raw, qcow2, vmdk, ...) into a volume, creating the pool if needed.

Usage: python upload_image.py POOL VOLUME IMAGE
"""
import sys

import pvc
from pvc.errors import AlreadyExists

pool, volume, image = sys.argv[1:4]
with pvc.connect() as cluster:
    try:
        cluster.storage.pool_add(pool)
    except AlreadyExists:
        pass
    recorded = cluster.storage.upload(pool, volume, image)    # streamed to a node, converted there
    print(f"{recorded['pool']}/{recorded['name']}: {recorded['size_bytes']} bytes")
