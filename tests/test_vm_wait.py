"""`--wait` tells this command's outcome by ZooKeeper's order of writes, not by the time a node wrote in its
report: a node's clock an hour behind or ahead neither hides this command's error nor raises an old one.

A coordinator's VM control runs here over a real ZooKeeper; the test writes the node's status reports itself,
with the `time` a node whose clock is wrong would put in them. A waited-for move is answered once the VM runs on
its new node, not once its old node's call has ended."""
import threading
import time


from pvc import schema
from pvc.errors import OperationFailed

from helpers import eventually

HOUR = 3600


def define(store, cache, name: str, status: dict) -> None:
    store.write(schema.vm(name), {"name": name, "memory_mib": 512, "vcpus": 1})
    store.write(schema.vm_key(name, "state"), "stop")
    store.write(schema.vm_key(name, "placement"), {"node": "hv1", "last_node": None})
    store.write(schema.vm_key(name, "status"), status)
    assert eventually(lambda: len(cache.vms.get(name) or {}) == 4)


def start_waiting(control, name: str, timeout: float) -> dict:
    """Record `vm start` and wait for it in a thread, as a command with --wait does; the outcome lands in the
    returned dict."""
    control.record(name, control.desired(name), state="start")
    outcome: dict = {}

    def wait() -> None:
        try:
            outcome["view"] = control.converge(name, [], wait=True, timeout=timeout)
        except Exception as error:
            outcome["error"] = error
        outcome["after_s"] = time.monotonic() - began
    began = time.monotonic()
    thread = threading.Thread(target=wait)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_an_error_reported_after_the_command_is_its_failure_though_the_nodes_clock_is_an_hour_behind(
        store, cache, control):
    define(store, cache, "late", {"node": "hv1", "running": False, "error": None, "time": time.time() - HOUR})
    outcome = start_waiting(control, "late", timeout=10)
    time.sleep(0.3)

    store.write(schema.vm_key("late", "status"),
                {"node": "hv1", "running": False, "error": "no room for it", "time": time.time() - HOUR})
    outcome["thread"].join(15)

    assert isinstance(outcome.get("error"), OperationFailed), outcome
    assert "no room for it" in str(outcome["error"]) and outcome["after_s"] < 5


def test_an_error_reported_before_the_command_is_not_its_failure_though_the_nodes_clock_is_an_hour_ahead(
        store, cache, control):
    define(store, cache, "early", {"node": "hv1", "running": False, "error": "an old failure",
                                     "time": time.time() + HOUR})
    outcome = start_waiting(control, "early", timeout=10)
    time.sleep(0.3)
    assert outcome["thread"].is_alive(), f"the old error is not this command's: {outcome}"

    store.write(schema.vm_key("early", "status"),
                {"node": "hv1", "running": True, "error": None, "time": time.time() + HOUR})
    outcome["thread"].join(15)

    assert "error" not in outcome, outcome
    assert outcome["view"]["running"] is True and outcome["view"]["state"] == "start"


class HeldSource:
    """Node agents where the old node's `converge` lasts until released, as a live migration's source does while
    its libvirt stops the old copy after the guest resumed on the target; the calls made, in order."""

    def __init__(self, source: str) -> None:
        self.source, self.calls, self.release = source, [], threading.Event()

    def call(self, node: str, agent_uri: str, method: str, *args, **kwargs) -> None:
        self.calls.append((node, method))
        if node == self.source:
            assert self.release.wait(30), "the test never released the source"


def test_a_waited_for_move_answers_once_the_vm_runs_on_its_new_node_while_the_old_node_still_cleans_up(
        store, cache, context, control, monkeypatch):
    define(store, cache, "mover", {"node": "hv1", "running": True, "error": None, "time": time.time()})
    for node in ("hv1", "hv2"):
        store.write(schema.node(node), {"agent_uri": f"PYRO:agent@{node}"})
    assert eventually(lambda: all(context.node_view(node) for node in ("hv1", "hv2")))
    agents = HeldSource("hv1")
    monkeypatch.setattr(context, "agents", agents)
    control.record("mover", control.desired("mover"), state="migrate", placement={"node": "hv2", "last_node": "hv1"})
    outcome: dict = {}
    waiter = threading.Thread(target=lambda: outcome.update(view=control.converge("mover", ["hv1", "hv2"], True, 20)))
    waiter.start()
    assert eventually(lambda: agents.calls == [("hv1", "converge")]), agents.calls

    store.write(schema.vm_key("mover", "status"), {"node": "hv2", "running": True, "error": None, "time": time.time()})
    waiter.join(10)

    try:
        assert not waiter.is_alive(), "the move was answered only after the old node's call ended"
        assert (outcome["view"]["node"], outcome["view"]["running"]) == ("hv2", True)
    finally:
        agents.release.set()
    assert eventually(lambda: agents.calls == [("hv1", "converge"), ("hv2", "converge")]), \
        "the new node is still asked once the old one has answered"
