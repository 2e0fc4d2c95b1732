"""A TCP relay for tests that break a connection on purpose: a daemon's (or a client's) traffic goes through it,
so a test can hold, drop or cut it as a failing network would, at the moment it chooses."""
from __future__ import annotations

import socket
import threading

Pair = tuple[socket.socket, socket.socket]
"""One relayed connection: the accepted side, then the upstream side."""


def close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class TcpRelay:
    """Accepts connections on `listen_host` and carries each to `upstream`, byte for byte; a subclass decides
    what passes (`forward`) and which connections are carried at all (`admit`)."""

    def __init__(self, upstream: tuple[str, int], listen_host: str = "127.0.0.1"):
        self._upstream = upstream
        self._listener = socket.create_server((listen_host, 0))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hosts(self) -> str:
        address, port = self._listener.getsockname()[:2]
        return f"{address}:{port}"

    def admit(self, client: socket.socket) -> bool:
        """Whether to carry a new connection upstream; one refused is left open, unanswered."""
        return True

    def forward(self, data: bytes, pair: Pair, upstream: bool) -> bool:
        """Whether `data`, read from one side of `pair`, goes on to the other (`upstream`: towards the server)."""
        return True

    def close(self) -> None:
        self._closed = True
        close_socket(self._listener)
        with self._lock:
            for sock in self._sockets:
                close_socket(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if not self.admit(client):
                continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                close_socket(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.append(server)
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, pair: Pair, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if self.forward(data, pair, upstream):
                    target.sendall(data)
        except OSError:
            pass
        for sock in pair:
            close_socket(sock)


class Blackhole(TcpRelay):
    """A link that, while `cut`, carries nothing: bytes sent either way are lost and new connections fail."""

    cut = False

    def forward(self, data: bytes, pair: Pair, upstream: bool) -> bool:
        return not self.cut

    def admit(self, client: socket.socket) -> bool:
        if self.cut:
            close_socket(client)
            return False
        return True
