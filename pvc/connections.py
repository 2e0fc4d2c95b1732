"""Named connections to clusters, like kubectl's contexts: `pvc -c NAME ...` reaches the cluster saved as NAME.

They live in one YAML file in the client config directory (``PVC_CLIENT_DIR``, else ``~/.config/pvc``):
``connections.yaml``, holding API keys, so the file is written 0600 and the directory made 0700, and every
write replaces the file whole (a crash leaves the old file or the new one, never half of one)::

    default: cluster1
    connections:
      cluster1: {uris: [pvc://10.0.0.1:7370], api_key: ..., tls_ca: null, description: ...}

Each connection's keys are declared in `pvc.config.CONNECTION_SETTINGS`.
"""
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pvc import config, schema, text_input
from pvc.errors import AlreadyExists, ConfigError, InvalidInput, NotFound

FILE_NAME = "connections.yaml"
URI_SCHEME = "pvc://"
DEFAULT_DIRECTORY = Path("~/.config/pvc")
MAX_FILE_BYTES = 1 << 20


def directory() -> Path:
    """The client config directory: ``PVC_CLIENT_DIR`` (upstream PVC's variable), else ``~/.config/pvc``."""
    return Path(os.environ.get("PVC_CLIENT_DIR") or DEFAULT_DIRECTORY.expanduser())


def path() -> Path:
    return directory() / FILE_NAME


def load() -> dict[str, Any]:
    """The saved connections and the default's name; empty when nothing was saved yet."""
    if not path().exists():
        return {"default": None, "connections": {}}
    text = text_input.read_text(path(), "the connections file", MAX_FILE_BYTES, ConfigError)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path()} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("connections", {}), dict):
        raise ConfigError(f"{path()} is not a connections file (expected a mapping with 'connections')")
    return {"default": data.get("default"), "connections": dict(data.get("connections") or {})}


def save(data: dict[str, Any]) -> None:
    target = directory()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.chmod(0o700)
    descriptor, temporary = tempfile.mkstemp(dir=target, prefix=".connections-")
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            yaml.safe_dump(data, file, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def get(name: str) -> dict[str, Any]:
    """The connection saved as `name`, with its name."""
    found = load()["connections"].get(name)
    if found is None:
        raise NotFound(f"no connection named '{name}' (see pvc connection list)")
    if not isinstance(found, dict):
        raise ConfigError(f"{path()}: connection '{name}' is not a mapping of settings")
    return {"name": name, **config.check(found, config.CONNECTION_SETTINGS, f"{path()}: connection '{name}'")}


def add(name: str, uris: list[str], api_key: str, tls_ca: str | None = None, description: str | None = None,
        make_default: bool = False) -> dict[str, Any]:
    """Save a connection; the first one saved becomes the default."""
    schema.check_name("connection", name)
    if not uris:
        raise InvalidInput("a connection needs at least one coordinator URI (pvc://HOST:PORT)")
    for uri in uris:
        if not uri.startswith(URI_SCHEME):
            raise InvalidInput(f"invalid coordinator URI {uri!r}: expected {URI_SCHEME}HOST:PORT")
        config.split_address(uri[len(URI_SCHEME):].rstrip("/"))
    if not api_key:
        raise InvalidInput("a connection needs an API key (--api-key-file FILE)")
    data = load()
    if name in data["connections"]:
        raise AlreadyExists(f"a connection named '{name}' exists already (remove it first)")
    data["connections"][name] = config.check({"uris": list(uris), "api_key": api_key, "tls_ca": tls_ca,
                                              "description": description}, config.CONNECTION_SETTINGS,
                                             f"connection '{name}'")
    if make_default or not data["default"]:
        data["default"] = name
    save(data)
    return get(name)


def remove(name: str) -> None:
    data = load()
    if data["connections"].pop(name, None) is None:
        raise NotFound(f"no connection named '{name}' (see pvc connection list)")
    if data["default"] == name:
        data["default"] = None
    save(data)


def set_default(name: str) -> None:
    data = load()
    if name not in data["connections"]:
        raise NotFound(f"no connection named '{name}' (see pvc connection list)")
    data["default"] = name
    save(data)
