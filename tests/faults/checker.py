"""Judging a history after the run (never during it).

Five checks, none of which knows how the cluster manager works inside:

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
- `command_problems`: each VM's final state and placement agree with the commands acknowledged on it (see its
  docstring for what "agree" means per command, and how the cluster's own moves are told from an undone
  command: by the task records the cluster keeps of them).
- `sampling_gaps`: whether the monitor watched closely enough for the run to mean anything: a run whose
  readings of some host were more than `GAP_LIMIT_S` apart (or the larger limit a run states: the scale
  bench reads 96 hosts less often) outside deliberately frozen hosts in more than
  `GAP_SHARE_LIMIT` of its readings is inconclusive, never a pass.

Readings of a paused domain count as a running copy, except an incoming migration's target while its source's
outgoing migration job is active (a reading of the source showing that job before the target's reading, and
one after it; or the target's own libvirt showing its incoming job, which libvirt holds only between the
source's prepare and finish calls, so within the source's job, and during which the guest runs only on the
source: a QEMU host's libvirtd came back from a freeze and made a target for a source still frozen, whose job
nobody could read), and a source paused by its own outgoing migration job (its CPUs stopped by the migration,
which alone decides which side runs on). A target's libvirtd does not always show its incoming job (QEMU hosts under
load showed targets only as paused), so any paused copy, or QEMU process read from outside while its libvirtd
did not answer, is excused while another host's outgoing job of that VM brackets it: during a migration the
target's process exists by design, and a second, unrelated paused copy at that very moment would go unseen.
The source is asked about its job only once some host shows the VM paused, so a target's first readings come
before any reading of the job: a run (one domain instance) paused from its first reading and excused as a
target within `MIGRATION_EDGE_S` of it was that target from the start (an instance cannot become a migration's
target after it was created); a QEMU process read from outside counts as paused there, since that reading
cannot tell (a slow source libvirtd once answered about its job 4 s after the target's process appeared). It
stays the target until its first running reading (for a QEMU process read from outside, until its host's
libvirt first says the VM runs): its source's libvirtd may stop answering before the job ends, and a target
that never ran guest code is no second copy. At the other end, a source paused by its own
outgoing job stays paused, its job over, until libvirt destroys it: its paused readings within
`MIGRATION_EDGE_S` after its last paused job reading are that source's, and so are its QEMU process's readings
from outside within `MIGRATION_EDGE_S` of the target's first running reading (a slow source libvirtd left
only those: the process outlives the target's resume until libvirt is told the migration ended).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from faults.history import Freeze, History, Operation, Sample

STOPPED_STATES = ("stop", "shutdown", "disable", "fail")
RUNNING_STATES = ("start", "restart", "migrate", "unmigrate")
GAP_LIMIT_S = 0.5
GAP_SHARE_LIMIT = 0.01
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


MIGRATION_EDGE_S = 5.0
"""Seconds around a migration's readings within which a run's paused readings are excused as its target's first
or its source's last (module docstring): the monitor asks a source about its job one round after it first saw
the target paused, a source whose libvirtd is slow or frozen answers seconds later, and libvirt destroys a
migrated source once the target confirms."""


def runs(samples: list[Sample]) -> dict[str, list[Run]]:
    """VM → its runs on every host, from the readings that showed it running (or paused), but for the
    migration readings the module docstring excuses."""
    outgoing = _outgoing_jobs(samples)
    readings: dict[tuple[str, str, str, str], list[tuple[Sample, bool]]] = {}
    for sample in sorted(samples, key=lambda sample: sample.asked):
        for vm, identity in (sample.running or {}).items():
            readings.setdefault((vm, sample.host, sample.source, identity), []).append(
                (sample, _excused(sample, vm, outgoing)))
    shown_running = _shown_running(samples)
    edges = {key: _migration_edges(key[0], seen, shown_running.get((key[0], key[1]), []))
             for key, seen in readings.items()}
    resumes = _target_resumes(readings, edges)
    by_vm: dict[str, list[Run]] = {}
    for (vm, host, source, identity), seen in readings.items():
        kept = [sample for index, (sample, excused) in enumerate(seen)
                if not excused and index not in edges[vm, host, source, identity]
                and not (source == "qemu" and _near_resume(sample, resumes.get(vm, [])))]
        if kept:
            run = Run(vm, host, identity, source)
            run.asked = [sample.asked for sample in kept]
            run.answered = [sample.answered for sample in kept]
            by_vm.setdefault(vm, []).append(run)
    return by_vm


def _shown_running(samples: list[Sample]) -> dict[tuple[str, str], list[float]]:
    """(VM, host) → when that host's libvirt answered that the VM runs (not paused, no job), in order."""
    shown: dict[tuple[str, str], list[float]] = {}
    for sample in sorted(samples, key=lambda sample: sample.answered):
        if sample.source == "libvirt":
            for vm in sample.running or {}:
                if (sample.states or {}).get(vm) is None:
                    shown.setdefault((vm, sample.host), []).append(sample.answered)
    return shown


