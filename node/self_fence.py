"""Self-fencing: a node cut off from ZooKeeper stops its own VMs before the leader restarts them elsewhere.

The leader marks a node dead after `fence_intervals` × `keepalive_interval` seconds in which it saw no new
keepalive, then fences it and starts its VMs on other nodes. A node that cannot reach ZooKeeper cannot tell
whether that is happening, so it makes sure its VMs are off first: its watchdog counts the silence from the
start of the last keepalive write ZooKeeper acknowledged (the leader cannot have seen a later one), and after
`suicide_intervals` keepalive intervals of it:

- if the last maintenance flag it saw was on, nothing is fenced or recovered: it keeps its VMs;
- if its own ZooKeeper session answers after all (its writes were only late), it is not cut off;
- it asks its peers' node agents, over the network, whether *they* reach ZooKeeper. If one does, this node is
  the one cut off. If none does, it is a ZooKeeper outage in which nobody can recover anything only when a
  majority of the cluster's nodes, this one included, answered: then it keeps its VMs and asks again (every
  half interval). Once the outage ends, nodes reconnect at different times (a restarted server loads its data
  first; a session may have expired meanwhile), so "a peer reaches it" counts only once the silence since the
  start of the last question that found the outage is `reconnect_grace_s` longer than the one that starts a
  self-fence: the leader, which restarts its clocks when it regains ZooKeeper (after, or as, the outage ends),
  gives a node it has not heard from since the same grace besides its deadline, so the deadline rule holds
  from there as it does from a last keepalive. A minority that sees only itself, or itself
  and fellow members of the minority, cannot tell an outage from a partition in which the majority goes on
  without it: it fences itself (the leader, which restarts its clocks when it regains ZooKeeper, still gives
  it `fence_intervals` keepalive intervals from then);
- a node that knows of no peer at all is the whole cluster it knows of (a majority of one): it keeps its VMs,
  as nobody could start them elsewhere.

Cut off, it stops every domain PVC manages here that is not shut off (running or paused: libvirt destroy, not a
guest shutdown), all at once, retrying until libvirt's budget is spent; whatever libvirt did not confirm off,
it kills: the QEMU processes its own libvirtd's PID files name (`pvc.node.guest_processes`). It says it has
fenced itself only once that is confirmed (libvirt lists nothing of PVC's active, or the guests' QEMU processes
are gone and no libvirt call of this node is still running in libvirtd); until then, and after, it checks again
every half interval and stops whatever runs. From the start it starts no VM and writes no keepalive: the
leader will mark it dead, fence it and recover its VMs, even if ZooKeeper comes back first. Its VMs' statuses
are written once ZooKeeper answers again, by the reconciler, from what libvirt then says (`unknown` where
libvirt does not answer), never from memory. A new daemon (a restart, as after the power cycle of a fence)
starts afresh.

`pvc.fencing_settings` holds the deadline arithmetic, checked when the daemon connects.
"""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

from pvc import schema
from pvc.fencing_settings import FencingSettings
from pvc.handshake import authenticated_proxy
from pvc.node.guest_processes import GuestProcesses
from pvc.node.hypervisor import DomainActions
from pvc.node.peer_directory import PeerDirectory
from pvc.store import Store

log = logging.getLogger(__name__)


