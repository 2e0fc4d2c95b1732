"""Snapshots of every volume of a VM at one moment, taken on the node that runs it.

A running guest whose domain has a guest-agent channel, and whose agent answers, has its filesystems frozen
(``guest-fsfreeze-freeze``) for the duration; any other running guest is paused (`libvirt suspend`); a
crash-consistent snapshot does neither. The storage backend prepares the batch first (files opened, helpers
started) so that the freeze or pause covers only the batch's `take`, which starts no process.

It is bounded twice over: a timer on this node thaws or resumes the guest once `max_pause_s` has passed,
whatever the coordinator that asked is doing (it may have died), and the snapshot is then abandoned (its volume
snapshots removed). Before freezing or pausing, the node writes a file naming the guest (and which it does) in
its pause directory (`snapshot_pause_directory`) and removes it once the guest runs again: a daemon killed in
between finds the file when it starts again and thaws or resumes the guest (`resume_left_paused`). So no
snapshot leaves a guest frozen or paused.
"""
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import libvirt

from pvc import schema
from pvc.errors import InvalidInput, OperationFailed, PVCError
from pvc.hookspecs import StorageBackend
from pvc.node.hypervisor import Hypervisor

log = logging.getLogger(__name__)

AGENT_CHANNEL = "org.qemu.guest_agent.0"
"""The virtio channel name of qemu-guest-agent: a domain with it may have an agent to freeze its filesystems."""
AGENT_TIMEOUT_S = 10
"""How long the agent gets to freeze or thaw (it flushes the guest's caches first): the guest runs meanwhile,
so this is not part of the pause."""


RELEASE_RETRY_S = 1.0
"""How often a guest whose release could not be made sure of is thawed or resumed again."""


_IN_PROGRESS: set[tuple[str, str]] = set()
"""(VM, snapshot) pairs this daemon is taking now, so that a coordinator resolving a creation cut short knows
whether a node may still be making its volume snapshots."""
_IN_PROGRESS_LOCK = threading.Lock()


@contextlib.contextmanager
def _taking(vm: str, snapshot: str) -> Iterator[None]:
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add((vm, snapshot))
    try:
        yield
    finally:
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard((vm, snapshot))


def in_progress(vm: str, snapshot: str) -> bool:
    with _IN_PROGRESS_LOCK:
        return (vm, snapshot) in _IN_PROGRESS


