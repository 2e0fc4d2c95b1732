"""What a caller sees when a call fails inside the server for a reason that is not PVC's own error."""
import threading

import pytest
from kazoo.exceptions import ConnectionLoss
from Pyro5.api import expose

from pvc.errors import Unavailable
from pvc.handshake import AuthenticatingDaemon, authenticated_proxy

SECRET = "s3cret"


@expose
class LosesZooKeeper:
    def change(self) -> None:
        raise ConnectionLoss()


def test_a_zookeeper_connection_lost_during_a_call_reaches_the_caller_as_unavailable():
    """Seen when the ZooKeeper leader was killed under load: the caller got 'unsupported serialized class:
    kazoo.exceptions.ConnectionLoss' instead of an error it knows."""
    daemon = AuthenticatingDaemon([SECRET], "cluster secret", "127.0.0.1", 0)
    uri = daemon.register(LosesZooKeeper, "zk")
    threading.Thread(target=daemon.requestLoop, daemon=True).start()
    try:
        with authenticated_proxy(str(uri), SECRET, 5) as proxy:
            with pytest.raises(Unavailable, match="ZooKeeper did not answer during the call"):
                proxy.change()
    finally:
        daemon.shutdown()
