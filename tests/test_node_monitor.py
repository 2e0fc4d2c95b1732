"""The leader's failure detector against a real ZooKeeper, on a clock the test moves: a node's silence is the
time since the leader saw its keepalive znode change, whatever time the node wrote into it."""
import time

import pytest
from kazoo.client import KazooState

from pvc import schema
from pvc.rpc.monitor import NodeMonitor

from helpers import eventually

FENCE_INTERVALS = 4
INTERVAL = 1
DEADLINE = FENCE_INTERVALS * INTERVAL
HOUR = 3600


class SteppedClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def leader(store):
    """An election node standing for the leader's proof of leadership."""
    return store.zk.create(f"{schema.ELECTION}/contender-", b"", ephemeral=True, sequence=True)


def running_node(store, cache, name: str, keepalive_time: float) -> None:
    store.write(schema.node(name), {"keepalive_interval": INTERVAL})
    store.write(schema.node_key(name, "keepalive"), {"time": keepalive_time})
    store.write(schema.node_key(name, "daemon_state"), "run")
    assert eventually(lambda: (cache.nodes.get(name) or {}).get("daemon_state") == "run")


def beat(store, name: str, keepalive_time: float) -> None:
    store.write(schema.node_key(name, "keepalive"), {"time": keepalive_time})


def state(store, name: str) -> str:
    return store.read(schema.node_key(name, "daemon_state"))


def test_a_node_is_dead_only_after_the_leader_itself_saw_no_keepalive_for_the_deadline(store, cache, leader):
    clock = SteppedClock()
    running_node(store, cache, "behind", keepalive_time=time.time() - HOUR)
    running_node(store, cache, "ahead", keepalive_time=time.time() + HOUR)
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)

    assert monitor.check(leader) == [], "an hour-old timestamp is not an hour of silence"
    clock.advance(DEADLINE - 0.1)
    assert monitor.check(leader) == []
    clock.advance(0.2)

    assert monitor.check(leader) == ["ahead", "behind"], "a timestamp in the future protects nothing"
    assert state(store, "ahead") == state(store, "behind") == "dead"


def test_every_keepalive_write_restarts_the_silence_whatever_time_it_carries(store, cache, leader):
    clock = SteppedClock()
    running_node(store, cache, "steady", keepalive_time=0)
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    for _ in range(10):
        clock.advance(DEADLINE - 1)
        beat(store, "steady", keepalive_time=0)
        assert monitor.check(leader) == []
    clock.advance(DEADLINE + 0.1)

    assert monitor.check(leader) == ["steady"]


def test_a_new_term_of_leadership_starts_every_nodes_clock_afresh(store, cache, leader):
    clock = SteppedClock()
    running_node(store, cache, "quiet", keepalive_time=time.time())
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    clock.advance(10 * DEADLINE)
    next_term = store.zk.create(f"{schema.ELECTION}/contender-", b"", ephemeral=True, sequence=True)

    assert monitor.check(next_term) == [], "a new leader has seen nothing yet, so it has seen no silence"
    clock.advance(DEADLINE + 0.1)
    assert monitor.check(next_term) == ["quiet"]


def test_after_its_own_reconnection_the_leader_gives_a_node_not_heard_from_since_a_grace_besides_its_deadline(
        store, cache, leader):
    """What cut the leader off most likely cut the nodes off too, and each comes back on its own: one that has
    not written a keepalive since has `reconnect_grace_s` more; one heard from since has its deadline alone."""
    clock = SteppedClock()
    running_node(store, cache, "late", keepalive_time=time.time())
    running_node(store, cache, "back", keepalive_time=time.time())
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    clock.advance(10 * DEADLINE)
    for listener in list(store.zk.state_listeners):
        listener(KazooState.SUSPENDED)
        listener(KazooState.CONNECTED)
    assert monitor.check(leader) == [], "while cut off, the leader could not see the keepalives"
    clock.advance(1)
    beat(store, "back", keepalive_time=time.time())
    assert monitor.check(leader) == []

    clock.advance(DEADLINE + 0.1)
    assert monitor.check(leader) == ["back"], "a node heard from since the reconnection has its deadline alone"
    clock.advance(DEADLINE - 1.2)
    assert monitor.check(leader) == [], "the grace (the local settings': the deadline again) is not over"
    clock.advance(0.2)
    assert monitor.check(leader) == ["late"]


