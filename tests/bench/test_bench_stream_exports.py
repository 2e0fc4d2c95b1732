"""Benchmark of exports streamed to the client and imports streamed from it (`pvc vm snapshot export VM SNAP -`,
`import -`) on a one-node cluster with the file backend: prints figures, asserts no timings. Run with
`pytest -m bench -s tests/bench/test_bench_stream_exports.py`.

For scale, the same bytes uploaded as a volume (`storage.upload`, the channel both streams ride) are timed too.
Every figure line starts with "[bench stream-exports]".
"""
from __future__ import annotations

import os
import time

import pytest

from pvc.cli.localcluster.guest import domain_xml

from conftest import started_cluster

pytestmark = pytest.mark.bench

MiB = 1024 * 1024
SIZE = 512 * MiB


def _say(text: str) -> None:
    print(f"[bench stream-exports] {text}  (load {os.getloadavg()[0]:.1f})", flush=True)


def test_bench_streamed_export_and_import(tmp_path_factory, tmp_path):
    for cluster in started_cluster(tmp_path_factory.mktemp("stream-bench"), nodes=1, coordinators=1):
        client = cluster.client
        client.storage.pool_add("bench")
        image = tmp_path / "image.raw"
        with open(image, "wb") as data:
            for _ in range(SIZE // MiB):
                data.write(os.urandom(MiB))
        began = time.monotonic()
        client.storage.upload("bench", "disk", str(image))
        upload_s = time.monotonic() - began
        client.vms.define(domain_xml("benchvm", disk="bench/disk", domain_type="kvm"), target="hv1")
        client.vms.snapshot_create("benchvm", "s1")
        stream = tmp_path / "s1.pvcstream"
        began = time.monotonic()
        with open(stream, "wb") as output:
            client.vms.snapshot_export_to("benchvm", "s1", output)
        export_s = time.monotonic() - began
        began = time.monotonic()
        with open(stream, "rb") as source:
            client.vms.snapshot_import_from(source, name="benchcopy")
        import_s = time.monotonic() - began
        mib = SIZE / MiB
        _say(f"volume upload of {mib:.0f} MiB (reference): {upload_s:.2f} s, {mib / upload_s:.0f} MiB/s")
        _say(f"export - of {mib:.0f} MiB: {export_s:.2f} s, {mib / export_s:.0f} MiB/s "
             f"({stream.stat().st_size / MiB:.1f} MiB written)")
        _say(f"import - of the same: {import_s:.2f} s, {mib / import_s:.0f} MiB/s")
