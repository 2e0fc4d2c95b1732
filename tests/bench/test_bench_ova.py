"""Benchmark: uploading a 1 GiB two-disk OVA (streamOptimized VMDKs, each disk 1 GiB virtual, half random data)
and importing it on the node while it arrives, against doing the same locally (`tar -x`, then `qemu-img convert`
of each disk to a raw file); and the peak RSS growth of pvcnoded and its children (qemu-img included) during
the import.

Run with ``pytest -m bench -s tests/bench/test_bench_ova.py``; it prints figures and asserts none."""
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from pvc.ova_client import upload_ova

from bench.test_upload_bench import timed
from conftest import started_cluster
from ova_support import DiskSpec, appliance_ova, raw_image, stream_vmdk
from storage_support import MIB

DISK_BYTES = 1 << 30
ROUNDS = 3
SAMPLE_INTERVAL_S = 0.02

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def bench_ova(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bench-ova")
    specs = []
    for index in range(2):
        raw = raw_image(directory / f"disk{index}.raw", DISK_BYTES, seed=50 + index, random_fraction=0.5)
        specs.append(DiskSpec(stream_vmdk(raw, directory / f"disk{index}.vmdk"), DISK_BYTES))
        raw.unlink()
    ova = appliance_ova(directory, "bench", specs)
    for spec in specs:
        spec.image.unlink()
    return ova


@pytest.fixture(scope="module")
def bench_cluster(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("bench-cluster"), nodes=1, coordinators=1, storage="file")
    cluster = next(running)
    yield cluster
    next(running, None)


def process_tree_rss(root: int) -> dict[str, int]:
    """The resident bytes of `root` and every descendant now, by program name."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    by_program: dict[str, int] = {}
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            program = fields["Name"].strip()
            by_program[program] = by_program.get(program, 0) + int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    return by_program


class PeakRss(threading.Thread):
    """Samples the RSS of a process tree until stopped; `peak` is the highest total seen, `at_peak` what each
    program held then."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            sample = process_tree_rss(self.root)
            if sum(sample.values()) > self.peak:
                self.peak, self.at_peak = sum(sample.values()), sample
            time.sleep(SAMPLE_INTERVAL_S)

    def stop(self) -> int:
        self._stopping.set()
        self.join()
        return self.peak


def local_baseline(ova: Path, scratch: Path) -> float:
    """`tar -x` of the OVA, then qemu-img converting each disk to a raw file."""
    extracted = scratch / "extracted"
    extracted.mkdir()
    disks = [f"bench-disk{index + 1}.vmdk" for index in range(2)]
    took = timed(["tar", "-x", "-f", str(ova), "-C", str(extracted)],
                 *(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(extracted / disk),
                    str(scratch / f"{disk}.raw")] for disk in disks))
    for path in [*extracted.iterdir(), *scratch.glob("*.raw")]:
        path.unlink()
    extracted.rmdir()
    return took


def test_ova_upload_and_import_against_local_extract_and_convert(bench_cluster, bench_ova, tmp_path):
    client, local = bench_cluster.client, bench_cluster.local
    client.storage.pool_add("bench")
    node_pid = local.daemon_pid("pvcnoded", local.node_names[0])
    size = bench_ova.stat().st_size
    baselines, uploads, growths, phases, at_peak = [], [], [], [], []
    for round_number in range(ROUNDS):
        baselines.append(local_baseline(bench_ova, tmp_path))
        os.sync()
        before = sum(process_tree_rss(node_pid).values())
        sampler = PeakRss(node_pid)
        sampler.start()
        stages: dict[str, float] = {}
        started = time.perf_counter()
        uploaded = upload_ova(client, f"bench{round_number}", "bench", str(bench_ova),
                              progress=lambda stage, _count: stages.setdefault(stage, time.perf_counter()))
        uploads.append(time.perf_counter() - started)
        phases.append((stages["send"] - started, stages["import"] - stages["send"],
                       started + uploads[-1] - stages["import"]))
        growths.append(sampler.stop() - before)
        at_peak.append(", ".join(f"{program} {rss / MIB:.0f}" for program, rss in sorted(sampler.at_peak.items())))
        assert [volume["size_bytes"] for volume in uploaded["volumes"]] == [DISK_BYTES, DISK_BYTES]
        client.provisioner.ova_remove(f"bench{round_number}")

    baseline, upload = statistics.median(baselines), statistics.median(uploads)
    print(f"\n{size / MIB:.0f} MiB OVA (two streamOptimized VMDKs, 1 GiB virtual each, half random), median of "
          f"{ROUNDS}: local tar -x + qemu-img convert {baseline:.2f} s; upload + import {upload:.2f} s "
          f"({size / upload / MIB:.0f} MiB/s); ratio (local/upload) {baseline / upload:.2f} "
          f"(runs: local {', '.join(f'{t:.2f}' for t in baselines)}; upload {', '.join(f'{t:.2f}' for t in uploads)}); "
          f"peak RSS growth of pvcnoded and its children {max(growths) / MIB:.1f} MiB "
          f"(runs: {', '.join(f'{g / MIB:.1f}' for g in growths)}; RSS in MiB at each run's peak: "
          f"{'; '.join(at_peak)}); where the upload's time goes (median): "
          f"before the first byte (ticket, connection; the checksum is computed while sending and follows the "
          f"data) {statistics.median(p[0] for p in phases):.2f} s, streaming while the node stages and converts "
          f"{statistics.median(p[1] for p in phases):.2f} s, after the last byte and the trailer (the last disk's "
          f"conversion, the trailer's check, landing, recording) {statistics.median(p[2] for p in phases):.2f} s")