def test_a_keepalive_arriving_while_the_leader_marks_the_node_keeps_it_alive(store, cache, leader, mocker):
    clock = SteppedClock()
    running_node(store, cache, "late", keepalive_time=time.time())
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    clock.advance(DEADLINE + 0.1)
    read = store.zk.get

    def keepalive_lands_first(path, *args, **kwargs):
        if path == schema.node_key("late", "daemon_state"):
            beat(store, "late", keepalive_time=time.time())
        return read(path, *args, **kwargs)
    mocker.patch.object(store.zk, "get", side_effect=keepalive_lands_first)

    assert monitor.check(leader) == []
    assert state(store, "late") == "run"


def test_only_nodes_in_run_are_judged_and_a_dead_node_stays_dead_when_its_keepalives_resume(store, cache, leader):
    clock = SteppedClock()
    running_node(store, cache, "gone", keepalive_time=time.time())
    running_node(store, cache, "resting", keepalive_time=time.time())
    store.write(schema.node_key("resting", "daemon_state"), "stop")
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    clock.advance(DEADLINE + 0.1)
    assert monitor.check(leader) == ["gone"]
    assert state(store, "resting") == "stop", "a stopped node is never marked dead"

    beat(store, "gone", keepalive_time=time.time())
    clock.advance(1)
    assert monitor.check(leader) == []

    assert state(store, "gone") == "dead", "resumed keepalives do not bring a dead node back"


def test_a_node_that_just_started_is_not_judged_on_its_keepalive_before_it_was_running(store, cache, leader):
    """A node `stop` for a long time writes a keepalive and then `run`: its silence counts from then."""
    clock = SteppedClock()
    running_node(store, cache, "restarted", keepalive_time=time.time())
    store.write(schema.node_key("restarted", "daemon_state"), "stop")
    assert eventually(lambda: cache.nodes.get("restarted")["daemon_state"] == "stop")
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)
    monitor.check(leader)
    clock.advance(10 * DEADLINE)
    monitor.check(leader)

    store.write(schema.node_key("restarted", "daemon_state"), "run")
    assert eventually(lambda: cache.nodes.get("restarted")["daemon_state"] == "run")

    assert monitor.check(leader) == []
    clock.advance(DEADLINE + 0.1)
    assert monitor.check(leader) == ["restarted"]


def test_a_node_that_dies_after_registering_but_before_run_is_marked_dead_too(store, cache, leader):
    """Its daemon converged (and may have started VMs) before registering: dying in ``init`` escapes nothing."""
    clock = SteppedClock()
    running_node(store, cache, "steady", keepalive_time=0)
    store.write(schema.node("starting"), {"keepalive_interval": INTERVAL})
    store.write(schema.node_key("starting", "keepalive"), {"time": 0})
    store.write(schema.node_key("starting", "daemon_state"), "init")
    assert eventually(lambda: (cache.nodes.get("starting") or {}).get("daemon_state") == "init")
    monitor = NodeMonitor(store, cache, FENCE_INTERVALS, clock=clock)

    monitor.check(leader)
    clock.advance(DEADLINE / 2 + 0.1)
    beat(store, "steady", 1)
    monitor.check(leader)
    assert "starting" in monitor.half_silent()
    clock.advance(DEADLINE / 2 + 0.1)

    assert monitor.check(leader) == ["starting"]
    assert state(store, "starting") == "dead" and state(store, "steady") == "run"
