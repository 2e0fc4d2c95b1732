"""Benchmarks of VM snapshots and their exports: prints figures, asserts no timings. Run with
`pytest -m bench -s tests/bench/test_bench_vm_snapshots.py`.

- export of a 2 GiB Ceph volume's snapshot (PVC's stream, from the node's librbd helper through the node's code)
  against ``rbd export`` of the same snapshot (target: at least 0.9 of its speed);
- an incremental export after 1 % of the blocks changed, against the full export, on each backend (target:
  under 5 % of its time and size);
- how long a running two-disk guest stays paused during a VM snapshot without an agent, per backend, as the
  node measures it (target: under 100 ms on Ceph), and which way the volumes were snapshotted.

Every figure line starts with "[bench vm-snapshots]".
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import resource
import statistics
import subprocess
import time

import pytest

from pvc.cli.localcluster.ceph import PAXOS_PROPOSE_INTERVAL_S
from pvc.cli.localcluster.guest import domain_xml
from pvc.plugins.storage_ceph import CephBackend
from pvc.plugins.storage_file import FileBackend

from conftest import started_cluster
from guest_support import wait_heartbeat
from scale_support import cpu_seconds
from storage_support import mounted_xfs

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
GiB = 1024 * MiB
SNAPSHOTS = 5


def _say(text: str) -> None:
    print(f"[bench vm-snapshots] {text}  (load {os.getloadavg()[0]:.1f})", flush=True)


class _Counting(io.RawIOBase):
    """A sink that counts what an export writes, so the disk it would land on is not what is measured."""

    def __init__(self):
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


CPU_KINDS = {"ceph-osd": "OSD", "ceph-mon": "monitor", "ceph_export_helper": "export helper"}


def _cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of the Ceph daemons and export helpers on this machine, of this process (the node's
    part of an export runs here), and of the children it reaped (an ``rbd`` run)."""
    spent = {"this process": time.process_time(),
             "rbd": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
             + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            kind = next((name for marker, name in CPU_KINDS.items() if marker in command), None)
            if kind is not None:
                seconds = cpu_seconds(int(pid))
                spent[kind] = spent.get(kind, 0.0) + (seconds or 0.0)
        except OSError:
            continue
    return spent


def _cpu_of(call) -> str:
    """What `call` cost each kind of process, in CPU seconds, and in all."""
    before = _cpu_by_kind()
    call()
    after = _cpu_by_kind()
    spent = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
    spent = {kind: seconds for kind, seconds in spent.items() if seconds > 0.005}
    return ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in sorted(spent.items())) + \
        f"; in all {sum(spent.values()):.2f} CPU s"


def _timed_export(backend, pool, volume, snapshot, parent=None) -> tuple[float, int]:
    sink = _Counting()
    began = time.monotonic()
    backend.snapshot_export(pool, volume, snapshot, parent, sink)
    return time.monotonic() - began, sink.bytes


