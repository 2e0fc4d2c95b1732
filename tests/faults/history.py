"""The one history of a fault-injection run: operations, faults, observations and what each host showed.

Every time in it is this test process's own monotonic clock (`now`), in seconds since the history began;
no daemon's or host's clock is ever consulted. The history is only appended to during a run; the checker
reads it afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Operation:
    """One client call and how it ended: ``ok``, or the class name of the error it raised."""
    actor: str
    kind: str
    vm: str | None
    node: str | None
    wait: bool
    invoked: float
    completed: float
    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True)
class Fault:
    """One fault the nemesis injected and healed (`healed` is when the target was whole again)."""
    kind: str
    target: str
    injected: float
    healed: float
    detail: str = ""


@dataclass(frozen=True)
class Sample:
    """What one host showed at one reading: the domains running there (name → identity of that run), or
    None when the host could not be read (`error` says why). The reading happened somewhere in
    [`asked`, `answered`]. `source` is ``libvirt`` (the host's own libvirtd: every active domain, paused ones
    too) or ``qemu`` (QEMU processes alive in the host, read from outside while its libvirtd did not answer).
    `states` names the domains of `running` that were not simply running: ``paused``, ``incoming`` (a paused
    incoming-migration target) or ``migrating-out`` (running, with an outgoing migration job active)."""
    host: str
    asked: float
    answered: float
    running: dict[str, str] | None
    source: str = "libvirt"
    error: str | None = None
    states: dict[str, str] | None = None


@dataclass(frozen=True)
class Freeze:
    """A span during which the nemesis held a host's libvirtd stopped on purpose: the monitor cannot read it
    then (the reading sent just before the thaw excepted), and its gaps there are not the monitor's."""
    host: str
    start: float
    end: float


@dataclass(frozen=True)
class Note:
    """Something the harness saw that is neither an operation nor a fault (a daemon that exited by itself)."""
    at: float
    who: str
    text: str


class History:
    def __init__(self) -> None:
        self._origin = time.monotonic()
        self.wall_origin = time.time()
        """The wall clock at the origin: only to place the cluster's own task records (which carry wall-clock
        times written by daemons on this same machine) on the history's time line."""
        self._lock = threading.Lock()
        self.operations: list[Operation] = []
        self.faults: list[Fault] = []
        self.samples: list[Sample] = []
        self.notes: list[Note] = []
        self.freezes: list[Freeze] = []

    def now(self) -> float:
        return time.monotonic() - self._origin

    def from_wall(self, wall: float | None) -> float | None:
        """A wall-clock time (a task record's) on the history's time line."""
        return None if wall is None else wall - self.wall_origin

    def add(self, entry: Operation | Fault | Sample | Note) -> None:
        target = {Operation: self.operations, Fault: self.faults, Sample: self.samples, Note: self.notes,
                  Freeze: self.freezes}
        with self._lock:
            target[type(entry)].append(entry)

    def note(self, who: str, text: str) -> None:
        self.add(Note(self.now(), who, text))

    def snapshot(self) -> "History":
        """A copy whose lists no longer grow (for a checker run while the monitor still reads)."""
        copy = History.__new__(History)
        copy._origin, copy._lock, copy.wall_origin = self._origin, threading.Lock(), self.wall_origin
        with self._lock:
            copy.operations, copy.faults = list(self.operations), list(self.faults)
            copy.samples, copy.notes, copy.freezes = list(self.samples), list(self.notes), list(self.freezes)
        return copy

    # -- reading it afterwards ------------------------------------------------------------------------------

    def operations_by_outcome(self) -> dict[str, Counter]:
        """Operation kind → outcome → count."""
        table: dict[str, Counter] = {}
        for operation in self.operations:
            table.setdefault(operation.kind, Counter())[operation.outcome] += 1
        return dict(sorted(table.items()))

    def faults_by_kind(self) -> Counter:
        return Counter(fault.kind for fault in self.faults)

    def samples_by_host(self) -> dict[str, Counter]:
        """Host → ``read`` / ``no answer`` / ``qemu`` → count of samples."""
        table: dict[str, Counter] = {}
        for sample in self.samples:
            what = "qemu" if sample.source == "qemu" else ("read" if sample.running is not None else "no answer")
            table.setdefault(sample.host, Counter())[what] += 1
        return dict(sorted(table.items()))

    def around(self, vm: str | None, start: float, end: float, hosts: set[str] | None = None) -> list[str]:
        """Every operation, fault and note, and each change in what a host showed of `vm`, between `start`
        and `end`, as lines in time order: the excerpt a report quotes."""
        lines: list[tuple[float, str]] = []
        for op in self.operations:
            if op.completed >= start and op.invoked <= end and (vm is None or op.vm in (vm, None)):
                lines.append((op.invoked, f"{op.invoked:9.3f}..{op.completed:9.3f} {op.actor:<8} {op.kind}"
                                          f"({op.vm or ''}{', ' + op.node if op.node else ''}"
                                          f"{', wait' if op.wait else ''}) -> {op.outcome} {op.detail}"))
        for fault in self.faults:
            if fault.healed >= start and fault.injected <= end:
                lines.append((fault.injected, f"{fault.injected:9.3f}..{fault.healed:9.3f} nemesis  {fault.kind} "
                                              f"{fault.target} {fault.detail}"))
        for note in self.notes:
            if start <= note.at <= end:
                lines.append((note.at, f"{note.at:9.3f}            {note.who:<8} {note.text}"))
        if vm is not None:
            for host, source, value, first, last, count in self._spans(vm, start, end, hosts):
                what = {None: "no answer", "-": "not running"}.get(value, f"RUNNING (run {value})")
                lines.append((first, f"{first:9.3f}..{last:9.3f} {host:<8} {source}: {vm} {what}"
                                     f" ({count} reading{'s' if count > 1 else ''})"))
        return [text for _at, text in sorted(lines)]

    def _spans(self, vm: str, start: float, end: float, hosts: set[str] | None):
        """Consecutive readings of one host that showed the same of `vm`, as (host, source, value, first asked,
        last answered, count); value is the run identity, "-" for not running, None for no answer."""
        current: dict[tuple[str, str], list] = {}
        for sample in sorted(self.samples, key=lambda sample: sample.asked):
            if sample.answered < start or sample.asked > end or (hosts and sample.host not in hosts):
                continue
            value = None if sample.running is None else sample.running.get(vm, "-")
            key = (sample.host, sample.source)
            span = current.get(key)
            if span is not None and span[2] == value:
                span[4], span[5] = sample.answered, span[5] + 1
                continue
            if span is not None:
                yield tuple(span)
            current[key] = [sample.host, sample.source, value, sample.asked, sample.answered, 1]
        yield from (tuple(span) for span in current.values())

    def dump(self, path: Path) -> None:
        """Everything, one JSON object a line, for reading after a failed run."""
        with open(path, "w") as out:
            for kind, entries in (("operation", self.operations), ("fault", self.faults), ("note", self.notes),
                                  ("freeze", self.freezes), ("sample", self.samples)):
                for entry in entries:
                    out.write(json.dumps({"type": kind, **dataclasses.asdict(entry)}) + "\n")