def _migration_edges(vm: str, seen: list[tuple[Sample, bool]], shown_running: list[float]) -> set[int]:
    """The indexes of one run's readings that are a migration target's first or a migrated source's last
    (`shown_running`: when the run's host's libvirt said the VM runs)."""
    states = [(sample.states or {}).get(vm) for sample, _excused in seen]
    edges: set[int] = set()
    first_excused = next((index for index, (_sample, excused) in enumerate(seen) if excused), None)
    if first_excused is not None and all(_maybe_paused(sample, state) for (sample, _excused), state
                                         in zip(seen[:first_excused + 1], states)) \
            and seen[first_excused][0].asked - seen[0][0].asked <= MIGRATION_EDGE_S:
        edges.update(range(first_excused))
        # Until it first runs, it stays that target: its source's libvirtd may stop answering before the
        # job ends (no reading brackets these), and a target that never ran guest code is no second copy.
        # A QEMU process read from outside stays it until that host's libvirt first says the VM runs.
        for index in range(first_excused + 1, len(states)):
            sample = seen[index][0]
            unknown = sample.source == "qemu" and bisect.bisect_right(shown_running, sample.asked) == \
                bisect.bisect_right(shown_running, seen[0][0].asked)
            if states[index] not in ("incoming", "paused") and not unknown:
                break
            edges.add(index)
    last_job = None
    for index, state in enumerate(states):
        if state == "migrating-out-paused":
            last_job = index
        elif state == "paused" and last_job is not None \
                and seen[index][0].asked - seen[last_job][0].answered <= MIGRATION_EDGE_S:
            edges.add(index)
        else:
            last_job = None
    return edges


def _target_resumes(readings: dict[tuple[str, str, str, str], list[tuple[Sample, bool]]],
                    edges: dict[tuple[str, str, str, str], set[int]]) -> dict[str, list[tuple[str, float]]]:
    """VM → (host, when) of each migration target's first running reading: a run whose first reading was
    excused as a migration's target (or as its edge), read by libvirt as running."""
    resumes: dict[str, list[tuple[str, float]]] = {}
    for (vm, host, source, identity), seen in readings.items():
        target = seen and (seen[0][1] or 0 in edges[vm, host, source, identity])
        if source != "libvirt" or not target:
            continue
        running = next((sample for sample, _excused in seen if (sample.states or {}).get(vm) is None), None)
        if running is not None:
            resumes.setdefault(vm, []).append((host, running.asked))
    return resumes


def _near_resume(sample: Sample, resumes: list[tuple[str, float]]) -> bool:
    """Whether a QEMU process read from outside may be a migration's source left paused around its target's
    resume: libvirt kills the source only once the target confirms, and from outside the two look alike."""
    return any(host != sample.host and abs(sample.asked - when) <= MIGRATION_EDGE_S for host, when in resumes)


def _maybe_paused(sample: Sample, state: str | None) -> bool:
    """Whether a reading may be of a paused copy: libvirt said so, or the QEMU process was read from outside,
    which cannot tell a paused guest from a running one."""
    return state in ("incoming", "paused") or sample.source == "qemu"


def _outgoing_jobs(samples: list[Sample]) -> dict[str, list[tuple[str, float, float]]]:
    """VM → (host, asked, answered) of every reading that showed an outgoing migration job of it."""
    jobs: dict[str, list[tuple[str, float, float]]] = {}
    for sample in samples:
        for vm, state in (sample.states or {}).items():
            if state.startswith("migrating-out"):
                jobs.setdefault(vm, []).append((sample.host, sample.asked, sample.answered))
    return jobs


def _excused(sample: Sample, vm: str, outgoing: dict[str, list[tuple[str, float, float]]]) -> bool:
    state = (sample.states or {}).get(vm)
    if state in ("migrating-out-paused", "incoming"):
        return True
    if state not in ("incoming", "paused") and sample.source != "qemu":
        return False
    for host in {host for host, _asked, _answered in outgoing.get(vm, []) if host != sample.host}:
        readings = [(asked, answered) for job_host, asked, answered in outgoing[vm] if job_host == host]
        if any(answered <= sample.answered for _asked, answered in readings) and \
                any(asked >= sample.asked for asked, _answered in readings):
            return True
    return False


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


