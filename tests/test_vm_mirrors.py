"""Mirrors between two local clusters side by side: a snapshot sent whole, then incrementally; the mirror refuses
to start until promoted; a promotion after a final send; the destination's key stored sealed; and each kind of
bad send refused in one line with nothing left on either side."""
import hashlib
import json
import os
import threading
import time

import pytest
from click.testing import CliRunner

from pvc import schema
from pvc.cli.localcluster.guest import domain_xml
from pvc.cli.main import cli
from pvc.errors import AuthenticationError, Conflict, InvalidInput, NotFound, PVCError
from pvc.node.uploads import Tickets

from conftest import started_cluster
from helpers import cluster_store, eventually, refused_in_one_line
from storage_support import known_raw, staging_files, stored_names, unique, volume_sha256, write_in_place

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """Two one-node clusters on test-driver hosts and file storage, and a client home that has a saved
    connection to each: ``source`` and ``dest``."""
    for source in started_cluster(tmp_path_factory.mktemp("mirror-source"), nodes=1, coordinators=1):
        for dest in started_cluster(tmp_path_factory.mktemp("mirror-dest"), nodes=1, coordinators=1):
            source.backend = dest.backend = "file"
            home = tmp_path_factory.mktemp("mirror-home")
            for name, running in (("source", source), ("dest", dest)):
                key = home / f"{name}.key"
                key.write_text(running.local.state["api_key"])
                added = _pvc(home, "connection", "add", name, *running.local.uris, "--api-key-file", str(key))
                assert added.exit_code == 0, added.output
            yield source, dest, home


def _pvc(home, *args: str):
    """`pvc ARGS` as a user with both clusters saved, the first (``source``) the default."""
    return CliRunner().invoke(cli, list(args), env={"PVC_CLIENT_DIR": str(home), "PVC_CONFIG": None, "PVC_URI": None,
                                                    "PVC_API_KEY": None, "PVC_CONNECTION": None})


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _changed(path, offset: int, seed: int):
    data = bytearray(path.read_bytes())
    data[offset:offset + 64 * 1024] = hashlib.sha256(bytes([seed])).digest() * 2048
    path.write_bytes(bytes(data))
    return path


def _pool_on_both(clusters, prefix: str) -> str:
    """A new pool of the same name on the source and the destination."""
    pool = unique(prefix)
    for cluster in clusters[:2]:
        cluster.client.storage.pool_add(pool)
    return pool


def _vm_with_disk(cluster, tmp_path, pool: str, vm: str, seed: int):
    image = known_raw(tmp_path / f"{vm}.raw", size=8 * MiB, seed=seed)
    cluster.client.storage.upload(pool, f"{vm}_disk", str(image))
    cluster.client.vms.define(domain_xml(vm, disk=f"{pool}/{vm}_disk", domain_type="kvm"))
    return image


