"""Benchmark: uploading a 1 GiB qcow2 (half of it random data) through the CLI, against doing the same conversion
locally (`cp` of the file, then `qemu-img convert` to a raw file, or on Ceph to ``rbd:POOL/IMAGE``).

Run with ``pytest -m bench -s tests/bench``; it prints figures and asserts none (timings vary by machine)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvc import bulk

from storage_support import MIB, run, unique

IMAGE_BYTES = 1 << 30
ROUNDS = 7
RANDOM_BYTES = IMAGE_BYTES // 2

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def half_random_qcow2(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bench")
    raw = directory / "source.raw"
    with open(raw, "wb") as file:
        for _ in range(RANDOM_BYTES // (64 * MIB)):
            file.write(os.urandom(64 * MIB))
        file.truncate(IMAGE_BYTES)
    image = directory / "bench.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    raw.unlink()
    return image


def timed(*commands: list[str], env: dict | None = None) -> float:
    """Wall time of `commands`, run one after the other, started with nothing of an earlier step still being
    written back to disk: on a shared virtual disk, writeback left by one step otherwise lands on the next,
    whichever it is."""
    os.sync()
    started = time.perf_counter()
    for command in commands:
        result = subprocess.run(command, capture_output=True, env={**os.environ, **(env or {})})
        assert result.returncode == 0, result.stderr.decode()
    return time.perf_counter() - started


def local_baseline(cluster, image: Path, pool: str, scratch: Path) -> float:
    copy = scratch / "copy.qcow2"
    if cluster.backend == "file":
        target = str(scratch / "baseline.raw")
    else:
        conf = cluster.local.state["ceph_conf"]
        target = f"rbd:{pool}/baseline:conf={conf}"
    took = timed(["cp", str(image), str(copy)], ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(copy), target])
    if cluster.backend != "file":
        run("rbd", "-c", conf, "rm", "--no-progress", f"{pool}/baseline")
    for leftover in scratch.iterdir():
        leftover.unlink()
    return took


def test_upload_throughput_against_local_conversion(storage_cluster, half_random_qcow2, tmp_path):
    """Alternating rounds, medians reported (and the best runs' ratio): single runs on a shared virtual disk vary
    by 2x or more."""
    pool = unique("bench")
    storage_cluster.client.storage.pool_add(pool)
    size = half_random_qcow2.stat().st_size
    pvc_cli = str(Path(sys.executable).with_name("pvc"))
    env = {"PVC_CONFIG": str(storage_cluster.local.client_config)}
    baselines, uploads = [], []
    try:
        for round_number in range(ROUNDS):
            baselines.append(local_baseline(storage_cluster, half_random_qcow2, pool, tmp_path))
            uploads.append(timed([pvc_cli, "storage", "volume", "upload", pool, f"bench{round_number}",
                                  str(half_random_qcow2)], env=env))
            assert storage_cluster.client.storage.volume_info(pool, f"bench{round_number}")["size_bytes"] == \
                IMAGE_BYTES
            storage_cluster.client.storage.volume_remove(pool, f"bench{round_number}")
    finally:
        storage_cluster.client.storage.pool_remove(pool, True)

    baseline, upload = statistics.median(baselines), statistics.median(uploads)
    with open(half_random_qcow2, "rb") as image:
        started = time.perf_counter()
        bulk.checksum_of_file(image, 0, size)
        checksum = time.perf_counter() - started
    startup = statistics.median(timed([pvc_cli, "--help"]) for _ in range(ROUNDS))
    print(f"\n[{storage_cluster.backend}] {size / MIB:.0f} MiB qcow2 (1 GiB virtual, half random), median of "
          f"{ROUNDS}: local cp + qemu-img convert {baseline:.2f} s ({size / baseline / MIB:.0f} MiB/s); "
          f"pvc storage volume upload {upload:.2f} s ({size / upload / MIB:.0f} MiB/s); "
          f"upload/local throughput {baseline / upload:.2f}x (best runs: {min(baselines) / min(uploads):.2f}x) "
          f"(runs: local {', '.join(f'{t:.2f}' for t in baselines)}; upload {', '.join(f'{t:.2f}' for t in uploads)}); "
          f"of the upload, the CLI's start takes {startup:.2f} s and the checksum announced before the data "
          f"{checksum:.2f} s")