# -- the monitor's own gaps -------------------------------------------------------------------------------------

@dataclass
class Gaps:
    """How often the monitor failed to read a host for longer than `limit` (outside deliberate freezes)."""
    readings: int
    long_gaps: int
    by_host: dict[str, int]
    longest: float
    excused: int
    limit: float = GAP_LIMIT_S

    @property
    def share(self) -> float:
        return self.long_gaps / self.readings if self.readings else 1.0

    @property
    def inconclusive(self) -> str | None:
        """Why the run means nothing, or None."""
        if not self.readings:
            return "the monitor made no reading"
        if self.share > GAP_SHARE_LIMIT:
            return f"inconclusive: the monitor's readings of a host were more than {self.limit:g} s apart in " \
                   f"{self.long_gaps} of {self.readings} readings ({self.share:.1%} > {GAP_SHARE_LIMIT:.0%}; " \
                   f"longest {self.longest:.2f} s; by host: {self.by_host}): a second copy could have gone unseen"
        return None

    def describe(self) -> str:
        return f"monitor gaps over {self.limit:g} s: {self.long_gaps} of {self.readings} readings " \
               f"({self.share:.2%}; longest {self.longest:.2f} s; {self.excused} more inside deliberate freezes)"


def sampling_gaps(history: History, limit: float = GAP_LIMIT_S) -> Gaps:
    """The spacing of each host's libvirt readings: a gap is the time between two consecutive answers longer
    than `limit` (a run that reads many hosts more slowly states a larger one); one that overlaps a deliberate
    freeze of that host's libvirtd (`Freeze`, with a second's margin for the readings that piled up) is
    excused."""
    readings, long_gaps, longest, excused = 0, 0, 0.0, 0
    by_host: dict[str, int] = {}
    frozen: dict[str, list[Freeze]] = {}
    for freeze in history.freezes:
        frozen.setdefault(freeze.host, []).append(freeze)
    hosts = sorted({sample.host for sample in history.samples})
    for host in hosts:
        answers = sorted(sample.answered for sample in history.samples
                         if sample.host == host and sample.source == "libvirt")
        readings += len(answers)
        for previous, current in zip(answers, answers[1:]):
            gap = current - previous
            if gap <= limit:
                continue
            if any(freeze.start - 1.0 <= current and previous <= freeze.end + 1.0 for freeze in frozen.get(host, [])):
                excused += 1
                continue
            long_gaps += 1
            by_host[host] = by_host.get(host, 0) + 1
            longest = max(longest, gap)
    return Gaps(readings, long_gaps, by_host, longest, excused, limit)


# -- acknowledged commands against the final records ------------------------------------------------------------

RUN_INTENT = {"start": "running", "restart": "running", "stop": "off", "shutdown": "off", "disable": "off",
              "define": "off"}
"""What each command says about whether the VM runs (a new VM is defined stopped)."""
PLACING = ("define", "migrate", "migrate-auto", "move")


@dataclass(frozen=True)
class _Write:
    """One change of a VM's desired state or placement that may have taken effect: a command (acknowledged,
    or whose answer was lost: then it may take effect at any time after it was sent) or the cluster's own,
    from a task record."""
    value: str | None
    """``running``/``off`` for the state; the node for a placement, None for "some node"."""
    invoked: float
    completed: float
    """When it had surely taken effect; infinity when that is unknown."""
    acknowledged: bool
    what: str
    excluded: str | None = None
    """For a placement "some node but this one" (a flush or a recovery moves a VM off its node)."""

    def allows(self, value: str) -> bool:
        if self.value is not None:
            return self.value == value
        return value != self.excluded