def test_send_whole_then_incremental_then_promote(clusters, tmp_path):
    source, dest, home = clusters
    pool, vm = _pool_on_both(clusters, "mp"), unique("mvm")
    image = _vm_with_disk(source, tmp_path, pool, vm, seed=11)
    disk = f"{vm}_disk"

    source.client.vms.snapshot_create(vm, "s1")
    at_s1 = volume_sha256(source, pool, disk)
    source.client.storage.upload(pool, disk, str(_changed(image, 3 * MiB, 1)), force=True)
    whole = json.loads(_ok(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest", "-f", "json")))
    assert whole["kind"] == "full" and whole["parent"] is None

    mirror = dest.client.vms.info(vm)
    assert mirror["state"] == "mirror"
    assert volume_sha256(dest, pool, disk) == at_s1, "the mirror holds the bytes at s1, not the source's later ones"
    assert [row["name"] for row in dest.client.vms.snapshot_list(vm)] == ["s1"]
    with pytest.raises(Conflict, match="is a mirror"):
        dest.client.vms.start(vm)
    refused_in_one_line(_pvc(home, "-c", "dest", "vm", "start", vm), "promote it first")
    refused_in_one_line(_pvc(home, "-c", "dest", "vm", "migrate", vm), "is a mirror")
    refused_in_one_line(_pvc(home, "-c", "dest", "vm", "stop", vm, "--yes"), "is a mirror")
    refused_in_one_line(_pvc(home, "-c", "dest", "vm", "rename", vm, f"{vm}-renamed"), "is a mirror")
    assert dest.client.vms.info(vm)["state"] == "mirror"

    with cluster_store(source.local) as store:
        raw = store.read(schema.mirror_destination("dest"))
    assert raw["api_key"].startswith("sealed:v1:") and dest.local.state["api_key"] not in json.dumps(raw), \
        "the destination's key is kept sealed in the source cluster's ZooKeeper"
    assert raw["uris"] == dest.local.uris

    source.client.vms.snapshot_create(vm, "s2")
    at_s2 = volume_sha256(source, pool, disk)
    incremental = json.loads(_ok(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "dest", "-f", "json")))
    assert incremental["kind"] == "incremental" and incremental["parent"] == "s1"
    assert incremental["bytes"] < whole["bytes"] / 16, ("64 KiB changed sends about 64 KiB", incremental, whole)
    assert volume_sha256(dest, pool, disk) == at_s2
    assert dest.client.vms.info(vm)["state"] == "mirror"
    assert staging_files(source) == [] and staging_files(dest) == [], "no staged stream is left"

    source.client.storage.upload(pool, disk, str(_changed(image, 6 * MiB, 2)), force=True)
    source.client.vms.start(vm, wait=True)
    promoted = _ok(_pvc(home, "-c", "dest", "vm", "mirror", "promote", vm, "--from", "source", "--remove-source",
                        "--yes"))
    assert f"Promoted VM {vm} (stopped), removed on the source cluster" in promoted
    assert vm not in [row["name"] for row in source.client.vms.list()]
    names = [row["name"] for row in dest.client.vms.snapshot_list(vm)]
    assert names[:2] == ["s1", "s2"] and names[2].startswith("mirror-final-")
    assert volume_sha256(dest, pool, disk) == volume_sha256(source, pool, disk), "the source's last state"
    assert dest.client.vms.start(vm, wait=True)["running"] is True
    assert dest.host_domains("hv1")[vm] is True



def test_a_promotion_holds_the_source_so_the_vm_runs_on_one_cluster_only(clusters, tmp_path):
    """Promoted from a running source without removing it: the source VM is held as a mirror (it refuses to
    start, so no autostart or node ready can run it beside the promoted copy) until promoted back there; the
    mirror's snapshots, its next send's base, cannot be rolled back or removed by hand, nor its volumes resized,
    overwritten, rolled back or removed, even forced."""
    source, dest, home = clusters
    pool, vm = _pool_on_both(clusters, "mh"), unique("mheld")
    image = _vm_with_disk(source, tmp_path, pool, vm, seed=41)
    disk = f"{vm}_disk"
    try:
        source.client.vms.snapshot_create(vm, "s1")
        _ok(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"))
        refused_in_one_line(_pvc(home, "-c", "dest", "vm", "snapshot", "rollback", vm, "s1", "--yes"), "is a mirror")
        refused_in_one_line(_pvc(home, "-c", "dest", "vm", "snapshot", "remove", vm, "s1", "--yes"), "is a mirror")
        sent = volume_sha256(dest, pool, disk)
        refused_in_one_line(_pvc(home, "-c", "dest", "storage", "volume", "resize", pool, disk, "16M", "--yes"),
                            f"belongs to mirror VM {vm}")
        refused_in_one_line(_pvc(home, "-c", "dest", "storage", "volume", "snapshot", "rollback", pool, disk, "s1",
                                 "--yes"), f"used by VM(s) {vm}")
        with pytest.raises(Conflict, match=f"belongs to mirror VM {vm}.*refusing to overwrite it, even forced"):
            dest.client.storage.upload(pool, disk, str(_changed(image, 0, 3)), force=True)
        with pytest.raises(Conflict, match=f"belongs to mirror VM {vm}.*refusing to remove it"):
            dest.client.storage.volume_remove(pool, disk, force=True)
        assert dest.client.storage.volume_info(pool, disk)["size_bytes"] == 8 * MiB
        assert volume_sha256(dest, pool, disk) == sent, "the mirror's volume is as the send left it"
        source.client.vms.start(vm, wait=True)

        _ok(_pvc(home, "-c", "dest", "vm", "mirror", "promote", vm, "--from", "source", "--yes"))

        held = source.client.vms.info(vm)
        assert (held["state"], held["running"]) == ("mirror", False), held
        with pytest.raises(Conflict, match="is a mirror"):
            source.client.vms.start(vm)
        assert dest.client.vms.start(vm, wait=True)["running"] is True
        assert source.host_domains("hv1").get(vm) is not True, "the source's copy stays off"
        _ok(_pvc(home, "-c", "source", "vm", "mirror", "promote", vm, "--yes"))
        assert source.client.vms.info(vm)["state"] == "stop", "promoted back, it is an ordinary VM again"
    finally:
        for cluster in (source, dest):
            if any(row["name"] == vm for row in cluster.client.vms.list()):
                cluster.client.vms.remove(vm, wait=True, force=True)


def test_a_send_whose_document_names_other_volumes_or_another_vm_is_refused_before_any_data(clusters):
    """The sender's domain document is checked as any definition here, before a ticket is issued: it must name
    the VM sent and exactly the volumes sent, so a send cannot attach another VM's volume to the mirror."""
    _source, dest, _home = clusters
    pool, vm = unique("mx"), unique("mxvm")
    dest.client.storage.pool_add(pool)
    volume = {"volume": f"{pool}/{vm}_disk", "bytes": 4096, "size_bytes": 8 * MiB, "sha256": "0" * 64}
    sent = {"vm": vm, "snapshot": "s1", "created": 1.0, "parent": None, "parent_created": None,
            "spec": {"xml": domain_xml(vm, disk=f"{pool}/someone_elses_disk", domain_type="kvm")},
            "volumes": [volume]}
    with pytest.raises(InvalidInput, match="are not the ones sent"):
        dest.client.vms.mirror_receive(sent, 4096, "0" * 64, {"cluster": "evil", "destination": "dest"})
    sent["spec"] = {"xml": domain_xml("another", disk=f"{pool}/{vm}_disk", domain_type="kvm")}
    with pytest.raises(InvalidInput, match="names VM 'another'"):
        dest.client.vms.mirror_receive(sent, 4096, "0" * 64, {"cluster": "evil", "destination": "dest"})
    with pytest.raises(InvalidInput, match="malformed mirror manifest"):
        dest.client.vms.mirror_receive({**sent, "volumes": [{**volume, "bytes": -1}]}, -1, "0" * 64, {})
    assert dest.client.vms.mirror_state(vm) == {"vm": vm, "exists": False, "mirror": False, "newest": None,
                                                "pending": False}
    assert [row["name"] for row in dest.client.storage.volume_list(pool)] == []


def _dest_holds(dest, vm: str, pool: str) -> dict:
    """What the destination holds of `vm`: its VM, snapshots, and the names in `pool` (hidden ones too)."""
    vms = {row["name"]: row["state"] for row in dest.client.vms.list()}
    return {"vm": vms.get(vm), "snapshots": [row["name"] for row in dest.client.vms.snapshot_list(vm)],
            "stored": stored_names(dest, pool),
            "volumes": [row["name"] for row in dest.client.storage.volume_list(pool)]}


def test_bad_sends_are_refused_in_one_line_with_nothing_left_on_either_side(clusters, tmp_path):
    source, dest, home = clusters
    pool, lacking, vm = unique("mb"), unique("mlack"), unique("mbad")
    source.client.storage.pool_add(pool)
    source.client.storage.pool_add(lacking)
    dest.client.storage.pool_add(pool)
    image = _vm_with_disk(source, tmp_path, pool, vm, seed=21)
    disk = f"{vm}_disk"
    source.client.vms.snapshot_create(vm, "s1")

    elsewhere = unique("mlk")
    _vm_with_disk(source, tmp_path, lacking, elsewhere, seed=22)
    source.client.vms.snapshot_create(elsewhere, "s1")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", elsewhere, "s1", "--to", "dest"), f"no storage pool '{lacking}'")
    assert elsewhere not in [row["name"] for row in dest.client.vms.list()]

    taken = unique("mtaken")
    _vm_with_disk(source, tmp_path, pool, taken, seed=23)
    source.client.vms.snapshot_create(taken, "s1")
    dest.client.vms.define(domain_xml(taken, domain_type="kvm"))
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", taken, "s1", "--to", "dest"), "is not a mirror")
    assert dest.client.vms.info(taken)["state"] == "stop" and dest.client.vms.snapshot_list(taken) == []

    clash = unique("mclash")
    _vm_with_disk(source, tmp_path, pool, clash, seed=24)
    source.client.vms.snapshot_create(clash, "s1")
    dest.client.storage.volume_add(pool, f"{clash}_disk", 4 * MiB)
    before = volume_sha256(dest, pool, f"{clash}_disk")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", clash, "s1", "--to", "dest"), "exists on this cluster already")
    assert volume_sha256(dest, pool, f"{clash}_disk") == before
    assert clash not in [row["name"] for row in dest.client.vms.list()]

    _ok(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"))
    held = _dest_holds(dest, vm, pool)
    at_s1 = volume_sha256(dest, pool, disk)
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"), "holds snapshot 's1' of VM")

    source.client.vms.snapshot_remove(vm, "s1")
    source.client.storage.upload(pool, disk, str(_changed(image, 1 * MiB, 3)), force=True)
    source.client.vms.snapshot_create(vm, "s1")
    source.client.vms.snapshot_create(vm, "s2")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "dest"), "has diverged")
    source.client.vms.snapshot_remove(vm, "s1")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "dest"), "has diverged")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "nowhere"), "no connection named 'nowhere'")

    assert _dest_holds(dest, vm, pool) == held and volume_sha256(dest, pool, disk) == at_s1, \
        "the mirror is as the last good send left it"
    assert staging_files(source) == [] and staging_files(dest) == []
    assert held["vm"] == "mirror" and held["snapshots"] == ["s1"]


