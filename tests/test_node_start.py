"""A node daemon's start: its self-fence watchdog watches before anything else the start does after it owns
the node, since the guests that outlived the previous daemon run already.

The full suite once cut a restarted node off from ZooKeeper between its first keepalive and the start of its
watchdog (which then came after the peer directory's reads, which hung on the cut): no self-fence came, and the
leader's BMC fence was what stopped its guests (`test_fencing.py`, QEMU)."""
import threading

from pvc.node.reconcile import Reconciler

from test_node_index import node_in_process


def test_the_self_fence_watchdog_watches_before_the_daemon_converges_its_vms_and_says_it_runs(cluster, mocker):
    watching = []
    converge_all = Reconciler.converge_all

    def noting_the_watchdog(reconciler, *args, **kwargs):
        watching.append(any(thread.name == "self-fence" and thread.is_alive() for thread in threading.enumerate()))
        return converge_all(reconciler, *args, **kwargs)
    mocker.patch.object(Reconciler, "converge_all", noting_the_watchdog)

    with node_in_process(cluster) as node:
        assert watching and watching[0], "the start's converge of every VM ran before the watchdog did"
        assert node.self_fence.fenced_reason is None
