"""Ask Ceph, through one librados client, who has RBD images open and run monitor commands, all at once: a
helper of `pvc.plugins.fencing`.

Run by the interpreter Ceph's ``rados`` and ``rbd`` modules are installed for (the ``ceph`` command's; Debian's
ceph-common depends on both), never imported: it imports nothing from PVC. Reads, as JSON on stdin::

    {"conf": PATH, "id": CEPHX_USER or null, "timeout": SECONDS,
     "images": ["POOL/IMAGE", ...], "commands": [MON_COMMAND, ...], "every_image": false}

and writes, as JSON on stdout::

    {"images": {"POOL/IMAGE": {"watchers": [ADDRESS, ...], "lockers": [ADDRESS, ...]} or null (no such image
                or pool) or {"error": WHY}, ...},
     "answers": [{"rc", "output", "status"} for each command, in order]}

With ``every_image``, the images asked about are every RBD image of every pool, besides those named: an RBD
client (a VM's QEMU) watches the header of each image it has open, so their watchers are the RBD clients
connected now.

The ``ceph`` command takes about a second per blocklist entry (its start-up, then one monitor proposal per
command) and ``rbd status`` a process per image; monitor commands sent at once from one client share
proposals, so fifty take about as long as one.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import rados
import rbd

PARALLELISM = 16


def image_clients(cluster: rados.Rados, spec: str) -> dict | None:
    """The client instances watching the image and holding its locks (the exclusive lock outlives a dead
    client's watch, which expires after 30 s). Opened read-only, which adds no watcher of its own."""
    pool, _, name = spec.partition("/")
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        return None
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            watchers = [watcher["addr"] for watcher in image.watchers_list()]
            locks = image.list_lockers()
            lockers = [address for _client, _cookie, address in locks["lockers"]] if locks else []
        return {"watchers": watchers, "lockers": lockers}
    except rbd.ImageNotFound:
        return None
    except Exception as error:  # one image's failure must not hide the others' answers
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        ioctx.close()


def every_image(cluster: rados.Rados) -> list[str]:
    """Every RBD image of every pool, as POOL/IMAGE (a pool that holds no RBD directory holds none)."""
    found = []
    for pool in cluster.list_pools():
        ioctx = cluster.open_ioctx(pool)
        try:
            found += [f"{pool}/{name}" for name in rbd.RBD().list(ioctx)]
        except Exception:  # not an RBD pool
            pass
        finally:
            ioctx.close()
    return found


def main() -> None:
    request = json.load(sys.stdin)
    timeout = max(1, int(float(request["timeout"])))
    cluster = rados.Rados(conffile=request["conf"], rados_id=request.get("id") or None)
    cluster.connect(timeout=timeout)

    def mon_command(command: dict) -> dict:
        try:
            rc, output, status = cluster.mon_command(json.dumps(command), b"", timeout=timeout)
            return {"rc": rc, "output": output.decode(errors="replace"), "status": status}
        except Exception as error:
            return {"rc": -1, "output": "", "status": str(error)}

    images = list(request.get("images") or [])
    if request.get("every_image"):
        images += [image for image in every_image(cluster) if image not in images]
    commands = request.get("commands") or []
    with ThreadPoolExecutor(max(1, min(PARALLELISM, len(images)))) as image_pool, \
            ThreadPoolExecutor(max(1, len(commands))) as command_pool:
        found = image_pool.map(lambda spec: image_clients(cluster, spec), images)
        answers = command_pool.map(mon_command, commands)
        result = {"images": dict(zip(images, found)), "answers": list(answers)}
    cluster.shutdown()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