class GuestSnapshots:
    def __init__(self, hypervisor: Hypervisor, backend: StorageBackend, pause_directory: str | Path,
                 max_pause_s: float):
        self._hypervisor = hypervisor
        self._backend = backend
        self._pause_directory = Path(pause_directory)
        self.max_pause_s = max_pause_s

    def take(self, vm: str, volumes: Sequence[str], snapshot: str, max_pause_s: float | None,
             pause: bool) -> dict[str, Any]:
        """Snapshot every volume (``POOL/VOLUME``) of `vm` as `snapshot`; with `pause`, the guest (if it
        runs here) has its filesystems frozen by its agent, or else is paused, around it for at most
        `max_pause_s` (at most this node's own maximum). Returns ``{"paused_ms": float or None, "method": str,
        "mode": "freeze" | "pause" | None}``."""
        schema.check_name("VM", vm)
        schema.check_name("snapshot", snapshot)
        pairs = [split_volume(volume) for volume in volumes]
        limit = self.max_pause_s if max_pause_s is None else min(float(max_pause_s), self.max_pause_s)
        if limit <= 0:
            raise InvalidInput(f"the maximum pause must be a positive number of seconds, not {max_pause_s!r}")
        with _taking(vm, snapshot), self._batch(pairs, snapshot) as batch:
            if not pause or not self._running(vm):
                batch.take()
                return {"paused_ms": None, "method": batch.method}
            held_ms, mode = self._held(vm, batch, limit, pairs, snapshot)
            return {"paused_ms": held_ms, "method": batch.method, "mode": mode}

    def _held(self, vm: str, batch: Any, limit: float, pairs: list[tuple[str, str]],
              snapshot: str) -> tuple[float, str]:
        """Take the batch with `vm`'s filesystems frozen by its agent, or else with `vm` paused; past `limit`
        the timer thaws or resumes it and the snapshot is abandoned. Returns how long, and ``freeze`` or
        ``pause``."""
        marker = self._pause_directory / vm
        self._pause_directory.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"released": False, "mode": None, "thaw_too": False}
        guard = threading.Lock()

        def release(reason: str) -> None:
            with guard:
                if state["released"] or state["mode"] is None:
                    return
                state["released"] = reason
                self._release(vm, marker, thaw=state["mode"] == "freeze" or state["thaw_too"],
                              quiet=state["mode"] != "freeze", resume=state["mode"] == "pause")

        timer = threading.Timer(limit, release, args=("deadline",))
        timer.daemon = True
        try:
            marker.write_text("freeze")
            frozen = self._agent_freezes(vm)
            with guard:
                state["mode"] = "freeze" if frozen else None
            if state["mode"] is None:
                # A freeze that failed may still have frozen something: thaw it too, now and on release.
                marker.write_text("freeze pause" if frozen is False else "pause")
                with guard:
                    state["mode"], state["thaw_too"] = "pause", frozen is False
                self._suspend(vm)
            began = time.monotonic()
            timer.start()
            batch.take()
            with guard:
                late = state["released"] == "deadline"
            held_ms = (time.monotonic() - began) * 1000
        finally:
            timer.cancel()
            if state["mode"] is None:
                marker.unlink(missing_ok=True)
            release("done")
        if late:
            for pool, volume in pairs:
                self._backend.snapshot_remove(pool, volume, snapshot)
            what = "frozen" if state["mode"] == "freeze" else "paused"
            raise OperationFailed(f"snapshot {vm}@{snapshot} abandoned: the guest would have stayed {what} more "
                                  f"than {limit:g} s (it runs again; no volume snapshot is kept)")
        return held_ms, state["mode"]

    def _release(self, vm: str, marker: Path, thaw: bool, quiet: bool, resume: bool) -> None:
        """Thaw and/or resume the guest; its marker goes only once that is done with no call on it still under
        way in libvirt. A pause or freeze that timed out can land after the resume: the guest had stayed paused
        for good, its marker gone. Until then a thread of its own tries again (`_keep_releasing`); a thaw that
        failed where the guest was frozen is still this call's error."""
        failure = None
        try:
            if self._released(vm, thaw, quiet, resume):
                marker.unlink(missing_ok=True)
                return
        except PVCError as error:
            failure = error
        self._keep_releasing(vm, marker, thaw, resume)
        if failure is not None and not quiet:
            raise failure

    def _released(self, vm: str, thaw: bool, quiet: bool, resume: bool) -> bool:
        """One attempt; True when no call on the guest was under way before it, so nothing can undo it."""
        settled = self._hypervisor.in_flight(vm) is None
        if thaw:
            self._thaw(vm, quiet=quiet)
        if resume:
            self._resume(vm)
        return settled

    def _keep_releasing(self, vm: str, marker: Path, thaw: bool, resume: bool) -> None:
        def until_released() -> None:
            while True:
                time.sleep(RELEASE_RETRY_S)
                try:
                    if self._released(vm, thaw, True, resume):
                        break
                except PVCError as error:
                    log.warning("guest %s: release after a snapshot failed again (%s); trying again", vm, error)
            marker.unlink(missing_ok=True)
            log.warning("guest %s: released after a snapshot once libvirt had ended every call on it", vm)
        log.warning("guest %s: a call on it is still under way in libvirt (%s); it is released again until "
                    "none is", vm, self._hypervisor.in_flight(vm) or "a release that failed")
        threading.Thread(target=until_released, name=f"release-{vm}", daemon=True).start()

    def _agent_freezes(self, vm: str) -> bool | None:
        """Freeze the guest's filesystems through its agent: True once frozen; None if its domain has no agent
        channel; False if the agent did not freeze in time (what it may have frozen is thawed at once)."""
        def has_agent() -> bool:
            return AGENT_CHANNEL in self._hypervisor.connection().lookupByName(vm).XMLDesc(0)

        def freeze() -> None:
            domain = self._hypervisor.connection().lookupByName(vm)
            domain.agentSetResponseTimeout(AGENT_TIMEOUT_S, 0)
            domain.fsFreeze()

        if not self._hypervisor.call(f"agent check of {vm}", has_agent, domain=vm):
            return None
        try:
            self._hypervisor.call(f"filesystem freeze of {vm}", freeze, timeout=AGENT_TIMEOUT_S + 2, domain=vm)
            return True
        except PVCError as error:
            log.info("guest %s: its agent did not freeze its filesystems (%s); pausing it instead", vm, error)
            self._thaw(vm, quiet=True)
            return False

    def _thaw(self, vm: str, quiet: bool = False) -> None:
        """Thaw the guest's filesystems; `quiet`: where nothing may be frozen, a failure is only logged."""
        try:
            self._hypervisor.call(f"filesystem thaw of {vm}",
                                  lambda: self._hypervisor.connection().lookupByName(vm).fsThaw(),
                                  timeout=AGENT_TIMEOUT_S + 2, domain=vm)
        except PVCError as error:
            if not quiet:
                raise
            log.info("guest %s: thaw after a failed freeze: %s", vm, error)

    def resume_left_paused(self) -> list[str]:
        """Thaw or resume every guest a snapshot froze or paused before this daemon was killed; returns their
        names."""
        if not self._pause_directory.is_dir():
            return []
        resumed = []
        for marker in sorted(self._pause_directory.iterdir()):
            if marker.name.startswith(".") or not marker.is_file():
                continue
            try:
                schema.check_name("VM", marker.name)
                if "freeze" in marker.read_text().split():
                    self._thaw(marker.name, quiet="pause" in marker.read_text().split())
                self._resume(marker.name)
            except Exception as error:
                log.error("guest %s, paused by a snapshot, could not be resumed: %s", marker.name, error)
                continue
            marker.unlink(missing_ok=True)
            resumed.append(marker.name)
            log.warning("guest %s was left paused by a snapshot cut short: resumed", marker.name)
        return resumed

    def _batch(self, pairs: list[tuple[str, str]], snapshot: str):
        return batch(self._backend, pairs, snapshot)

    def _running(self, vm: str) -> bool:
        def active() -> bool:
            try:
                return bool(self._hypervisor.connection().lookupByName(vm).isActive())
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
        return self._hypervisor.call(f"state check of {vm}", active, domain=vm)

    def _suspend(self, vm: str) -> None:
        self._hypervisor.call(f"pause of {vm}", lambda: self._hypervisor.connection().lookupByName(vm).suspend(),
                              domain=vm)

    def _resume(self, vm: str) -> None:
        """Resume `vm` if it is paused; a guest gone or running already is fine."""
        def resume() -> None:
            try:
                domain = self._hypervisor.connection().lookupByName(vm)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()
        self._hypervisor.call(f"resume of {vm}", resume, domain=vm)


