"""The ``/metrics`` HTTP(S) server: off unless `metrics_listen` is set; with `metrics_token_file`, only a
request bearing that token is answered; with `metrics_tls`, it serves TLS with the coordinator's certificate."""
import hmac
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pvc import config
from pvc.errors import ConfigError

log = logging.getLogger(__name__)


class MetricsServer:
    def __init__(self, listen: str, renderers: list[Callable[[], bytes]], token_file: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None):
        self._renderers = renderers
        self._token = _read_token(token_file) if token_file else None
        host, port = config.split_address(listen)
        context = None
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
        self._server = _Server((host, port), self._handler(), context)
        self.tls = context is not None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics served at %s://%s/metrics%s", "https" if self.tls else "http", self.address,
                 " (bearer token required)" if self._token else "")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def scrape(self) -> bytes:
        return b"".join(render() for render in self._renderers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self._answer(404, b"only /metrics is served\n", "text/plain")
                    return
                if server._token is not None:
                    presented = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(presented.encode(), b"Bearer " + server._token):
                        self._answer(401, b"a bearer token is required\n", "text/plain")
                        return
                self._answer(200, server.scrape(), CONTENT_TYPE_LATEST)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    """Each connection on a thread of its own; with TLS, its handshake happens there too (bounded in time),
    so a client that connects and never speaks holds up no other scrape."""

    daemon_threads = True
    HANDSHAKE_TIMEOUT_S = 10.0

    def __init__(self, address, handler, context: ssl.SSLContext | None):
        self._context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        if self._context is not None:
            request.settimeout(self.HANDSHAKE_TIMEOUT_S)
            try:
                request = self._context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as error:
                log.debug("metrics: TLS handshake with %s failed: %s", client_address, error)
                return
        super().finish_request(request, client_address)


def registry_renderer(registry: CollectorRegistry) -> Callable[[], bytes]:
    """What a prometheus-client registry exposes, for `MetricsServer` (PVC's own instruments)."""
    return lambda: generate_latest(registry)


def _read_token(path: str) -> bytes:
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"metrics_token_file {path}: {error.strerror}") from None
    if not token:
        raise ConfigError(f"metrics_token_file {path} is empty")
    return token.encode()