def test_a_send_whose_sender_died_is_undone_once_its_deadline_has_passed(clusters, tmp_path):
    """A sender that recorded its send on the destination and wrote part of it before dying: promotion and other
    sends are refused as busy meanwhile, and once its deadline has passed the destination's leader returns the
    mirror to its last snapshot, so the next send ends with exactly the source's bytes."""
    source, dest, home = clusters
    pool, vm = _pool_on_both(clusters, "md"), unique("mdied")
    image = _vm_with_disk(source, tmp_path, pool, vm, seed=31)
    disk = f"{vm}_disk"
    source.client.vms.snapshot_create(vm, "s1")
    _ok(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"))
    at_s1 = volume_sha256(dest, pool, disk)
    source.client.storage.upload(pool, disk, str(_changed(image, 2 * MiB, 4)), force=True)
    source.client.vms.snapshot_create(vm, "s2")

    created = {row["name"]: row["created"] for row in source.client.vms.snapshot_list(vm)}
    manifest = {"vm": vm, "snapshot": "s2", "created": created["s2"], "parent": "s1", "parent_created": created["s1"],
                "spec": {"xml": source.client.vms.dump(vm)},
                "volumes": [{"volume": f"{pool}/{disk}", "size_bytes": 8 * MiB, "bytes": 4096, "sha256": "0" * 64}]}
    dest.client.vms.mirror_receive(manifest, 4096, "0" * 64, {"cluster": None, "destination": "dest"})
    with open(dest.local.storage_dir / pool / disk, "r+b") as volume:
        volume.write(b"half a stream" * 1000)
    refused_in_one_line(_pvc(home, "-c", "dest", "vm", "mirror", "promote", vm, "--yes"), "is under way")
    refused_in_one_line(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "dest"), "is under way")

    with cluster_store(dest.local) as store:
        record = store.read(schema.mirror_vm(vm))
        record["intent"]["deadline"] = 0
        store.transaction().set(schema.mirror_vm(vm), record).commit()
        eventually(lambda: "intent" not in store.read(schema.mirror_vm(vm)), timeout=30)
    assert volume_sha256(dest, pool, disk) == at_s1, "the mirror is back at its last snapshot"
    sent = json.loads(_ok(_pvc(home, "vm", "snapshot", "send", vm, "s2", "--to", "dest", "-f", "json")))
    assert sent["kind"] == "incremental"
    assert volume_sha256(dest, pool, disk) == volume_sha256(source, pool, disk)
    assert [row["name"] for row in dest.client.vms.snapshot_list(vm)] == ["s1", "s2"]
    _ok(_pvc(home, "-c", "dest", "vm", "mirror", "promote", vm, "--yes"))
    assert dest.client.vms.info(vm)["state"] == "stop"


