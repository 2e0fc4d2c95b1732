"""The ``ceph`` storage backend: pools are Ceph pools, volumes RBD images.

It drives the ``rbd`` and ``ceph`` command-line tools with ``--format json`` and parses their output as JSON,
never as text: Debian's Python bindings (python3-rbd) load only into the system Python, and the tools are what
an administrator uses too. The cluster is the one ``ceph_conf`` names; qemu-img reaches it the same way
(``rbd:POOL/IMAGE:conf=...``).
"""
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pvc
from pvc import pipes
from pvc.errors import AlreadyExists, InvalidInput, NotFound, OperationFailed, Unavailable
from pvc.plugins.ceph_exports import CephExporter
from pvc.plugins.fencing import ceph_python
from pvc.qemu_img import QemuImg

MISSING = "No such file or directory"
EXISTS = "File exists"
MIN_PG_NUM, MAX_PG_NUM = 8, 256
SNAPSHOT_HELPER = Path(__file__).with_name("ceph_snapshot_helper.py")
REPLACE_SNAPSHOT = ".replacing"
"""A snapshot holding a volume's old data while an upload replaces it (never a user's name: no dot first)."""
CLONE_BASE_SNAPSHOT = ".clone-base"
"""The protected snapshot a volume's linked clones are made from (`volume_clone_linked`)."""
RBD_OP_TIMEOUT_S = 60
"""How long one rbd request to a monitor or an OSD may wait. Without it a request to a placement group that is
not active (an OSD down, a pool that cannot peer) waits for ever; `rbd children --all` visits every pool, so one
such pool anywhere hung the removal of an OVA. A long flatten or copy is many short requests, each bounded."""
POOL_STATS_WAIT_S = 15
"""How long a pool the monitors list may be missing from the manager's ``ceph df`` (it gathers every 5 s)."""
TIMED_OUT = "Connection timed out"


REPLICATION_OPTIONS = {"copies": "size", "mincopies": "min_size"}
"""Upstream PVC's replication settings of a pool and the Ceph pool settings they are."""

