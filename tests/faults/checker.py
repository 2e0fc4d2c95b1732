"""Judging a history after the run (never during it).

Three checks, none of which knows how the cluster manager works:

- `double_runs`: no VM ever ran on two hosts at once. A *run* is one start of a domain on one host, told apart
  by the identity the monitor recorded (libvirt's domain id, or the QEMU pid); a run seen at two readings
  certainly ran throughout the span between the end of the first and the start of the last (its *sure span*).
  A violation is a VM seen running on another host inside that span (seen running on one host both before
  and after it was seen running on another), or two runs on different hosts whose sure spans overlap. Both
  are certain whatever the timing of the readings, so a violation is never a sampling artefact; a copy too
  short-lived to be read twice is only found when the other host's run spans it.
- `record_mismatches`: once the cluster has settled, every VM's record matches what the hosts run: a VM in
  state ``start`` runs on exactly its record's node, one stopped (``stop``, ``shutdown``, ``disable``,
  ``fail``) runs nowhere, no copy is left defined on another host, no removal is left pending (state
  ``remove``), and no host holds a domain without a record.
- `existence_problems`: a VM whose last define or remove returned success, with nothing else overlapping it,
  exists (or not) accordingly: nothing acknowledged is lost, nothing removed comes back (a record whose
  removal is still pending, state ``remove``, counts as gone here; `record_mismatches` reports it).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from faults.history import History, Operation, Sample

STOPPED_STATES = ("stop", "shutdown", "disable", "fail")
NO_EFFECT = ("NotFound", "AlreadyExists", "InvalidInput", "Conflict", "Busy", "AuthenticationError")
"""Errors that mean the operation was refused before it changed anything; any other error leaves it open
whether the change was made."""


@dataclass
class Run:
    """One run of a VM on one host, as the monitor saw it: every reading that showed it, in order."""
    vm: str
    host: str
    identity: str
    source: str
    asked: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)

    @property
    def sure(self) -> tuple[float, float] | None:
        """The span throughout which this run certainly ran, or None if it was seen only once."""
        if len(self.asked) < 2 or self.answered[0] > self.asked[-1]:
            return None
        return self.answered[0], self.asked[-1]

    def sighting_within(self, span: tuple[float, float]) -> tuple[float, float] | None:
        """A reading of this run made entirely inside `span`, if there is one."""
        index = bisect.bisect_left(self.asked, span[0])
        if index < len(self.asked) and self.answered[index] <= span[1]:
            return self.asked[index], self.answered[index]
        return None

    @property
    def uuid(self) -> str | None:
        """The domain's UUID, when the reading knew it (libvirt readings do, QEMU processes do not)."""
        return self.identity.partition("/")[2] or None

    def describe(self) -> str:
        return f"{self.host} ({self.source} run {self.identity}, seen {len(self.asked)}x " \
               f"{self.asked[0]:.3f}..{self.answered[-1]:.3f} s)"


@dataclass(frozen=True)
class Violation:
    vm: str
    run: Run
    other: Run
    at: tuple[float, float]
    why: str

    def __str__(self) -> str:
        uuids = {self.run.uuid, self.other.uuid}
        same = "" if None in uuids else " (the same UUID)" if len(uuids) == 1 else \
            " (two UUIDs: two VMs of the same name, one of them a removed VM's leftover?)"
        return f"{self.vm} ran on two hosts at once{same}: on {self.run.describe()} and on " \
               f"{self.other.describe()}: {self.why}"


def runs(samples: list[Sample]) -> dict[str, list[Run]]:
    """VM → its runs on every host, from the readings that showed it running."""
    found: dict[tuple[str, str, str, str], Run] = {}
    for sample in sorted(samples, key=lambda sample: sample.asked):
        for vm, identity in (sample.running or {}).items():
            key = (vm, sample.host, sample.source, identity)
            run = found.get(key)
            if run is None:
                run = found[key] = Run(vm, sample.host, identity, sample.source)
            run.asked.append(sample.asked)
            run.answered.append(sample.answered)
    by_vm: dict[str, list[Run]] = {}
    for run in found.values():
        by_vm.setdefault(run.vm, []).append(run)
    return by_vm