def test_automirror_sends_the_tagged_vms_on_each_run_and_keeps_its_newest_snapshots(clusters, tmp_path):
    source, dest, home = clusters
    pool, vm, untagged = _pool_on_both(clusters, "ma"), unique("mauto"), unique("mskip")
    image = _vm_with_disk(source, tmp_path, pool, vm, seed=41)
    _vm_with_disk(source, tmp_path, pool, untagged, seed=42)
    source.client.vms.add_tag(vm, "dr")
    refused_in_one_line(_pvc(home, "vm", "automirror", "run"), "automirror_destination is not set")
    source.client.vms.snapshot_create(untagged, "s0")
    _ok(_pvc(home, "vm", "snapshot", "send", untagged, "s0", "--to", "dest"))
    _keep_destination(home, dest, "dr-site")
    _ok(_pvc(home, "cluster", "config", "--automirror-tag", "dr", "--automirror-destination", "dr-site",
             "--automirror-keep", "2"))
    refused_in_one_line(_pvc(home, "cluster", "config", "--automirror-schedule", "sometimes"), "automirror_schedule must be")

    kinds = []
    for run, offset in enumerate((None, 1 * MiB, 5 * MiB)):
        if offset is not None:
            source.client.storage.upload(pool, f"{vm}_disk", str(_changed(image, offset, 50 + run)), force=True)
        task = json.loads(_ok(_pvc(home, "vm", "automirror", "run", "--wait", "-f", "json")))
        assert task["state"] == "done" and task["vms"] == [vm], task
        kinds.append(task["steps"][vm]["kind"])
        assert volume_sha256(dest, pool, f"{vm}_disk") == volume_sha256(source, pool, f"{vm}_disk")
    assert kinds == ["full", "incremental", "incremental"]
    assert dest.client.vms.info(vm)["state"] == "mirror"
    assert [row["name"] for row in dest.client.vms.snapshot_list(untagged)] == ["s0"], "untagged: not mirrored"
    kept = [row["name"] for row in source.client.vms.snapshot_list(vm)]
    assert len(kept) == 2 and all(name.startswith("automirror-") for name in kept), kept
    assert [row["name"] for row in dest.client.vms.snapshot_list(vm)] == kept, "the destination keeps as many"
    status = source.client.vms.automirror_status()
    assert status["last_outcome"]["state"] == "done" and status["running"] is None
    refused_in_one_line(_pvc(home, "vm", "mirror", "destination", "remove", "dr-site", "--yes"), "is automirror's")
    _ok(_pvc(home, "cluster", "config", "--automirror-tag", "off", "--automirror-destination", "off"))
    assert "Forgot mirror destination dr-site" in _ok(_pvc(home, "vm", "mirror", "destination", "remove", "dr-site",
                                                           "--yes"))
    assert "dr-site" not in _ok(_pvc(home, "vm", "mirror", "destination", "list"))
    with pytest.raises(NotFound, match="no mirror destination named 'dr-site'"):
        source.client.vms.snapshot_send(vm, kept[-1], "dr-site")