def command_problems(history: History, records: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> list[str]:
    """VMs whose final record contradicts the commands acknowledged on them.

    The final state and placement are registers written by commands and by the cluster itself. A write is
    *overwritten for sure* when an acknowledged write began after it had surely taken effect; the final value
    must be one of the writes that are not (the last acknowledged one, and any write that overlaps it or came
    after it, including a command whose answer was lost, which may take effect at any time). When no write on a
    VM was acknowledged, nothing is claimed.

    - state: ``start`` and ``restart`` mean running (a restart ends running), ``stop``, ``shutdown`` and
      ``disable`` mean not running, ``define`` means a new stopped VM; ``migrate`` does not change it (a
      stopped VM migrates stopped). The final record counts as running in ``start``/``restart``/``migrate``/
      ``unmigrate`` and as not running in ``stop``/``shutdown``/``disable``/``fail`` (after settling, the
      hosts match the record: `record_mismatches`). The cluster's own state writes are the VMs a flush or a
      recovery *shut down* for want of a target (its task record's ``shut_down``), from the task's creation to
      its end: a VM a flush, ready or recovery *moved* must keep its state (so a stop answered during a flush,
      then overwritten by the flush, is found). Autostart, the one other way the cluster starts a VM, is never
      set here: no VM of these runs has ``node_autostart``.
    - placement: ``migrate``/``move`` with a target mean that node, without one (``migrate-auto``) the node the
      answer named (else any node); ``define`` its target (or the answer's node). The cluster's own moves are
      those of tasks: a VM in a flush's or a recovery's ``moved`` went to any node but the task's, one in a
      ready's ``moved`` went back to the ready node. A migration the nodes gave up on (a live migration kept on
      its source, or a VM that could not start on its target sent back) leaves the VM's ``last_error`` naming
      the migration: the record itself then says that the last migration was undone, and why.
    """
    problems = []
    task_writes = _task_writes(history, tasks)
    for record in sorted(records, key=lambda record: record["name"]):
        vm = record["name"]
        if record.get("state") == "remove":
            continue
        operations = [op for op in history.operations if op.vm == vm and op.outcome not in NO_EFFECT]
        final_state = "running" if record.get("state") in RUNNING_STATES else \
            "off" if record.get("state") in STOPPED_STATES else None
        state_writes = [_Write(RUN_INTENT[op.kind], op.invoked, op.completed if op.ok else math.inf, op.ok,
                               _describe(op)) for op in operations if op.kind in RUN_INTENT]
        state_writes += task_writes.get((vm, "state"), [])
        if final_state is not None:
            problem = _judge(vm, "state", final_state, f"{record.get('state')} (so {final_state})", state_writes)
            if problem:
                problems.append(problem)
        placing = [_Write(_target(op), op.invoked, op.completed if op.ok else math.inf, op.ok, _describe(op))
                   for op in operations if op.kind in PLACING]
        placing += task_writes.get((vm, "placement"), [])
        last_error = str(record.get("last_error") or "")
        if record.get("node") and "migrat" not in last_error:
            problem = _judge(vm, "placement", record["node"], f"on {record['node']}", placing)
            if problem:
                problems.append(problem)
    return problems


def _judge(vm: str, register: str, final: str, shown: str, writes: list[_Write]) -> str | None:
    acknowledged = [write for write in writes if write.acknowledged]
    if not acknowledged:
        return None
    standing = [write for write in writes
                if not any(other.acknowledged and other.invoked > write.completed for other in acknowledged)]
    if any(write.allows(final) for write in standing):
        return None
    last = max(acknowledged, key=lambda write: write.completed)
    return f"{vm}: {register} {shown} contradicts the acknowledged command(s): last acknowledged " \
           f"{last.what}; every write that could still stand: " + "; ".join(write.what for write in standing)


def _target(op: Operation) -> str | None:
    if op.node:
        return op.node
    for word in op.detail.split():
        if word.startswith("node="):
            return word.partition("=")[2] or None
    return None


def _describe(op: Operation) -> str:
    return f"{op.kind}({op.vm}{', ' + op.node if op.node else ''}) by {op.actor} at {op.invoked:.3f}.." \
           f"{op.completed:.3f} s -> {op.outcome}{' ' + op.detail if op.detail else ''}"


def _task_writes(history: History, tasks: list[dict[str, Any]]) -> dict[tuple[str, str], list[_Write]]:
    """(VM, ``state``/``placement``) → the cluster's own writes, from its task records."""
    writes: dict[tuple[str, str], list[_Write]] = {}
    for task in tasks:
        created = history.from_wall(task.get("created")) or -math.inf
        finished = history.from_wall(task.get("finished")) if task.get("finished") else math.inf
        what = f"{task.get('kind')} task {task.get('id')} of node {task.get('node')} " \
               f"({created:.3f}..{finished:.3f} s, {task.get('state')})"
        for vm in task.get("shut_down") or []:
            writes.setdefault((vm, "state"), []).append(_Write("off", created, finished, False, what + ": shut down"))
        for vm in task.get("moved") or []:
            if task.get("kind") == "ready":
                move = _Write(task.get("node"), created, finished, False, what + ": moved back")
            else:
                move = _Write(None, created, finished, False, what + ": moved away", excluded=task.get("node"))
            writes.setdefault((vm, "placement"), []).append(move)
    return writes