def _timed_rbd(conf, *arguments: str) -> float:
    began = time.monotonic()
    subprocess.run(["rbd", "-c", str(conf), *arguments], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.monotonic() - began


def _rbd(conf, *arguments: str) -> None:
    subprocess.run(["rbd", "-c", str(conf), *arguments], check=True, capture_output=True, timeout=1800)


def test_ceph_export_against_rbd_export_and_an_incremental_after_one_percent(private_ceph):
    conf = private_ceph.conf
    backend = CephBackend({"ceph_conf": str(conf), "qemu_img_memory_limit_mib": 2048, "qemu_img_cpu_limit_s": 3600})
    backend.pool_create("benchexport", {})
    try:
        backend.volume_create("benchexport", "big", 2 * GiB)
        _rbd(conf, "bench", "--io-type", "write", "--io-size", "4M", "--io-total", "2G", "--io-pattern", "seq",
             "benchexport/big")
        backend.snapshot_create("benchexport", "big", "full")
        rbd_runs, diff_runs, our_runs = [], [], []
        for _round in range(3):  # alternated, so that none has the warmer cache throughout
            rbd_runs.append(_timed_rbd(conf, "export", "--no-progress", "benchexport/big@full", "-"))
            diff_runs.append(_timed_rbd(conf, "export-diff", "--no-progress", "benchexport/big@full", "-"))
            our_runs.append(_timed_export(backend, "benchexport", "big", "full"))
        rbd_s, diff_s = statistics.median(rbd_runs), statistics.median(diff_runs)
        ours_s, ours_bytes = statistics.median(seconds for seconds, _bytes in our_runs), our_runs[0][1]
        _say(f"ceph full export of 2 GiB (medians of 3, alternated): PVC {ours_s:.2f} s ({ours_bytes / MiB:.0f} MiB "
             f"streamed), rbd export {rbd_s:.2f} s: {rbd_s / ours_s:.2f} of its speed (target >= 0.9); "
             f"rbd export-diff alone to /dev/null {diff_s:.2f} s")
        _say("CPU of one full export: rbd export to /dev/null: " + _cpu_of(
            lambda: _timed_rbd(conf, "export", "--no-progress", "benchexport/big@full", "-")))
        _say("CPU of one full export: PVC's stream: " + _cpu_of(
            lambda: _timed_export(backend, "benchexport", "big", "full")))
        stream = b"\0" * (64 * MiB)
        began = time.process_time()
        digest = hashlib.sha256()
        for _chunk in range(ours_bytes // len(stream)):
            digest.update(stream)
        _say(f"SHA-256 of a 2 GiB stream, which every export to a backup or a mirror also computes: "
             f"{time.process_time() - began:.2f} CPU s")
        # 1 % of the blocks: of RBD's 4 MiB objects (what its object map tracks), then of 4 KiB blocks
        # scattered over every object, each from the snapshot before.
        one_percent = f"{2 * GiB // 100 // 1024}K"
        rewrites = (("objects", "full", "4M", "20M"), ("scattered", "objects", "4K", one_percent))
        for name, parent, size, total in rewrites:
            _rbd(conf, "bench", "--io-type", "write", "--io-size", size, "--io-total", total, "--io-pattern", "rand",
                 "benchexport/big")
            backend.snapshot_create("benchexport", "big", name)
            runs = [_timed_export(backend, "benchexport", "big", name, parent) for _round in range(3)]
            incremental_s, incremental_bytes = statistics.median(seconds for seconds, _bytes in runs), runs[0][1]
            alone_s = _timed_rbd(conf, "export-diff", "--no-progress", "--from-snap", parent,
                                 f"benchexport/big@{name}", "-")
            _say(f"ceph incremental export after 1 % of the volume rewritten in {size}iB blocks (median of 3): "
                 f"{incremental_s:.3f} s, {incremental_bytes / MiB:.1f} MiB = {100 * incremental_s / ours_s:.1f} % "
                 f"of the full export's time, {100 * incremental_bytes / ours_bytes:.1f} % of its size (target "
                 f"< 5 %); rbd export-diff alone {alone_s:.3f} s")
    finally:
        backend.volume_remove("benchexport", "big")
        backend.pool_remove("benchexport")


@pytest.fixture(params=["ext4", "xfs"])
def file_store(request, tmp_path):
    """The bench's storage directory: this machine's own filesystem, or a loop-mounted XFS with reflinks."""
    if request.param == "ext4":
        yield request.param, tmp_path
        return
    with mounted_xfs(tmp_path, 3 * GiB) as mountpoint:
        yield request.param, mountpoint


def test_file_export_and_an_incremental_after_one_percent(file_store):
    filesystem, tmp_path = file_store
    backend = FileBackend({"storage_directory": str(tmp_path)})
    backend.pool_create("bench", {})
    backend.volume_create("bench", "big", 2 * GiB)
    path = tmp_path / "bench" / "big"
    with open(path, "r+b") as volume:
        for _ in range(2 * GiB // (4 * MiB)):
            volume.write(os.urandom(4 * MiB))
    with backend.snapshot_batch([("bench", "big")], "full") as batch:
        batch.take()
    full_s, full_bytes = _timed_export(backend, "bench", "big", "full")
    blocks = 2 * GiB // MiB
    with open(path, "r+b") as volume:
        for block in random.Random(1).sample(range(blocks), blocks // 100):
            volume.seek(block * MiB + 4096)
            volume.write(os.urandom(4096))
    backend.snapshot_create("bench", "big", "later")
    incremental_s, incremental_bytes = _timed_export(backend, "bench", "big", "later", "full")
    _say(f"file on {filesystem}, snapshots by {batch.method}: full export of 2 GiB: {full_s:.2f} s, "
         f"{full_bytes / MiB:.0f} MiB")
    _say(f"file on {filesystem}: incremental export after 1 % of the 1 MiB blocks changed: {incremental_s:.2f} s, "
         f"{incremental_bytes / MiB:.1f} MiB = {100 * incremental_s / full_s:.1f} % of the full export's time, "
         f"{100 * incremental_bytes / full_bytes:.1f} % of its size (target < 5 %; on ext4 it reads both "
         "snapshots, which share nothing)")


@pytest.mark.parametrize("backend", ["file", "ceph"])
def test_pause_a_two_disk_guest_sees_during_a_vm_snapshot(backend, tmp_path_factory, request):
    options = {"storage": "ceph", "ceph_conf": request.getfixturevalue("private_ceph").conf} \
        if backend == "ceph" else {}
    for cluster in started_cluster(tmp_path_factory.mktemp(f"pause-{backend}"), nodes=1, coordinators=1,
                                   hypervisor="qemu", **options):
        client = cluster.client
        client.storage.pool_add("pausebench")
        for disk in ("a", "b"):
            client.storage.volume_add("pausebench", disk, 256 * MiB)
        client.vms.define(domain_xml("paused", disks=["pausebench/a", "pausebench/b"], sequence=True), target="hv1")
        client.vms.start("paused", wait=True)
        wait_heartbeat(cluster, "paused", "hv1", after=1)
        held, method = [], None
        for index in range(SNAPSHOTS):
            view = client.vms.snapshot_create("paused", f"p{index}")
            held.append(view["paused_ms"])
            method = view["method"]
        _say(f"{backend}: a running two-disk guest paused {statistics.median(held):.1f} ms (median of {SNAPSHOTS}; "
             f"min {min(held):.1f}, max {max(held):.1f}) per VM snapshot, volumes by {method} "
             "(target < 100 ms on Ceph)" + (f"; monitor's paxos propose interval {PAXOS_PROPOSE_INTERVAL_S} s"
                                             if backend == "ceph" else ""))
        for index in range(SNAPSHOTS):
            client.vms.snapshot_remove("paused", f"p{index}")
        client.vms.remove("paused")