class SelfFence:
    def __init__(self, node: str, store: Store, peers: PeerDirectory, actions: DomainActions,
                 settings: Callable[[], FencingSettings], maintenance: Callable[[], bool], cluster_secret: str,
                 refuse_starts: Callable[[str], None], guest_processes: GuestProcesses | None = None):
        self._node = node
        self._guest_processes = guest_processes or GuestProcesses(None)
        self._refuse_starts = refuse_starts
        self._store = store
        self._peers = peers
        self._actions = actions
        self._settings = settings
        self._maintenance = maintenance
        self._cluster_secret = cluster_secret
        self._last_acknowledged = time.monotonic()
        self._next_question = 0.0
        self._kept_reason: str | None = None
        self._outage_asked_at: float | None = None
        """When (monotonic) the last question that found an outage began, until a keepalive is acknowledged
        again: nodes reconnect at different times when an outage ends, so until `reconnect_grace_s` and
        `silence_before_self_fence_s` after it, "a peer reaches ZooKeeper, this node does not" is asked again
        rather than taken as this node's isolation."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        """Set to have the watchdog look again now: the daemon stops, or its keepalive interval changed."""
        self._next_enforcement = 0.0
        self._unconfirmed: str | None = None
        """What the last unconfirmed attempt found, so that the same news is logged once."""
        self.fenced_reason: str | None = None
        """Set once this node begins to stop its VMs: no VM starts here and no keepalive is written after."""
        self.confirmed_at: float | None = None
        """When (monotonic) it was first confirmed that no guest of this node runs; None until then."""

    @property
    def fenced(self) -> bool:
        return self.fenced_reason is not None

    def acknowledged(self, write_started: float) -> None:
        """A keepalive write begun at `write_started` (monotonic) was acknowledged by ZooKeeper (at start, the
        request that found this daemon the node's owner, before its first keepalive). Once fenced,
        one begun before the fence and acknowledged after it (when the link came back) changes nothing: the log
        says how long after the last keepalive acknowledged *before* the fence the guests were stopped."""
        if self.fenced:
            return
        self._last_acknowledged = max(self._last_acknowledged, write_started)

    @property
    def watching(self) -> bool:
        """Whether the watchdog has started (and not been stopped)."""
        return self._thread is not None and not self._stopping.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="self-fence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def settings_changed(self) -> None:
        """The fencing settings changed (a new keepalive interval is in use): the watchdog's next look is
        reckoned again from them."""
        self._wake.set()

    def zookeeper_reachable(self, timeout: float) -> tuple[bool, str]:
        """Whether ZooKeeper answers this node's session within `timeout` seconds: a sync goes through the
        ensemble's leader, so a server cut off from its quorum does not count as reachable."""
        started = time.monotonic()
        try:
            self._store.zk.sync_async(schema.ROOT).get(timeout=timeout)
        except Exception as error:
            return False, f"no answer from ZooKeeper within {timeout:g} s ({type(error).__name__}: {error})"
        return True, f"ZooKeeper answered in {time.monotonic() - started:.2f} s"

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_look_s())
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._check()
            except Exception:
                log.exception("self-fence watchdog: check failed; checking again")

    def _next_look_s(self) -> float:
        """Seconds until the watchdog must look again: when the silence since the last acknowledged keepalive
        reaches `silence_before_self_fence_s` (acknowledged keepalives only put that later), and from then on,
        or once fenced, every `watchdog_period_s`; at most a keepalive interval, so that any other change of the
        settings is seen within one. A node whose keepalives are acknowledged looked four times a second: 16%
        of an idle node's CPU."""
        settings = self._settings()
        if self.fenced:
            return settings.watchdog_period_s
        silence_ends = self._last_acknowledged + settings.silence_before_self_fence_s - time.monotonic()
        return max(settings.watchdog_period_s, min(silence_ends, settings.keepalive_interval))

    def _check(self) -> None:
        settings = self._settings()
        if self.fenced:
            if time.monotonic() >= self._next_enforcement:
                self._enforce(settings)
            return
        silence = time.monotonic() - self._last_acknowledged
        if not settings.self_fence_enabled or silence < settings.silence_before_self_fence_s:
            self._kept_reason = None
            self._outage_asked_at = None
            return
        if time.monotonic() < self._next_question:
            return
        if self._maintenance():
            self._keep("maintenance", f"no keepalive acknowledged for {silence:.2f} s, but the last maintenance "
                       "flag seen was on: nothing is fenced or recovered, so this node keeps its VMs")
            self._next_question = time.monotonic() + settings.keepalive_interval
            return
        asked_at = time.monotonic()
        verdict, reason = self._ask(settings)
        now = time.monotonic()
        silence = now - self._last_acknowledged
        if verdict == "outage":
            self._outage_asked_at = asked_at
        last_chance = None if self._outage_asked_at is None else (
            self._outage_asked_at + settings.reconnect_grace_s + settings.silence_before_self_fence_s)
        if verdict == "cut off" and last_chance is not None and now < last_chance:
            self._keep("reconnecting", f"ZooKeeper is back for a peer ({reason}) but not yet for this node: asking "
                       f"again every {settings.keepalive_interval / 2:g} s for up to {last_chance - now:.2f} s "
                       "before stopping any VM (the leader gives a node as long to come back after an outage)")
            self._next_question = min(now + settings.keepalive_interval / 2, last_chance)
        elif verdict == "cut off":
            self._fence(settings, silence, reason)
        elif verdict == "outage":
            self._keep(f"outage: {reason}", f"no keepalive acknowledged for {silence:.2f} s; {reason}: a ZooKeeper "
                       "outage, not this node's isolation, so it keeps its VMs")
            self._next_question = time.monotonic() + settings.keepalive_interval / 2
        else:
            log.info("no keepalive acknowledged for %.2f s, but %s: not cut off", silence, reason)
            self._next_question = time.monotonic() + settings.keepalive_interval / 2

    def _keep(self, kind: str, message: str) -> None:
        """Log why this node keeps its VMs, once for as long as the reason stays the same."""
        if kind != self._kept_reason:
            log.warning("%s", message)
        self._kept_reason = kind

    def _ask(self, settings: FencingSettings) -> tuple[str, str]:
        """``connected``, ``outage`` or ``cut off``, and why: this node's own probe and its peers' answers,
        asked at once and waited for at most the peer check time. An outage needs a majority of the cluster's
        nodes, this one included, answering that they cannot reach ZooKeeper."""
        uris = self._peers.agent_uris()
        if not uris:
            return "outage", "this node knows of no peer that could run its VMs"
        budget = settings.peer_check_s
        pool = ThreadPoolExecutor(max_workers=len(uris) + 1, thread_name_prefix="peer-check")
        try:
            own = pool.submit(self.zookeeper_reachable, budget * 0.8)
            asked = {name: pool.submit(self._ask_peer, uri, budget) for name, uri in sorted(uris.items())}
            wait([own, *asked.values()], timeout=budget)
            own_answer = own.result() if own.done() else (False, "no answer in time")
            answers = {name: future.result() if future.done() else None for name, future in asked.items()}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if own_answer[0]:
            return "connected", own_answer[1]
        reached = {name: answer for name, answer in answers.items() if answer is not None}
        summary = ", ".join(f"{name}: {'reaches ZooKeeper' if answer else 'cannot reach ZooKeeper'}"
                            for name, answer in sorted(reached.items())) or "no peer answered"
        unreached = sorted(set(answers) - set(reached))
        if unreached:
            summary += f" (no answer from {', '.join(unreached)})"
        if any(reached.values()):
            return "cut off", summary
        answering, members = len(reached) + 1, len(uris) + 1
        if 2 * answering > members:
            return "outage", (f"a majority ({answering} of {members} nodes, this one included) answered and none "
                              f"reaches ZooKeeper ({summary})")
        return "cut off", (f"only {answering} of {members} nodes, this one included, answered, none reaching "
                           f"ZooKeeper: not a majority, so the rest may go on without them ({summary})")

    def _ask_peer(self, uri: str, timeout: float) -> bool | None:
        """Whether the peer at `uri` reaches ZooKeeper; None when it does not answer in time."""
        try:
            with authenticated_proxy(uri, self._cluster_secret, timeout) as proxy:
                return bool(proxy.zookeeper_reachable(timeout / 2)["reachable"])
        except Exception as error:
            log.debug("peer %s did not answer: %s", uri, error)
            return None

    def fence_now(self, reason: str) -> bool:
        """Fence this node for `reason` (its libvirt lost, with ``libvirt_lost_action: fence``): stop its guests
        as a node cut off would, write no keepalive, so that the leader fences it and recovers its VMs. Never
        while the maintenance flag last seen was on; returns whether it fenced (now or before)."""
        if self.fenced:
            return True
        if self._maintenance():
            self._keep("maintenance", f"{reason}, but the last maintenance flag seen was on: no self-fence")
            return False
        settings = self._settings()
        self.fenced_reason = f"stopped by self-fencing: {reason}"
        self._refuse_starts(self.fenced_reason)
        log.error("%s: fencing this node itself (libvirt_lost_action fence): stopping every VM here hard and "
                  "writing no more keepalives, so that the leader fences it and recovers its VMs", reason)
        self._stop_everything(settings, time.monotonic())
        return True

    def _fence(self, settings: FencingSettings, silence: float, reason: str) -> None:
        self.fenced_reason = (f"stopped by self-fencing: cut off from ZooKeeper for {silence:.2f} s "
                              f"({reason})")
        self._refuse_starts(self.fenced_reason)
        started = time.monotonic()
        log.error("cut off from ZooKeeper: no keepalive acknowledged for %.2f s (suicide_intervals %d × "
                  "keepalive_interval %g s = %g s) and %s; stopping every VM here hard (%s; %s)",
                  silence, settings.suicide_intervals, settings.keepalive_interval,
                  settings.silence_before_self_fence_s, reason, settings.describe_self_fence(),
                  settings.describe_fence())
        self._stop_everything(settings, started)

    def _enforce(self, settings: FencingSettings) -> None:
        """After the self-fence: stop whatever of PVC's runs here again (a libvirt call that timed out during
        the fence and went on later), and confirm the fence once nothing does."""
        self._next_enforcement = time.monotonic() + settings.keepalive_interval / 2
        self._stop_everything(settings, time.monotonic())

    def _stop_everything(self, settings: FencingSettings, started: float) -> None:
        """Destroy PVC's guests through libvirt, retrying within its budget; kill the QEMU processes of those
        libvirt did not confirm off; log the outcome, saying "self-fenced" only when confirmed."""
        libvirt_deadline = started + settings.libvirt_stop_budget_s
        listed: dict[str, bool] | None = None
        while True:
            outcome = self._actions.pull_plugs(libvirt_deadline)
            if outcome is not None:
                listed = {**(listed or {}), **outcome}
                if all(outcome.values()):
                    break
            if time.monotonic() >= libvirt_deadline - 0.02:
                break
            time.sleep(0.02)
        killed, alive = self._guest_processes.kill(libvirt_deadline + settings.kill_budget_s)
        in_flight = self._actions.calls_in_flight()
        took = time.monotonic() - started
        libvirt_says_off = outcome is not None and all(outcome.values())
        processes_say_off = self._guest_processes.visible and not alive
        confirmed = not alive and not in_flight and (libvirt_says_off or processes_say_off)
        off = sorted(name for name, stopped in (listed or {}).items() if stopped)
        if self.confirmed_at is not None and confirmed and not off and not killed:
            return
        not_off = sorted(name for name, stopped in (listed or {}).items() if not stopped and name not in killed)
        detail = (f"{len(off)} VM(s) destroyed through libvirt ({', '.join(off) or 'none'})"
                  + (f", QEMU killed for {', '.join(killed)}" if killed else "")
                  + ("" if outcome is not None else ", libvirt could not list this host's domains in time")
                  + (f", still running: {', '.join(alive)}" if alive else "")
                  + (f", not confirmed off by libvirt: {', '.join(not_off)}" if not_off else "")
                  + (f", libvirt calls still in flight: {'; '.join(in_flight)}" if in_flight else ""))
        if confirmed and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
            log.error("self-fenced %.2f s after the last acknowledged keepalive (%.2f s to stop VMs; the leader's "
                      "deadline is %g s): %s; no VM starts here and no keepalive is written until this daemon "
                      "restarts", self.confirmed_at - self._last_acknowledged, took, settings.fence_deadline_s,
                      detail)
        elif confirmed:
            log.error("self-fenced node: found guests of PVC running again and stopped them: %s", detail)
        else:
            self.confirmed_at = None
            log.log(logging.ERROR if detail != self._unconfirmed else logging.DEBUG,
                    "self-fence NOT confirmed %.2f s after the last acknowledged keepalive: %s; trying again every "
                    "%g s", time.monotonic() - self._last_acknowledged, detail, settings.keepalive_interval / 2)
        self._unconfirmed = None if confirmed else detail
        self._next_enforcement = time.monotonic() + settings.keepalive_interval / 2