def _keep_destination(home, dest, name: str) -> None:
    """Destination `name` kept by the source before any send to it (as automirror needs), after one with a wrong
    key was refused and not kept; its key is never shown."""
    (home / "wrong.key").write_text("not-the-key")
    _ok(_pvc(home, "connection", "add", "wrong-key", *dest.local.uris, "--api-key-file", str(home / "wrong.key")))
    refused_in_one_line(_pvc(home, "vm", "mirror", "destination", "add", "wrong-key"), "")
    _ok(_pvc(home, "connection", "add", name, *dest.local.uris, "--api-key-file", str(home / "dest.key")))
    assert f"Mirror destination {name} kept" in _ok(_pvc(home, "vm", "mirror", "destination", "add", name))
    listed = json.loads(_ok(_pvc(home, "vm", "mirror", "destination", "list", "-f", "json")))
    assert {row["name"]: row["uris"] for row in listed}[name] == dest.local.uris
    assert "wrong-key" not in {row["name"] for row in listed}
    assert dest.local.state["api_key"] not in json.dumps(listed) and all(row["api_key"] == "(set)" for row in listed)
    assert name in _ok(_pvc(home, "vm", "mirror", "destination", "list"))


def test_a_leader_killed_mid_automirror_send_is_resumed_by_undoing_the_abandoned_send_at_once(clusters, tmp_path):
    """The source's only coordinator is killed while its node streams a tagged VM's first automirror send; the
    restarted leader resumes the run, has the destination undo the send the dead one left unsettled (not after
    the destination's ten-minute deadline) and sends the VM once: the mirror holds the bytes at the run's
    snapshot, one snapshot on each side, nothing staged anywhere."""
    source, dest, home = clusters
    pool, vm = _pool_on_both(clusters, "ml"), unique("mlead")
    image = tmp_path / "big.raw"
    image.write_bytes(os.urandom(128 * MiB))
    source.client.storage.upload(pool, f"{vm}_disk", str(image))
    source.client.vms.define(domain_xml(vm, disk=f"{pool}/{vm}_disk", domain_type="kvm"), tags=["lead"])
    _ok(_pvc(home, "vm", "mirror", "destination", "add", "dest"))
    _ok(_pvc(home, "cluster", "config", "--automirror-tag", "lead", "--automirror-destination", "dest",
             "--automirror-keep", "2"))
    target = dest.local.storage_dir / pool / f"{vm}_disk"
    coordinator = source.local.coordinator_names[0]
    try:
        task = source.client.vms.automirror_run([vm])
        assert eventually(lambda: target.exists() and target.stat().st_blocks > 0, timeout=60), "the stream began"
        source.local.stop_daemon("pvcapid", coordinator, kill=True)
        source.local.start_coordinator(coordinator)
        began = time.monotonic()

        def finished():
            try:
                found = source.client.nodes.task(task["id"])
            except PVCError:
                return None
            return found if found["state"] in ("done", "failed") else None
        done = eventually(finished, timeout=120, interval=0.5)
        assert done and done["state"] == "done", done
        print(f"\nresumed run done {time.monotonic() - began:.1f} s after the leader's restart")
        snapshot = done["steps"][vm]["snapshot"]
        assert [row["name"] for row in source.client.vms.snapshot_list(vm)] == [snapshot]
        assert [row["name"] for row in dest.client.vms.snapshot_list(vm)] == [snapshot], "sent once"
        assert volume_sha256(dest, pool, f"{vm}_disk") == volume_sha256(source, pool, f"{vm}_disk")
        assert eventually(lambda: staging_files(source) == [] and staging_files(dest) == [], timeout=30)
        with cluster_store(source.local) as store:
            assert store.read(schema.mirror_outgoing(vm)) is None, "the send is settled on both sides"
    finally:
        _ok(_pvc(home, "cluster", "config", "--automirror-tag", "off", "--automirror-destination", "off"))


