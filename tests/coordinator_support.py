"""A local cluster's coordinator run inside the test process instead (same settings, some changed), for tests
that watch or hold the leader's own passes with pytest-mock."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pvc
from pvc import config
from pvc.rpc.coordinator import Coordinator

from helpers import eventually


@contextlib.contextmanager
def coordinator_in_process(local, **changes: Any) -> Iterator[tuple[Coordinator, Any]]:
    """The cluster's first coordinator, stopped and started again in this process with its settings and
    `changes`, once it leads; with a client connected to it."""
    name = local.coordinator_names[0]
    settings = config.load(local.state_dir / "coordinators" / name / "pvcapid.yaml", config.APID_SETTINGS)
    local.stop_daemon("pvcapid", name)
    coordinator = Coordinator({**settings, **changes})
    coordinator.start()
    client = pvc.connect(local.uris, local.state["api_key"])
    try:
        assert eventually(lambda: client.cluster.status()["leader"] == name, 15, 0.1), "it leads the cluster"
        yield coordinator, client
    finally:
        client.close()
        coordinator._shutdown()