@contextlib.contextmanager
def batch(backend: StorageBackend, pairs: list[tuple[str, str]], snapshot: str) -> Iterator[Any]:
    """The backend's `snapshot_batch`, or one snapshot per volume where it has none."""
    batch_of = getattr(backend, "snapshot_batch", None)
    if batch_of is not None:
        with batch_of(pairs, snapshot) as prepared:
            yield prepared
    else:
        yield _OneByOne(backend, pairs, snapshot)


def snapshot_volumes(backend: StorageBackend, vm: str, volumes: Sequence[str], snapshot: str) -> str:
    """Snapshot the volumes of `vm`, which runs nowhere, at one moment; returns how (`SnapshotBatch.method`)."""
    pairs = [split_volume(volume) for volume in volumes]
    with _taking(schema.check_name("VM", vm), schema.check_name("snapshot", snapshot)), \
            batch(backend, pairs, snapshot) as prepared:
        prepared.take()
        return prepared.method


class _OneByOne:
    """A backend without `snapshot_batch`: one `snapshot_create` per volume, all or none."""

    method = "one by one"

    def __init__(self, backend: StorageBackend, pairs: list[tuple[str, str]], snapshot: str):
        self._backend, self._pairs, self._snapshot = backend, pairs, snapshot

    def take(self) -> None:
        made = []
        try:
            for pool, volume in self._pairs:
                self._backend.snapshot_create(pool, volume, self._snapshot)
                made.append((pool, volume))
        except BaseException:
            for pool, volume in made:
                self._backend.snapshot_remove(pool, volume, self._snapshot)
            raise


def split_volume(volume: str) -> tuple[str, str]:
    if not isinstance(volume, str) or volume.count("/") != 1:
        raise InvalidInput(f"a volume is named POOL/VOLUME, not {volume!r}")
    pool, name = volume.split("/")
    return schema.check_name("pool", pool), schema.check_name("volume", name)
