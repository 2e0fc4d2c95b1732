"""The cluster's own deadlines, from which the nemesis times its faults and the checker its expectations.

A fault means something only against the deadline it is aimed at: a libvirtd frozen just past the node's libvirt
timeout, a daemon paused past its ZooKeeper session, a node that must be found dead once the leader's fence
deadline has passed. A local cluster runs at the fast intervals (`pvc.cli.localcluster.cluster`: a node dead
after 4 s) or at the sample configs' (``production``: keepalive 5 s, dead after 30 s, libvirt timeout 10 s), so
every such figure is derived here from the cluster's settings, never written down for one of them. At the fast
intervals each derived figure is the one the faults were first tuned with.
"""
from __future__ import annotations

from dataclasses import dataclass

from pvc.cli.localcluster.cluster import (FENCE_INTERVALS, KEEPALIVE_INTERVAL, LIBVIRT_TIMEOUT, SESSION_TIMEOUT,
                                           sample_timings)


@dataclass(frozen=True)
class Timings:
    keepalive_s: float
    fence_after_s: float
    """The leader's fence deadline: keepalives missed for this long make a node dead."""
    libvirt_timeout_s: float
    """How long a node waits on a libvirt call."""
    session_timeout_s: float
    """The node daemons' ZooKeeper session timeout."""

    @classmethod
    def of(cls, local) -> "Timings":
        """The timings of a `LocalCluster`, as its daemons were configured."""
        if local.state.get("timings") != "production":
            return FAST
        node, coordinator = sample_timings("pvcnoded"), sample_timings("pvcapid")
        return cls(keepalive_s=coordinator["keepalive_interval"],
                   fence_after_s=coordinator["keepalive_interval"] * coordinator["fence_intervals"],
                   libvirt_timeout_s=node["libvirt_timeout"], session_timeout_s=node["zookeeper_session_timeout"])

    @property
    def detection_window_s(self) -> float:
        """Seconds after a paused node daemon wakes within which the leader may still find it dead."""
        return self.fence_after_s + 2.0

    @property
    def recovery_wait_s(self) -> float:
        """Longest an overlapping fault waits for the recovery it is meant to overlap to be running."""
        return self.fence_after_s + 16.0

    @property
    def administrator_after_s(self) -> float:
        """Seconds a node may stay dead with no recovery of it running before the nemesis, as an administrator,
        powers it off and confirms its fence."""
        return self.fence_after_s + 11.0

    @property
    def whole_again_timeout_s(self) -> float:
        """Longest a heavy fault waits for every node to run again: a node left dead is back only once fenced
        and powered on."""
        return self.fence_after_s + 56.0

    @property
    def fence_window_s(self) -> float:
        """Seconds after a fault that may get a node fenced during which its recovery may begin."""
        return self.fence_after_s + 21.0

    @property
    def self_fenced_by_s(self) -> float:
        """Seconds after its link is cut by which a host must have stopped every VM: the fence deadline and a
        margin for the monitor's reading."""
        return self.fence_after_s + 0.5

    @property
    def fenced_cut_s(self) -> float:
        """A cut this long at least must get its hosts fenced."""
        return self.fence_after_s + 1.5

    def of_libvirt_timeout(self, fraction: float) -> float:
        """A time given as a fraction of the libvirt timeout: a slow libvirtd's stops fall around it."""
        return self.libvirt_timeout_s * fraction


FAST = Timings(keepalive_s=KEEPALIVE_INTERVAL, fence_after_s=KEEPALIVE_INTERVAL * FENCE_INTERVALS,
               libvirt_timeout_s=LIBVIRT_TIMEOUT, session_timeout_s=SESSION_TIMEOUT)
