"""The public client: `pvc.connect()` and the proxies for the remote areas.

Settings resolve as the CLI resolves them, the most specific winning:

1. a saved connection named by the caller (`pvc -c NAME`) or by ``PVC_CONNECTION``: used whole, and
   `PVC_CONFIG`, `PVC_URI` and `PVC_API_KEY` are ignored, since they may well be another cluster's;
2. otherwise the client config file `PVC_CONFIG` names, else the default saved connection
   (`pvc.connections`), else ``~/.config/pvc/pvc.yaml``; then `PVC_URI` and `PVC_API_KEY` override its keys;
3. then the arguments given (`uri`, `api_key`, `timeout`) override everything.

Several coordinator
URIs may be listed; a call that cannot reach one moves on to the next. Pyro5 proxies belong to one thread,
so each thread gets its own, which makes a `Client` safe to share between threads.
"""
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.errors

from pvc import config, connections, request_ids, wire
from pvc.errors import AuthenticationError, ConfigError, Unavailable
from pvc.handshake import authenticated_proxy, use_tls

SLOW_METHODS = (*(("vms", method) for method in ("snapshot_create", "snapshot_remove", "snapshot_rollback",
                                                  "snapshot_export", "snapshot_export_stream", "snapshot_import",
                                                  "snapshot_import_stream_begin", "snapshot_import_stream_end",
                                                  "snapshot_send",
                                                  "mirror_receive", "mirror_receive_end", "mirror_receive_abort",
                                                  "mirror_handover", "mirror_promote", "mirror_prune")),
                ("provisioner", "ova_remove"))
"""Calls that copy or rewrite volume data on a node (a forced OVA removal flattens the clones of the VMs made
from it): they get `SLOW_CALL_TIMEOUT_S`."""
SLOW_CALL_TIMEOUT_S = 600.0
SLOW_WHEN = {("vms", "remove"): "volumes"}
"""Calls that are slow when the keyword named is true (a removal that takes its volumes removes them in the
call): they get `SLOW_CALL_TIMEOUT_S` then."""
AREAS = ("cluster", "nodes", "vms", "storage", "provisioner", "networks")
URI_SCHEME = "pvc://"
DEFAULT_CONFIG_PATH = Path("~/.config/pvc/pvc.yaml")

CONTROL, BULK = "serpent", "msgpack"
BULK_RESULT_METHODS = frozenset({"list"})
"""Calls whose results can be large (10,000 VMs): msgpack decodes such a result ~25x faster than serpent.
Their arguments and results are plain data either way, so only the wire encoding differs."""
WAIT_TIMEOUT = 330.0
"""Seconds a call with ``wait=True`` may take: the coordinator waits up to 300 s for a node to converge."""


def object_id(area: str) -> str:
    """The stable Pyro5 object id of a coordinator area."""
    return f"pvc.{area}"


def pyro_uri(uri: str, area: str) -> str:
    if not uri.startswith(URI_SCHEME):
        raise ConfigError(f"invalid coordinator URI {uri!r}: expected {URI_SCHEME}HOST:PORT")
    host, port = config.split_address(uri[len(URI_SCHEME):].rstrip("/"))
    return f"PYRO:{object_id(area)}@{host}:{port}"


def resolve_settings(uri: str | list[str] | None = None, api_key: str | None = None,
                     timeout: float | None = None, connection: str | None = None) -> dict[str, Any]:
    """The client settings from a saved connection or the config file, the environment and explicit
    arguments, in the order the module's docstring gives."""
    connection = connection or os.environ.get("PVC_CONNECTION") or None
    if connection:
        values, source = _saved_connection(connection), f"connection '{connection}' ({connections.path()})"
    else:
        values, source = _base_settings()
        if os.environ.get("PVC_URI"):
            values["uris"] = os.environ["PVC_URI"].split(",")
        if os.environ.get("PVC_API_KEY"):
            values["api_key"] = os.environ["PVC_API_KEY"]
    if uri:
        values["uris"] = [uri] if isinstance(uri, str) else list(uri)
    if api_key:
        values["api_key"] = api_key
    if timeout:
        values["timeout"] = timeout
    settings = config.check(values, config.CLIENT_SETTINGS, source)
    if not settings["uris"]:
        raise ConfigError(f"{source}: 'uris' lists no coordinator")
    for each in settings["uris"]:
        pyro_uri(each, "cluster")
    return settings


def _saved_connection(name: str) -> dict[str, Any]:
    saved = connections.get(name)
    return {key: saved[key] for key in ("uris", "api_key", "tls_ca") if saved.get(key) is not None}


def _base_settings() -> tuple[dict[str, Any], str]:
    """The settings a named connection does not replace, and where they came from."""
    if not os.environ.get("PVC_CONFIG"):
        default = connections.load()["default"]
        if default:
            return _saved_connection(default), f"default connection '{default}' ({connections.path()})"
    path = os.environ.get("PVC_CONFIG") or DEFAULT_CONFIG_PATH.expanduser()
    values = config.read_yaml(path) if Path(path).exists() or "PVC_CONFIG" in os.environ else {}
    return values, str(path) if Path(path).exists() else "client settings (no config file; set PVC_CONFIG)"