def double_runs(history: History) -> list[Violation]:
    violations = []
    for vm, vm_runs in sorted(runs(history.samples).items()):
        reported: set[frozenset[int]] = set()
        for run in vm_runs:
            span = run.sure
            if span is None:
                continue
            for other in vm_runs:
                pair = frozenset((id(run), id(other)))
                if other.host == run.host or pair in reported:
                    continue
                seen = other.sighting_within(span)
                if seen is not None:
                    why = f"seen on {other.host} at {seen[0]:.3f}..{seen[1]:.3f} s, inside " \
                          f"{span[0]:.3f}..{span[1]:.3f} s when it surely ran on {run.host}"
                elif other.sure is not None and max(span[0], other.sure[0]) <= min(span[1], other.sure[1]):
                    seen = (max(span[0], other.sure[0]), min(span[1], other.sure[1]))
                    why = f"both surely ran throughout {seen[0]:.3f}..{seen[1]:.3f} s"
                else:
                    continue
                reported.add(pair)
                violations.append(Violation(vm, run, other, seen, why))
    return sorted(violations, key=lambda violation: violation.at)


def record_mismatches(records: list[dict[str, Any]], hosts: dict[str, dict[str, bool] | None]) -> list[str]:
    """What differs between the VM records (`vms.list()`) and the hosts' domains (host → name → running)."""
    problems = [f"host {host} could not be read" for host, domains in sorted(hosts.items()) if domains is None]
    running_on: dict[str, list[str]] = {}
    defined_on: dict[str, list[str]] = {}
    for host, domains in sorted(hosts.items()):
        for name, running in (domains or {}).items():
            defined_on.setdefault(name, []).append(host)
            if running:
                running_on.setdefault(name, []).append(host)
    by_name = {record["name"]: record for record in records}
    for name, record in sorted(by_name.items()):
        state, node = record["state"], record["node"]
        where = running_on.get(name, [])
        if state == "start":
            expected = [node]
        elif state in STOPPED_STATES:
            expected = []
        elif state == "remove":
            expected = None
            problems.append(f"{name}: its removal never completed (record: node {node}; runs on "
                            f"{', '.join(where) or 'no host'}; defined on "
                            f"{', '.join(defined_on.get(name, [])) or 'no host'})")
        else:
            expected = None
            problems.append(f"{name}: state {state!r} never settled (record: node {node}; runs on "
                            f"{', '.join(where) or 'no host'})")
        if expected is not None and where != expected:
            problems.append(f"{name}: recorded {state} on {node}, but runs on {', '.join(where) or 'no host'}")
        elsewhere = [host for host in defined_on.get(name, []) if host != node]
        if elsewhere:
            problems.append(f"{name}: recorded on {node}, but also defined on {', '.join(elsewhere)}")
        if record.get("unknown"):
            problems.append(f"{name}: still unknown ({record['unknown']})")
    for name in sorted(set(defined_on) - set(by_name)):
        running = running_on.get(name, [])
        problems.append(f"{name}: orphaned: no record, but defined on {', '.join(defined_on[name])}"
                        + (f" and running on {', '.join(running)}" if running else ""))
    return problems


def existence_problems(operations: list[Operation], records: list[dict[str, Any]]) -> list[str]:
    """VMs whose existence contradicts the last acknowledged define or remove (see the module docstring)."""
    names = {record["name"] for record in records}
    kept = {record["name"] for record in records if record.get("state") != "remove"}
    problems = []
    for vm in sorted({op.vm for op in operations if op.kind in ("define", "remove") and op.vm}):
        changes = [op for op in operations
                   if op.vm == vm and op.kind in ("define", "remove") and op.outcome not in NO_EFFECT]
        if not changes:
            continue
        last = max(changes, key=lambda op: op.invoked)
        if not last.ok or any(op is not last and op.completed > last.invoked for op in changes):
            continue
        refused_since = [op for op in operations if op.vm == vm and op.kind in ("define", "remove")
                         and op.outcome in NO_EFFECT and op.invoked > last.invoked]
        context = "" if not refused_since else " (refused since: " + ", ".join(
            f"{op.kind} -> {op.outcome} at {op.invoked:.3f} s" for op in refused_since) + \
            "; a refusal answered to a retry of a call that had already taken effect would explain it)"
        if last.kind == "define" and vm not in names:
            problems.append(f"{vm}: lost: defined successfully at {last.invoked:.3f}..{last.completed:.3f} s "
                            f"by {last.actor}, never removed since, yet it has no record{context}")
        if last.kind == "remove" and vm in kept:
            problems.append(f"{vm}: came back: removed successfully at {last.invoked:.3f}..{last.completed:.3f} s "
                            f"by {last.actor}, never defined since, yet it has a record{context}")
    return problems