def test_a_sending_coordinator_killed_mid_stream_leaves_nothing_half_made(clusters, tmp_path):
    """The source's coordinator is killed while its node streams a first send: its node finishes the stream and
    drops the staged file, the destination holds an unsettled send that its leader undoes once its deadline has
    passed (no VM, no volume), and a send from the restarted coordinator then succeeds."""
    source, dest, home = clusters
    pool, vm = _pool_on_both(clusters, "mk"), unique("mkill")
    image = tmp_path / "big.raw"
    image.write_bytes(os.urandom(128 * MiB))
    source.client.storage.upload(pool, f"{vm}_disk", str(image))
    source.client.vms.define(domain_xml(vm, disk=f"{pool}/{vm}_disk", domain_type="kvm"))
    source.client.vms.snapshot_create(vm, "s1")
    target = dest.local.storage_dir / pool / f"{vm}_disk"
    sending = threading.Thread(target=_pvc, args=(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"))
    sending.start()
    assert eventually(lambda: target.exists() and target.stat().st_blocks > 0, timeout=60), "the stream began"
    coordinator = source.local.coordinator_names[0]
    source.local.stop_daemon("pvcapid", coordinator, kill=True)
    sending.join(timeout=120)
    source.local.start_coordinator(coordinator)
    # The steps below can end before the restarted coordinator listens; the CLI then found nobody (a full run).
    source.local.wait_ready(timeout=60)

    assert eventually(lambda: staging_files(source) == [], timeout=60), "the node dropped its staged stream"
    with cluster_store(dest.local) as store:
        record = store.read(schema.mirror_vm(vm))
        assert record["intent"]["snapshot"] == "s1", "the send was never settled"
        record["intent"]["deadline"] = 0
        store.transaction().set(schema.mirror_vm(vm), record).commit()
        assert eventually(lambda: store.read(schema.mirror_vm(vm)) is None, timeout=30)
    assert not target.exists() and vm not in [row["name"] for row in dest.client.vms.list()]
    assert f"{vm}_disk" not in [row["name"] for row in dest.client.storage.volume_list(pool)]

    _ok(_pvc(home, "vm", "snapshot", "send", vm, "s1", "--to", "dest"))
    assert dest.client.vms.info(vm)["state"] == "mirror"
    assert volume_sha256(dest, pool, f"{vm}_disk") == volume_sha256(source, pool, f"{vm}_disk")


def test_an_undo_waits_for_a_stream_still_being_applied_and_its_unused_tickets_die_first():
    """The node's side of undoing a send past its deadline: a stream still being applied makes the undo wait
    (rolling back under a writer would leave disks matching no snapshot), and a ticket not yet used is never
    honoured once an undo has asked."""
    tickets = Tickets(60)
    manifest = {"vm": "slow", "snapshot": "s2"}
    unused = tickets.issue("pool", "slow", 10, "raw", "0" * 64, False, mirror=manifest)
    running = tickets.issue("pool", "slow", 10, "raw", "0" * 64, False, mirror=manifest)
    applying = tickets.redeem(running.token)

    with tickets.receiving(applying):
        assert tickets.stop_mirror("slow", "s2") is True, "its stream is still being applied"
    assert tickets.stop_mirror("slow", "s2") is False
    with pytest.raises(AuthenticationError):
        tickets.redeem(unused.token)


@pytest.fixture(scope="module")
def ceph_source(clusters, private_ceph, tmp_path_factory):
    """A one-node cluster on the private Ceph, saved as connection ``csource`` beside the two file clusters."""
    home = clusters[2]
    for cluster in started_cluster(tmp_path_factory.mktemp("mirror-ceph"), nodes=1, coordinators=1, storage="ceph",
                                   ceph_conf=private_ceph.conf):
        cluster.backend = "ceph"
        key = home / "csource.key"
        key.write_text(cluster.local.state["api_key"])
        _ok(_pvc(home, "connection", "add", "csource", *cluster.local.uris, "--api-key-file", str(key)))
        yield cluster


def test_a_vm_on_ceph_is_mirrored_to_a_cluster_on_files_whole_then_incrementally(clusters, ceph_source, tmp_path):
    """The sender's stream comes from its node's librbd helper; the receiver applies it to a file volume."""
    dest, home = clusters[1], clusters[2]
    pool, vm = unique("mc"), unique("mcvm")
    for cluster in (ceph_source, dest):
        cluster.client.storage.pool_add(pool)
    _vm_with_disk(ceph_source, tmp_path, pool, vm, seed=21)
    disk = f"{vm}_disk"

    ceph_source.client.vms.snapshot_create(vm, "s1")
    whole = json.loads(_ok(_pvc(home, "-c", "csource", "vm", "snapshot", "send", vm, "s1", "--to", "dest", "-f",
                                "json")))
    assert whole["kind"] == "full"
    assert volume_sha256(dest, pool, disk) == volume_sha256(ceph_source, pool, disk)

    write_in_place(ceph_source, pool, disk, 3 * MiB, b"\x5a" * (64 * 1024), tmp_path / "scratch")
    ceph_source.client.vms.snapshot_create(vm, "s2")
    incremental = json.loads(_ok(_pvc(home, "-c", "csource", "vm", "snapshot", "send", vm, "s2", "--to", "dest",
                                      "-f", "json")))
    assert incremental["kind"] == "incremental" and incremental["parent"] == "s1"
    assert incremental["bytes"] < whole["bytes"] / 16, ("64 KiB changed sends about 64 KiB", incremental, whole)
    assert volume_sha256(dest, pool, disk) == volume_sha256(ceph_source, pool, disk)
    assert dest.client.vms.info(vm)["state"] == "mirror"
