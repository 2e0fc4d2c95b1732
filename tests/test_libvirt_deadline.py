"""A node's libvirt calls against a real libvirtd frozen with SIGSTOP: a caller gets "could not ask" within its
deadline, whatever the stuck worker holds, and a call given up on is remembered until it ends."""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pvc.cli.localcluster.simhost import SimulatedHost
from pvc.errors import Unavailable
from pvc.node.hypervisor import DomainActions, Hypervisor

from helpers import define_vm, eventually

DEADLINE = 0.5


@pytest.fixture
def host() -> Iterator[SimulatedHost]:
    host = SimulatedHost(Path(tempfile.mkdtemp(prefix="deadline-")), "frozen")
    host.start()
    try:
        yield host
    finally:
        os.kill(host.pid, signal.SIGCONT)
        host.stop()


def _in_thread(work) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as error:
            outcome.append(error)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_caller_is_never_held_by_a_connection_being_opened_to_a_frozen_libvirtd(host):
    hypervisor = Hypervisor(host.uri, call_timeout=DEADLINE)
    os.kill(host.pid, signal.SIGSTOP)
    started = time.monotonic()
    first, first_outcome = _in_thread(hypervisor.facts)
    first.join(DEADLINE + 1.5)
    second, second_outcome = _in_thread(hypervisor.domains)
    second.join(DEADLINE + 1.5)
    took = time.monotonic() - started

    assert not first.is_alive() and not second.is_alive(), \
        f"callers still waiting {took:.2f} s after calls with a {DEADLINE} s deadline"
    assert isinstance(first_outcome[0], Unavailable) and "did not answer" in str(first_outcome[0])
    assert isinstance(second_outcome[0], Unavailable)
    os.kill(host.pid, signal.SIGCONT)
    assert eventually(lambda: _answers(hypervisor), 5), "calls work again once libvirtd answers"
    hypervisor.close()


def _answers(hypervisor: Hypervisor) -> bool:
    try:
        hypervisor.domains()
        return True
    except Unavailable:
        return False


def test_a_start_given_up_on_is_in_flight_until_libvirtd_carries_it_out(host):
    define_vm(host.uri, "slow", 64, 1, start=False)
    hypervisor = Hypervisor(host.uri, call_timeout=DEADLINE)
    actions = DomainActions(hypervisor, shutdown_timeout=1)
    assert actions.exists("slow")
    os.kill(host.pid, signal.SIGSTOP)

    with pytest.raises(Unavailable):
        actions.start("slow")
    assert "start of slow" in actions.in_flight("slow")
    assert actions.ended_late("slow") == []

    os.kill(host.pid, signal.SIGCONT)
    assert eventually(lambda: actions.in_flight("slow") is None, 5)
    assert actions.ended_late("slow") == ["start of slow"]
    assert actions.is_running("slow"), "the start went on after the caller gave up on it"
    actions.forget_late("slow")
    assert actions.ended_late("slow") == [] and actions.in_flight("slow") is None
    hypervisor.close()


def test_a_shutdown_the_guest_ignores_stops_waiting_once_no_longer_wanted(host, mocker):
    """A guest that ignores its power button keeps a shutdown waiting for the whole shutdown timeout; a newer
    command (`vm stop`, `vm remove`) ends that wait at once and is left to decide."""
    define_vm(host.uri, "deaf", 64, 1, start=True)
    mocker.patch("libvirt.virDomain.shutdown", lambda domain: 0)  # the power button goes unheard
    hypervisor = Hypervisor(host.uri, call_timeout=5)
    actions = DomainActions(hypervisor, shutdown_timeout=60)
    wanted = threading.Event()
    wanted.set()
    waiting, outcome = _in_thread(lambda: actions.shutdown("deaf", wanted=wanted.is_set))
    waiting.join(1.0)
    assert waiting.is_alive(), "the shutdown did not wait for the guest"

    wanted.clear()
    waiting.join(2.0)
    assert not waiting.is_alive(), "the shutdown still waits although it is no longer wanted"
    assert outcome == [None]
    assert actions.is_running("deaf"), "the guest was destroyed: that is for the newer command to decide"
    hypervisor.close()