class CephVolumeTarget:
    def __init__(self, backend: "CephBackend", pool: str, volume: str):
        self._backend = backend
        self._image = f"{pool}/{volume}"
        self.qemu_name = f"rbd:{self._image}:conf={backend.conf}"
        self.qemu_env = {"CEPH_CONF": backend.conf}

    @contextmanager
    def raw_writer(self, size_bytes: int) -> Iterator[Any]:
        """``rbd import -`` fed from the upload: rbd skips zero blocks, so the image stays thin."""
        process = subprocess.Popen(self._backend.command("rbd", "import", "--no-progress", "-", self._image),
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield process.stdin
        except BaseException:
            # Killing rbd would leave the image locked by a dead client for 30 s, unremovable; ending its input
            # lets it finish and let go, and the caller removes the partial image.
            process.stdin.close()
            process.wait()
            process.stderr.close()
            raise
        process.stdin.close()
        error = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        if process.wait() != 0:
            raise OperationFailed(f"rbd import into {self._image} failed: {_last_line(error)}")


class CephSnapshotBatch:
    method = "librbd"

    def __init__(self, helper: subprocess.Popen, images: list[str], snapshot: str):
        self._helper = helper
        self._images = images
        self._snapshot = snapshot

    def ready(self, conf: str) -> None:
        self._helper.stdin.write(json.dumps({"conf": conf, "images": self._images, "snapshot": self._snapshot})
                                 + "\n")
        self._helper.stdin.flush()
        self._answer("ready")

    def take(self) -> None:
        self._helper.stdin.write("take\n")
        self._helper.stdin.flush()
        self._answer("taken")

    def close(self) -> None:
        """End the helper: one that was never told to take ends without snapshots."""
        try:
            self._helper.stdin.close()
        except OSError:
            pass
        try:
            self._helper.wait(30)
        except subprocess.TimeoutExpired:
            self._helper.kill()
            self._helper.wait()
        self._helper.stdout.close()
        self._helper.stderr.close()

    def _answer(self, expected: str) -> None:
        line = self._helper.stdout.readline()
        try:
            answer = json.loads(line) if line else {}
        except ValueError:
            answer = {}
        if not answer.get(expected):
            reason = answer.get("error") or _last_line(self._helper.stderr.read() if not line else line)
            raise OperationFailed(f"snapshot {self._snapshot} of {', '.join(self._images)} failed: {reason}")


class CephBackend:
    description = "Ceph RBD images, through the rbd and ceph command-line tools' JSON output"
    shares_volumes = True

    def __init__(self, settings: Mapping[str, Any]):
        self.conf = os.path.abspath(settings["ceph_conf"])
        self._qemu_img = QemuImg.from_settings(settings)
        self._exporter = CephExporter(self.conf, RBD_OP_TIMEOUT_S)

    def command(self, tool: str, *arguments: str) -> list[str]:
        return [tool, "-c", self.conf, *arguments]

    def _run(self, tool: str, *arguments: str, missing_ok: bool = False, creates: str | None = None) -> str | None:
        """Run a tool; with `missing_ok`, None if the image is missing; `creates` names the image it makes, so
        that an existing one is reported as such (one round trip, no separate check)."""
        bounded = [f"--rados-osd-op-timeout={RBD_OP_TIMEOUT_S}", f"--rados-mon-op-timeout={RBD_OP_TIMEOUT_S}"] \
            if tool == "rbd" else []
        result = subprocess.run(self.command(tool, *bounded, *arguments), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=3600)
        if result.returncode != 0:
            if missing_ok and MISSING in result.stderr:
                return None
            if creates and EXISTS in result.stderr:
                raise AlreadyExists(f"RBD image {creates} exists already")
            if TIMED_OUT in result.stderr:
                raise Unavailable(f"{tool} {arguments[0]} got no answer from Ceph within {RBD_OP_TIMEOUT_S} s: "
                                  "some placement group is not active (see ceph health detail)")
            raise OperationFailed(f"{tool} {arguments[0]} failed: {_last_line(result.stderr)}")
        return result.stdout

    def _json(self, tool: str, *arguments: str, missing_ok: bool = False) -> Any:
        output = self._run(tool, *arguments, "--format", "json", missing_ok=missing_ok)
        return None if output is None else json.loads(output)

    def health(self, timeout: float) -> tuple[int, str]:
        """Ceph's own health, its OSDs down and its OSDs near full, from one ``ceph status``."""
        result = subprocess.run(self.command("ceph", "status", "--format", "json", "--connect-timeout",
                                             str(max(1, int(timeout)))),
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if result.returncode != 0:
            return 50, f"ceph status failed: {_last_line(result.stderr)}"
        status = json.loads(result.stdout)
        state = status.get("health", {}).get("status", "HEALTH_UNKNOWN")
        osdmap = status.get("osdmap", {}).get("osdmap", status.get("osdmap", {}))
        total, up = osdmap.get("num_osds", 0), osdmap.get("num_up_osds", 0)
        checks = sorted(status.get("health", {}).get("checks", {}))
        problems = [f"{total - up} of {total} OSDs down"] if up < total else []
        problems += [check for check in checks if check in ("OSD_NEARFULL", "OSD_FULL", "POOL_NEARFULL",
                                                             "POOL_FULL", "OSD_DOWN", "PG_AVAILABILITY")]
        delta = 50 if state == "HEALTH_ERR" or "OSD_FULL" in checks or up == 0 else \
            (10 * max(total - up, 1) if problems else (5 if state != "HEALTH_OK" else 0))
        return min(delta, 100), f"ceph {state}" + (f": {', '.join(problems)}" if problems else
                                                   (f" ({', '.join(checks)})" if checks else ""))

    # -- pools --------------------------------------------------------------------------------------------

    def pool_create(self, pool: str, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"pg_num", *REPLICATION_OPTIONS}
        if unknown:
            raise InvalidInput(f"unknown ceph pool option(s): {', '.join(sorted(unknown))} "
                               f"(known: pg_num, {', '.join(REPLICATION_OPTIONS)})")
        pg_num = options.get("pg_num") or self._default_pg_num()
        if not isinstance(pg_num, int) or isinstance(pg_num, bool) or not 1 <= pg_num <= 32768:
            raise InvalidInput(f"invalid pg_num {pg_num!r}: use a whole number from 1 to 32768")
        replication = _replication(options)
        if pool in self._json("ceph", "osd", "pool", "ls"):
            raise AlreadyExists(f"Ceph pool '{pool}' exists already")
        self._run("ceph", "osd", "pool", "create", pool, str(pg_num), str(pg_num))
        try:
            for option, value in replication.items():
                self._run("ceph", "osd", "pool", "set", pool, REPLICATION_OPTIONS[option], str(value))
            self._run("rbd", "pool", "init", pool)
        except OperationFailed:
            self.pool_remove(pool)
            raise
        return {"pg_num": pg_num, **replication}

    def _default_pg_num(self) -> int:
        """8 placement groups per OSD, as a power of two within 8-256: Ceph caps PGs per OSD (250 by default),
        so a small cluster must not get the 32 or more Ceph would otherwise give every pool."""
        osds = len(self._json("ceph", "osd", "ls"))
        pg_num = MIN_PG_NUM
        while pg_num < 8 * osds and pg_num < MAX_PG_NUM:
            pg_num *= 2
        return pg_num

    def pool_remove(self, pool: str) -> None:
        self._run("ceph", "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")

    def pool_usage(self, pool: str) -> dict[str, int]:
        """From ``ceph df``, which the manager serves from statistics it gathers every few seconds: a pool the
        monitors have just made is missing there until then, so it is waited for, not called missing."""
        deadline = time.monotonic() + POOL_STATS_WAIT_S
        while True:
            for entry in self._json("ceph", "df")["pools"]:
                if entry["name"] == pool:
                    return {"used_bytes": entry["stats"]["stored"], "free_bytes": entry["stats"]["max_avail"]}
            if pool not in self._json("ceph", "osd", "pool", "ls"):
                raise NotFound(f"Ceph has no pool '{pool}'")
            if time.monotonic() > deadline:
                raise Unavailable(f"Ceph's manager has no figures for pool '{pool}' after {POOL_STATS_WAIT_S} s")
            time.sleep(0.5)

    # -- volumes ------------------------------------------------------------------------------------------

    def volume_create(self, pool: str, volume: str, size_bytes: int) -> None:
        self._run("rbd", "create", "--size", f"{size_bytes}B", f"{pool}/{volume}", creates=f"{pool}/{volume}")

    def volume_remove(self, pool: str, volume: str) -> None:
        """A base of linked clones that still has clones is refused by rbd (``unprotect`` fails naming them):
        `volume_detach_clones` first."""
        if self.volume_size(pool, volume) is None:
            return
        for snapshot in self._json("rbd", "snap", "ls", f"{pool}/{volume}", missing_ok=True) or []:
            if str(snapshot.get("protected")).lower() == "true":
                self._run("rbd", "snap", "unprotect", f"{pool}/{volume}@{snapshot['name']}", missing_ok=True)
        self._run("rbd", "snap", "purge", "--no-progress", f"{pool}/{volume}", missing_ok=True)
        self._run("rbd", "rm", "--no-progress", f"{pool}/{volume}", missing_ok=True)

    def volume_size(self, pool: str, volume: str) -> int | None:
        info = self._json("rbd", "info", f"{pool}/{volume}", missing_ok=True)
        return None if info is None else info["size"]

    def volume_resize(self, pool: str, volume: str, size_bytes: int) -> None:
        if self.volume_size(pool, volume) == size_bytes:
            return
        self._run("rbd", "resize", "--no-progress", "--allow-shrink", "--size", f"{size_bytes}B",
                  f"{pool}/{volume}")

    def volume_rename(self, pool: str, volume: str, new_name: str) -> None:
        self._run("rbd", "rename", f"{pool}/{volume}", f"{pool}/{new_name}", creates=f"{pool}/{new_name}")

    def volume_copy(self, pool: str, volume: str, new_name: str, snapshot: str | None = None) -> None:
        source = f"{pool}/{volume}@{snapshot}" if snapshot else f"{pool}/{volume}"
        self._run("rbd", "cp", "--no-progress", source, f"{pool}/{new_name}", creates=f"{pool}/{new_name}")

    def volume_clone_linked(self, pool: str, volume: str, new_name: str) -> None:
        """An RBD clone of the volume's protected base snapshot (made once, hidden from PVC's snapshot
        records): instant, and sharing the base's data until written."""
        base = f"{pool}/{volume}@{CLONE_BASE_SNAPSHOT}"
        snapshots = {entry["name"]: entry for entry in self._json("rbd", "snap", "ls", f"{pool}/{volume}")}
        if CLONE_BASE_SNAPSHOT not in snapshots:
            self._run("rbd", "snap", "create", "--no-progress", base)
        if str((snapshots.get(CLONE_BASE_SNAPSHOT) or {}).get("protected")).lower() != "true":
            self._run("rbd", "snap", "protect", base)
        self._run("rbd", "clone", base, f"{pool}/{new_name}", creates=f"{pool}/{new_name}")

    def volume_detach_clones(self, pool: str, volume: str) -> list[str]:
        """Flatten every clone of the volume's base snapshot (each gets its own copy of the data), then drop
        the base snapshot; the clones' names, as ``POOL/IMAGE``."""
        base = f"{pool}/{volume}@{CLONE_BASE_SNAPSHOT}"
        snapshots = {entry["name"] for entry in self._json("rbd", "snap", "ls", f"{pool}/{volume}",
                                                              missing_ok=True) or []}
        if CLONE_BASE_SNAPSHOT not in snapshots:
            return []
        children = [f"{child['pool']}/{child['image']}" for child in self._json("rbd", "children", "--all", base)]
        for child in children:
            self._run("rbd", "flatten", "--no-progress", child, missing_ok=True)
        self._run("rbd", "snap", "unprotect", base, missing_ok=True)
        self._run("rbd", "snap", "rm", "--no-progress", base, missing_ok=True)
        return children

    @contextmanager
    def volume_replace(self, pool: str, source: str, target: str) -> Iterator[None]:
        """Snapshots belong to an RBD image, so a target that has some keeps its image and gets the data
        copied in, a temporary snapshot keeping the old data; one without is renamed aside and the new image
        renamed in. Either way the old data is put back if anything fails before the block ends."""
        if self._json("rbd", "snap", "ls", f"{pool}/{target}"):
            with self._kept_in_snapshot(pool, target):
                size = self.volume_size(pool, source)
                self.volume_resize(pool, target, size)
                self._qemu_img.convert(f"rbd:{pool}/{source}:conf={self.conf}", "raw",
                                       f"rbd:{pool}/{target}:conf={self.conf}", size, {"CEPH_CONF": self.conf},
                                       existing_target=True)
                self.volume_remove(pool, source)
                yield
            return
        backup = f"{source}.replaced"
        self.volume_rename(pool, target, backup)
        try:
            self.volume_rename(pool, source, target)
            yield
        except BaseException:
            self.volume_remove(pool, target)
            self.volume_rename(pool, backup, target)
            raise
        self.volume_remove(pool, backup)

    @contextmanager
    def _kept_in_snapshot(self, pool: str, volume: str) -> Iterator[None]:
        """The volume's data and size in a temporary snapshot, rolled back to if the block raises."""
        snapshot = f"{pool}/{volume}@{REPLACE_SNAPSHOT}"
        self._run("rbd", "snap", "create", "--no-progress", snapshot)
        try:
            yield
        except BaseException:
            self._run("rbd", "snap", "rollback", "--no-progress", snapshot)
            raise
        finally:
            self._run("rbd", "snap", "rm", "--no-progress", snapshot, missing_ok=True)

    def volume_names(self, pool: str) -> list[str]:
        return sorted(self._json("rbd", "ls", pool))

    def volume_target(self, pool: str, volume: str) -> CephVolumeTarget:
        return CephVolumeTarget(self, pool, volume)

    # -- snapshots ----------------------------------------------------------------------------------------

    def disk_source(self, pool: str, volume: str) -> dict[str, str]:
        return {"type": "network", "protocol": "rbd", "name": f"{pool}/{volume}", "config": self.conf}

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        self._run("rbd", "snap", "create", "--no-progress", f"{pool}/{volume}@{snapshot}")

    @contextmanager
    def snapshot_batch(self, volumes: list[tuple[str, str]], snapshot: str) -> Iterator["CephSnapshotBatch"]:
        """A librbd client (`ceph_snapshot_helper.py`) started with every image open, so that a paused guest
        waits for the snapshots only: no process is started while it is paused."""
        helper = subprocess.Popen([ceph_python(), str(SNAPSHOT_HELPER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        batch = CephSnapshotBatch(helper, [f"{pool}/{volume}" for pool, volume in volumes], snapshot)
        try:
            batch.ready(self.conf)
            yield batch
        finally:
            batch.close()

    def snapshot_export(self, pool: str, volume: str, snapshot: str, parent: str | None, output: Any) -> None:
        """The ``rbd diff v1`` stream of the snapshot (from `parent`, or whole), written into `output`."""
        self._exporter.export(pool, volume, snapshot, parent, output)

    def snapshot_export_size(self, pool: str, volume: str, snapshot: str, parent: str | None) -> int | None:
        """The extents the object map lists, with their records: no data is read."""
        return self._exporter.export_size(pool, volume, snapshot, parent)

    def volume_apply_diff(self, pool: str, volume: str, stream: Any, what: str) -> None:
        """``rbd import-diff`` of the stream, which leaves the snapshot it ends at on the image (the start of
        the next incremental); `import_finished` removes those."""
        process = subprocess.Popen(self.command("rbd", "import-diff", "--no-progress", "-", f"{pool}/{volume}"),
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pipes.widen(process.stdin.fileno())
        try:
            while chunk := stream.read(1 << 20):
                process.stdin.write(chunk)
        finally:
            process.stdin.close()
            error = process.stderr.read().decode(errors="replace")
            process.stderr.close()
            process.wait()
        if process.returncode != 0:
            raise InvalidInput(f"{what} could not be applied: {_last_line(error)}")

    def import_finished(self, pool: str, volume: str) -> None:
        self._run("rbd", "snap", "purge", "--no-progress", f"{pool}/{volume}")

    def snapshot_remove(self, pool: str, volume: str, snapshot: str) -> None:
        self._run("rbd", "snap", "rm", "--no-progress", f"{pool}/{volume}@{snapshot}", missing_ok=True)

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str) -> None:
        self._run("rbd", "snap", "rollback", "--no-progress", f"{pool}/{volume}@{snapshot}")

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        names = {entry["name"] for entry in self._json("rbd", "snap", "ls", f"{pool}/{volume}")}
        if snapshot not in names and new_name in names:
            return
        self._run("rbd", "snap", "rename", f"{pool}/{volume}@{snapshot}", f"{pool}/{volume}@{new_name}")


def _replication(options: Mapping[str, Any]) -> dict[str, int]:
    """`copies` (Ceph's size) and `mincopies` (min_size) as given, checked against each other."""
    given = {key: options[key] for key in REPLICATION_OPTIONS if options.get(key) is not None}
    for key, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10:
            raise InvalidInput(f"invalid {key} {value!r}: use a whole number from 1 to 10")
    if "copies" in given and given.get("mincopies", 1) > given["copies"]:
        raise InvalidInput(f"mincopies ({given['mincopies']}) cannot exceed copies ({given['copies']})")
    return given


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


@pvc.hookimpl
def pvc_storage_backends():
    return {"ceph": CephBackend}
