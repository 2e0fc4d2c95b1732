"""A VM never runs on two hosts and nothing is lost, whatever fails meanwhile: the fault-injection checker.

For a bounded time several clients issue random VM operations while a nemesis kills and restarts node daemons
and the leader coordinator, freezes libvirtd and drops ZooKeeper sessions; a monitor reads every host's own
libvirtd many times a second; afterwards the checker judges the whole history (see `tests/faults/`).

Random but reproducible: each run prints its seed, and `PVC_FAULT_SEED=N` replays the same schedule of
operations and faults. `PVC_FAULT_SECONDS` sets the default run's length (75 s); the `bench` variants run
longer (`PVC_FAULT_BENCH_SECONDS`, 600 s; `PVC_FAULT_QEMU_SECONDS`, 300 s on QEMU hosts with real guests).
Run with `-s` (or `-rA`) to see what a passing run printed.
"""
from __future__ import annotations

from itertools import islice

import libvirt
import pytest

from conftest import started_cluster
from faults import checker, nemesis, workload
from faults.history import Fault, History, Operation, Sample
from faults.monitor import HostGate, Monitor, read_hosts
from faults.run import FaultRun, run_faults, seconds_from_env, seed_from_env
from guest_support import guest_xml
from helpers import eventually
from vm_support import vm_xml


# -- the checker itself, on histories made by hand ----------------------------------------------------------

def _history(*readings: tuple[str, float, dict[str, str]]) -> History:
    """Readings as (host, time, running): each read within 10 ms."""
    history = History()
    for host, at, running in readings:
        history.add(Sample(host, at, at + 0.01, running))
    return history


def test_a_vm_seen_on_another_host_while_its_run_goes_on_is_a_violation():
    history = _history(("hv1", 1.0, {"web": "1.7"}), ("hv2", 1.5, {"web": "1.3"}), ("hv1", 2.0, {"web": "1.7"}))
    [violation] = checker.double_runs(history)
    assert violation.vm == "web" and {violation.run.host, violation.other.host} == {"hv1", "hv2"}


def test_moving_away_and_back_is_not_a_violation():
    """A new run on the first host (a new domain id) after the VM ran on the second one is a move, not a
    second copy; nor are two single readings whose moments cannot be ordered."""
    moved_and_back = _history(("hv1", 1.0, {"web": "1.7"}), ("hv1", 1.1, {"web": "1.7"}), ("hv1", 1.2, {}),
                              ("hv2", 1.3, {"web": "1.3"}), ("hv2", 1.4, {"web": "1.3"}), ("hv2", 1.45, {}),
                              ("hv1", 1.5, {"web": "1.8"}), ("hv1", 1.6, {"web": "1.8"}))
    assert checker.double_runs(moved_and_back) == []
    unordered = History()
    unordered.add(Sample("hv1", 1.0, 1.5, {"web": "1.7"}))
    unordered.add(Sample("hv2", 1.2, 1.3, {"web": "1.3"}))
    assert checker.double_runs(unordered) == []


def test_two_runs_that_surely_overlap_are_a_violation_even_if_neither_is_seen_inside_the_other():
    history = History()
    for host, identity, times in (("hv1", "1.1", [(0.0, 1.0), (5.0, 6.0)]), ("hv2", "1.2", [(0.5, 1.5), (4.5, 5.5)])):
        for asked, answered in times:
            history.add(Sample(host, asked, answered, {"web": identity}))
    [violation] = checker.double_runs(history)
    assert "both surely ran" in violation.why