class Connection:
    """Calls into the coordinators, failing over between them in the configured order."""

    def __init__(self, uris: list[str], api_key: str, timeout: float, tls_ca: str | None = None):
        wire.register()
        self.uris = list(uris)
        self.tls_ca = tls_ca
        """The CA the coordinators' (and nodes') certificates chain to; None without TLS."""
        self._api_key = api_key
        self._timeout = timeout
        self._preferred = 0
        self._local = threading.local()
        self.call_timeouts: dict[str | tuple[str, str], float] = {
            slow: SLOW_CALL_TIMEOUT_S for slow in SLOW_METHODS}
        """Per area (or per ``(area, method)``), a longer wait than `timeout` for calls that do slow work
        (storage actions copy data)."""

    def call(self, area: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call `area.method` on the first coordinator that answers, starting with the last one that did.

        A connection kept from an earlier call may have been closed by a coordinator restart since; the
        call is then tried once more on a new connection to the same coordinator before moving on. Every
        attempt carries the call's one request id, so a retry of a call whose answer was lost is answered
        from the first attempt rather than carried out again (`pvc.rpc.retries`)."""
        Pyro5.api.current_context.correlation_id = uuid.uuid4()
        failures = []
        first = self._preferred
        flavour = BULK if method in BULK_RESULT_METHODS else CONTROL
        timeout = max(WAIT_TIMEOUT if kwargs.get("wait") else 0.0,
                      SLOW_CALL_TIMEOUT_S if kwargs.get(SLOW_WHEN.get((area, method), "")) is True else 0.0,
                      self.call_timeouts.get((area, method), self.call_timeouts.get(area, self._timeout)))
        annotations = Pyro5.api.current_context.annotations
        annotations[request_ids.FIRST_ATTEMPT] = b""
        try:
            for offset in range(len(self.uris)):
                index = (first + offset) % len(self.uris)
                uri = self.uris[index]
                for _attempt in range(2):
                    proxy, reused = self._proxy(uri, area, flavour)
                    proxy._pyroTimeout = timeout
                    try:
                        result = getattr(proxy, method)(*args, **kwargs)
                    except Pyro5.errors.CommunicationError as error:
                        self._discard(uri, area, flavour)
                        if wire.is_handshake_refusal(error):
                            raise AuthenticationError(f"coordinator {uri} refused the connection: "
                                                      f"{wire.handshake_refusal_reason(error)}") from None
                        if reused and isinstance(error, Pyro5.errors.ConnectionClosedError):
                            continue
                        failures.append(f"{uri} ({_short_reason(error)})")
                        break
                    finally:
                        annotations.pop(request_ids.FIRST_ATTEMPT, None)
                    self._preferred = index
                    return result
        finally:
            annotations.pop(request_ids.FIRST_ATTEMPT, None)
        raise Unavailable("no coordinator answered: " + ", ".join(failures))

    def _proxy(self, uri: str, area: str, flavour: str) -> tuple[Pyro5.api.Proxy, bool]:
        """This thread's proxy for one coordinator area, and whether it was kept from an earlier call."""
        proxies = self._local.__dict__.setdefault("proxies", {})
        proxy = proxies.get((uri, area, flavour))
        if proxy is not None:
            return proxy, True
        proxy = authenticated_proxy(pyro_uri(uri, area), self._api_key, self._timeout)
        if flavour == BULK:
            proxy._pyroSerializer = "msgpack"
        proxies[(uri, area, flavour)] = proxy
        return proxy, False

    def _discard(self, uri: str, area: str, flavour: str) -> None:
        proxy = self._local.__dict__.get("proxies", {}).pop((uri, area, flavour), None)
        if proxy is not None:
            proxy._pyroRelease()

    def close(self) -> None:
        for proxy in self._local.__dict__.pop("proxies", {}).values():
            proxy._pyroRelease()


def _short_reason(error: Exception) -> str:
    text = str(error)
    if isinstance(error, Pyro5.errors.TimeoutError):
        return "timed out"
    return text.rsplit("] ", 1)[-1] if "] " in text else text


class Area:
    """A remote area (`cluster`, `nodes`, ...): every attribute is a remote method."""

    def __init__(self, connection: Connection, name: str):
        self._connection = connection
        self._name = name

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def remote_call(*args: Any, **kwargs: Any) -> Any:
            return self._connection.call(self._name, method, *args, **kwargs)
        remote_call.__name__ = method
        return remote_call

    def __repr__(self) -> str:
        return f"<pvc area {self._name} via {self._connection.uris}>"


class Client:
    """A connected cluster; its attributes are the remote areas."""

    def __init__(self, connection: Connection):
        self.connection = connection
        from pvc.storage_client import StorageClient
        from pvc.vms_client import VMsClient
        special = {"storage": StorageClient, "vms": VMsClient}
        for area in AREAS:
            setattr(self, area, special.get(area, Area)(connection, area))

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def connect(uri: str | list[str] | None = None, api_key: str | None = None,
            timeout: float | None = None, connection: str | None = None) -> Client:
    """Connect to a cluster; `uri` may be one pvc:// URI or a list to fail over between, `connection` the
    name of a saved connection (`pvc connection add`)."""
    settings = resolve_settings(uri, api_key, timeout, connection)
    use_tls(ca=settings["tls_ca"])
    return Client(Connection(settings["uris"], settings["api_key"], settings["timeout"], settings["tls_ca"]))
