"""Snapshot several RBD images at one moment through librbd: a helper of `pvc.plugins.storage_ceph`.

Run by the interpreter Ceph's ``rados`` and ``rbd`` modules are installed for, never imported: it imports
nothing from PVC. It is started before a guest is paused, opens every image, and waits; the pause then lasts
only the snapshots themselves, with no process started. On stdin, one JSON line::

    {"conf": PATH, "images": ["POOL/IMAGE", ...], "snapshot": NAME}

then, once it has written ``{"ready": true}`` on stdout, the line ``take`` (anything else, or the end of its
input, makes it exit having snapshotted nothing). It answers ``{"taken": true}`` or ``{"error": WHY}``; a
failure removes the snapshots it had made.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import rados
import rbd


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _snapshot(image, name: str):
    try:
        image.create_snap(name, flags=rbd.RBD_SNAP_CREATE_SKIP_QUIESCE)
    except Exception as error:
        return error
    return None


def main() -> int:
    request = json.loads(sys.stdin.readline())
    cluster = rados.Rados(conffile=request["conf"])
    cluster.connect(timeout=30)
    contexts, images = {}, []
    try:
        for spec in request["images"]:
            pool, name = spec.split("/", 1)
            if pool not in contexts:
                contexts[pool] = cluster.open_ioctx(pool)
            images.append((spec, rbd.Image(contexts[pool], name)))
        _say({"ready": True})
        if sys.stdin.readline().strip() != "take":
            return 0
        # All at once, each in a thread (librbd releases the GIL): an image a running QEMU holds the lock of
        # has its snapshot made by that QEMU, one round trip each. The guest is paused or frozen already, so
        # librbd's own quiesce round (a notify every watcher must answer) would only lengthen the pause.
        with ThreadPoolExecutor(len(images)) as pool:
            outcomes = list(pool.map(lambda pair: _snapshot(pair[1], request["snapshot"]), images))
        failed = [(spec, error) for (spec, _image), error in zip(images, outcomes) if error is not None]
        if failed:
            for (_spec, image), error in zip(images, outcomes):
                if error is None:
                    try:
                        image.remove_snap(request["snapshot"])
                    except Exception:
                        pass
            _say({"error": f"{failed[0][0]}: {failed[0][1]}"})
            return 1
        _say({"taken": True})
        return 0
    finally:
        for _spec, image in images:
            image.close()
        for context in contexts.values():
            context.close()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
