"""The ZooKeeper session timeout a server actually granted, which kazoo does not expose.

The server clamps the timeout a client asks for to [2, 20] ticks, so the number in the configuration is not
the one that holds. kazoo learns the granted one in the connect handshake and only logs it (at its BLATHER
level); this logger, given to the kazoo client in place of its own, keeps that number and passes every record
on to kazoo's logger as usual. It looks at that one message before a record is made: kazoo logs every request
and answer at the same level, and making a record of each (to be dropped) was a tenth of a node's CPU during a
burst of defines.
"""
import logging
import threading
from typing import Any

from kazoo.client import KazooClient
from kazoo.loggingsupport import BLATHER

SESSION_CREATED = "Session created"


class NegotiatedSessionTimeout(logging.Logger):
    """A logger for a kazoo client that remembers the session timeout of each handshake, in seconds."""

    def __init__(self) -> None:
        super().__init__("kazoo.client.pvc-session")
        self._forward_to = logging.getLogger("kazoo.client")
        self._changed = threading.Condition()
        self.seconds: float | None = None

    @classmethod
    def attach(cls, client: KazooClient) -> "NegotiatedSessionTimeout":
        """Install on a client that has not connected yet (its connection handler logs the handshake)."""
        capture = cls()
        client.logger = capture
        client._connection.logger = capture
        return capture

    def isEnabledFor(self, level: int) -> bool:
        return self._forward_to.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level == BLATHER and isinstance(msg, str) and msg.startswith(SESSION_CREATED) and len(args) >= 3:
            with self._changed:
                self.seconds = float(args[2]) / 1000
                self._changed.notify_all()
        if self.isEnabledFor(level):
            super().log(level, msg, *args, stacklevel=2, **kwargs)

    def handle(self, record: logging.LogRecord) -> None:
        self._forward_to.handle(record)

    def wait(self, timeout: float) -> float | None:
        """The negotiated timeout, waiting up to `timeout` seconds for the first handshake."""
        with self._changed:
            self._changed.wait_for(lambda: self.seconds is not None, timeout)
            return self.seconds
