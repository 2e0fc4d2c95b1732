"""The clusters this one sends mirrors to, by name, with their API keys sealed as BMC passwords are.

A send is asked for with a client's saved connection (`pvc.connections`); the coordinator keeps its URIs, CA and
API key under the connection's name (`pvc.schema.mirror_destination`), so that later sends (and a leader's
scheduled ones) reach it without the client. Whoever reads ZooKeeper must not learn a key that commands another
cluster, so it is stored only sealed under the key derived from ``cluster_secret`` (`pvc.secrets_box`), for the
context of that destination's name, and opened in memory just before a call.
"""
from __future__ import annotations

from typing import Any

from pvc import schema
from pvc.client import Client, Connection
from pvc.errors import Conflict, InvalidInput, NotFound
from pvc.secrets_box import SecretError, SecretsBox
from pvc.store import Store

CALL_TIMEOUT_S = 300.0


def context(name: str) -> str:
    return f"mirror destination {name} api key"


def save(store: Store, box: SecretsBox, name: str, connection: dict[str, Any]) -> dict[str, Any]:
    """Store (or replace) destination `name` from a saved connection's ``uris``, ``api_key`` and ``tls_ca``."""
    uris, api_key = connection.get("uris"), connection.get("api_key")
    if not isinstance(uris, list) or not uris or not all(isinstance(uri, str) and uri.startswith("pvc://")
                                                         for uri in uris):
        raise InvalidInput(f"mirror destination {name}: give its coordinator URIs (pvc://HOST:PORT)")
    if not isinstance(api_key, str) or not api_key:
        raise InvalidInput(f"mirror destination {name}: give its API key")
    record = {"uris": list(uris), "tls_ca": connection.get("tls_ca"), "api_key": box.seal(api_key, context(name))}
    store.zk.ensure_path(schema.MIRROR_DESTINATIONS)
    path = schema.mirror_destination(name)
    if store.read(path) is None:
        store.transaction().create(path, record).commit()
    else:
        store.transaction().set(path, record).commit()
    return shown(name, record)


def listed(store: Store) -> list[dict[str, Any]]:
    """Every stored destination as `shown`, by name."""
    records = ((name, store.read(schema.mirror_destination(name))) for name in store.children(schema.MIRROR_DESTINATIONS))
    return [shown(name, record) for name, record in records if record is not None]


def remove(store: Store, name: str, automirror_destination: str | None) -> None:
    """Forget destination `name`; not the one automirror sends to (its next run would fail every VM)."""
    schema.check_name("mirror destination", name)
    if store.read(schema.mirror_destination(name)) is None:
        raise NotFound(f"no mirror destination named '{name}'")
    if name == automirror_destination:
        raise Conflict(f"mirror destination '{name}' is automirror's (automirror_destination); set another or "
                       f"off first (pvc cluster config --automirror-destination)")
    store.transaction().delete(schema.mirror_destination(name)).commit()


def shown(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "uris": record["uris"], "tls_ca": record.get("tls_ca"), "api_key": "(set)"}


def connect(store: Store, box: SecretsBox, name: str) -> Client:
    """A client of destination `name`, its key opened in memory for the connection only."""
    record = store.read(schema.mirror_destination(name))
    if record is None:
        raise NotFound(f"no mirror destination named '{name}': send with --to a saved connection first")
    try:
        api_key = box.open(record["api_key"], context(name))
    except SecretError as error:
        raise InvalidInput(f"{error}: send with --to the saved connection again to store it anew") from None
    return client({**record, "api_key": api_key})


def client(connection: dict[str, Any]) -> Client:
    """A client of the cluster a saved connection (``uris``, ``api_key``, ``tls_ca``) reaches."""
    if not isinstance(connection, dict) or not connection.get("uris") or not connection.get("api_key"):
        raise InvalidInput("a cluster's connection needs its coordinator URIs and API key")
    return Client(Connection(list(connection["uris"]), connection["api_key"], CALL_TIMEOUT_S,
                             connection.get("tls_ca")))