def test_records_are_compared_with_what_the_hosts_run():
    records = [{"name": "up", "state": "start", "node": "hv1"}, {"name": "down", "state": "stop", "node": "hv2"},
               {"name": "moved", "state": "start", "node": "hv2"},
               {"name": "midway", "state": "migrate", "node": "hv3"}, {"name": "fine", "state": "start", "node": "hv3"},
               {"name": "leaving", "state": "remove", "node": "hv1"}]
    hosts = {"hv1": {"up": False, "moved": False, "leaving": False}, "hv2": {"down": True, "moved": True},
             "hv3": {"fine": True, "midway": True, "stowaway": False}}
    problems = checker.record_mismatches(records, hosts)
    assert problems == [
        "down: recorded stop on hv2, but runs on hv2",
        "leaving: its removal never completed (record: node hv1; runs on no host; defined on hv1)",
        "midway: state 'migrate' never settled (record: node hv3; runs on hv3)",
        "moved: recorded on hv2, but also defined on hv1",
        "up: recorded start on hv1, but runs on no host",
        "stowaway: orphaned: no record, but defined on hv3",
    ]


def test_an_acknowledged_define_or_remove_must_hold_unless_something_overlaps_it():
    def op(kind, vm, invoked, completed, outcome="ok"):
        return Operation("c", kind, vm, None, False, invoked, completed, outcome)
    operations = [op("define", "lost", 1, 2), op("remove", "back", 1, 2), op("define", "back", 0, 0.5),
                  op("define", "open", 1, 3), op("remove", "open", 2, 4, "Unavailable"),
                  op("define", "refused", 1, 2), op("remove", "refused", 3, 4, "Busy")]
    problems = checker.existence_problems(operations, [{"name": "back"}])
    assert problems[:2] == [
        "back: came back: removed successfully at 1.000..2.000 s by c, never defined since, yet it has a record",
        "lost: lost: defined successfully at 1.000..2.000 s by c, never removed since, yet it has no record",
    ]
    assert problems[2].startswith("refused: lost: defined successfully at 1.000..2.000 s by c, never removed since, "
                                  "yet it has no record (refused since: remove -> Busy at 3.000 s;")
    assert len(problems) == 3


def test_a_run_prints_its_seed_operations_faults_and_violations():
    history = _history(("hv1", 1.0, {"web": "1.7/a"}), ("hv2", 1.5, {"web": "1.3/b"}), ("hv1", 2.0, {"web": "1.7/a"}))
    history.add(Operation("client0", "start", "web", None, True, 0.5, 0.9, "ok", "state=start"))
    history.add(Operation("client1", "migrate", "web", "hv2", False, 1.2, 1.3, "Conflict", "no"))
    history.add(Fault("freeze-libvirtd", "hv1", 0.2, 3.0, "frozen"))
    run = FaultRun(42, 1.0, history, 2, ["web"], ["hv1", "hv2"], ["pvcapid1"])
    run.violations = checker.double_runs(history)
    text = run.summary()
    assert "seed 42 (replay: PVC_FAULT_SEED=42)" in text
    assert "operations: 2 (" in text and "  start         ok 1" in text and "  migrate       Conflict 1" in text
    assert "faults: 1 (freeze-libvirtd 1)" in text
    assert "violations (a VM on two hosts at once): 1" in text and "two UUIDs" in text
    assert "client1  migrate(web, hv2) -> Conflict no" in text
    assert run.problems == [str(run.violations[0])]


def test_the_same_seed_gives_the_same_schedule():
    def plan(seed):
        faults = [fault.describe() for fault in islice(nemesis.schedule(seed, 3), 50)]
        operations = [op.describe()
                      for op in islice(workload.schedule(seed, "client1", ["a", "b"], ["hv1", "hv2"]), 200)]
        return faults, operations
    assert plan(1234) == plan(1234)
    assert plan(1234) != plan(1235)
    kinds = {fault.kind for fault in islice(nemesis.schedule(1234, 3), 200)}
    assert kinds == set(nemesis.FAULT_WEIGHTS)


# -- the monitor's positive control: a copy started behind PVC's back is found ------------------------------

def _start_copy(uri: str, xml: str) -> None:
    connection = libvirt.open(uri)
    try:
        domain = connection.defineXML(xml)
        if not domain.isActive():
            domain.create()
    finally:
        connection.close()


