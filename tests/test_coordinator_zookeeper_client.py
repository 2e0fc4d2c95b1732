"""A coordinator whose ZooKeeper client can never connect again exits with an error (its service manager then
starts it afresh) instead of answering on its port while cut off from the cluster for good."""
import os
import signal
import threading

import pytest
from kazoo.client import KazooClient

from coordinator_support import coordinator_in_process

GIVE_UP_AFTER_S = 20.0
"""Seconds after which the test stops the coordinator itself (SIGTERM) if it has not exited on its own."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected fault
@pytest.mark.cluster(nodes=1, coordinators=1)
def test_a_coordinator_whose_zookeeper_client_died_exits_with_an_error(fresh_cluster, mocker, caplog):
    local = fresh_cluster.local
    with coordinator_in_process(local) as (coordinator, _client):
        # The fault: kazoo's connection thread meets an error while its session expires, as it met
        # "dictionary changed size during iteration" when watches were being set in bulk (`pvc.zk_bulk`).
        mocker.patch.object(coordinator.store.zk, "_reset_watchers", side_effect=RuntimeError("injected"))
        session_id, password = coordinator.store.zk.client_id
        hijacker = KazooClient(hosts=local.zookeeper_hosts, client_id=(session_id, password))
        hijacker.start(timeout=10)
        hijacker.stop()  # closing the session under the coordinator's feet expires it there
        hijacker.close()
        stopper = threading.Timer(GIVE_UP_AFTER_S, os.kill, (os.getpid(), signal.SIGTERM))
        stopper.start()
        try:
            with pytest.raises(SystemExit) as exited:
                coordinator.run()
        finally:
            stopper.cancel()
    assert exited.value.code == 1
    assert "can never connect again" in caplog.text