@pytest.mark.cluster(nodes=3, coordinators=1)
def test_the_checker_reports_a_copy_started_behind_pvcs_back(fresh_cluster):
    """The test itself defines and starts the VM's twin in another host's libvirtd (PVC's node there removes it
    again soon, so it is started again until the monitor has seen it), and leaves a domain PVC never recorded on
    a third host: the checker must report the VM on two hosts, and the record check the orphan."""
    local, client = fresh_cluster.local, fresh_cluster.client
    client.vms.define(vm_xml("twin"), target="hv1")
    client.vms.start("twin", wait=True)
    uuid = client.vms.info("twin")["uuid"]
    history = History()
    gates = {node: HostGate() for node in local.node_names}
    monitor = Monitor(local, history, gates).start()
    try:
        assert eventually(lambda: _seen(history, "twin", "hv1") >= 3, 5)

        def copy_seen() -> bool:
            if _seen(history, "twin", "hv2") >= 2:
                return True
            _start_copy(local.host("hv2").uri, vm_xml("twin", uuid=uuid))
            return False
        assert eventually(copy_seen, 10, interval=0.2), "the monitor never saw the copy on hv2"
        _start_copy(local.host("hv3").uri, vm_xml("stowaway"))
        seen_until = history.now()
        assert eventually(lambda: _seen(history, "twin", "hv1", after=seen_until) >= 2, 5)
    finally:
        monitor.stop()

    violations = checker.double_runs(history)
    mismatches = checker.record_mismatches(client.vms.list(), read_hosts(local, gates))
    print(f"control: {len(history.samples)} readings; violations found: {len(violations)}")
    for violation in violations:
        print(f"  {violation}")
    print(f"control: record mismatches: {mismatches}")
    assert violations, "the copy on hv2 went unreported"
    assert {violation.vm for violation in violations} == {"twin"}
    assert all({violation.run.host, violation.other.host} == {"hv1", "hv2"} for violation in violations)
    assert "stowaway: orphaned: no record, but defined on hv3 and running on hv3" in mismatches


def _seen(history: History, vm: str, host: str, after: float = 0.0) -> int:
    return sum(1 for sample in history.snapshot().samples
               if sample.host == host and sample.asked > after and vm in (sample.running or {}))


# -- the checker under faults --------------------------------------------------------------------------------

def _run_and_judge(cluster, seconds: float, tmp_path, **options) -> None:
    seed = seed_from_env()
    print(f"\nfault injection seed {seed} (replay with PVC_FAULT_SEED={seed})", flush=True)
    run = run_faults(cluster, seed, seconds, history_path=tmp_path / "history.jsonl", **options)
    print(run.summary())
    assert run.history.faults and run.history.operations, "the run injected no fault or made no call"
    assert any(operation.ok and operation.kind == "start" for operation in run.history.operations)
    assert not run.problems, "\n" + run.summary()


@pytest.mark.cluster(nodes=3, coordinators=2)
def test_no_vm_runs_on_two_hosts_and_records_match_reality_under_faults(fresh_cluster, tmp_path):
    _run_and_judge(fresh_cluster, seconds_from_env("PVC_FAULT_SECONDS", 75), tmp_path, settle_timeout=45)


@pytest.mark.bench
@pytest.mark.cluster(nodes=3, coordinators=2)
def test_faults_for_longer(fresh_cluster, tmp_path):
    _run_and_judge(fresh_cluster, seconds_from_env("PVC_FAULT_BENCH_SECONDS", 600), tmp_path)


@pytest.fixture
def qemu_cluster_two_coordinators(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("qemu-faults"), nodes=3, coordinators=2, hypervisor="qemu")


@pytest.mark.bench
def test_faults_on_qemu_hosts_with_real_guests(qemu_cluster_two_coordinators, tmp_path):
    """Real guests: live migration (a paused incoming target does not count as running), guests outliving a
    libvirtd restart (their QEMU processes count while libvirtd does not answer)."""
    _run_and_judge(qemu_cluster_two_coordinators, seconds_from_env("PVC_FAULT_QEMU_SECONDS", 300), tmp_path,
                   clients=3, vm_count=4, domain_xml=guest_xml, fault_weights=nemesis.QEMU_FAULT_WEIGHTS,
                   settle_timeout=180)
