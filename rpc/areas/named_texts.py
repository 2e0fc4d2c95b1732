"""Texts kept under a name for profiles to name: install scripts (`pvc.rpc.areas.scripts`) and user-data
documents (`pvc.rpc.areas.userdata`). Both are one text a record, changed under the provisioner's lock and
refused removal while a profile names them; only their checks and the words their messages use differ, so
those are a `TextKind` and the rest is written once here.
"""
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import AlreadyExists, Conflict, NotFound

_collection_lock = threading.Lock()


@dataclass(frozen=True)
class TextKind:
    noun: str
    """How messages name one: ``install script``."""
    article: str
    container: str
    path: Callable[[str], str]
    """The znode of a name, refusing a malformed name (`InvalidInput`)."""
    field: str
    """The record's key holding the text, which a detailed view shows under the same key."""
    check: Callable[[Any], str]
    """The text to store from what a caller gave, or `InvalidInput`."""
    users: Callable[[Mapping[str, Mapping[str, Any]], str], list[str]]
    """The profiles (name → record) that name a text."""


class NamedTexts:
    """The texts of one kind for `area` (the provisioner area: ``_context``, ``_locked``, ``_profile_records``,
    ``_stored_profiles``), read from a collection watched from first use."""

    def __init__(self, area: Any, kind: TextKind):
        self._area = area
        self._kind = kind
        self._collection = WatchedCollection(area._context.store, kind.container, kind.path)
        self._collection.start()

    def add(self, name: str, text: Any) -> None:
        path = self._kind.path(name)
        record = {self._kind.field: self._kind.check(text)}
        with self._area._locked():
            try:
                self._area._context.store.transaction().create(path, record).commit()
            except AlreadyExists:
                raise AlreadyExists(f"{self._kind.article} {self._kind.noun} named '{name}' exists already") \
                    from None
            self._collection.refresh(name)

    def modify(self, name: str, text: Any) -> None:
        path = self._kind.path(name)
        record = {self._kind.field: self._kind.check(text)}
        with self._area._locked():
            if not self._area._context.store.zk.exists(path):
                raise NotFound(f"no {self._kind.noun} named '{name}'")
            self._area._context.store.transaction().set(path, record).commit()
            self._collection.refresh(name)

    def list(self) -> list[dict[str, Any]]:
        profiles = self._area._profile_records()
        return [self._view(name, raw[OWN_VALUE], profiles, detail=False)
                for name, raw in sorted(self._collection.snapshot().items()) if raw.get(OWN_VALUE)]

    def info(self, name: str) -> dict[str, Any]:
        record = self.record(name)
        if record is None:
            raise NotFound(f"no {self._kind.noun} named '{name}'")
        return self._view(name, record, self._area._profile_records(), detail=True)

    def record(self, name: str) -> dict[str, Any] | None:
        """The stored record of `name`, None if there is none; `InvalidInput` for a malformed name."""
        self._kind.path(name)
        raw = self._collection.get(name)
        return raw.get(OWN_VALUE) if raw and raw.get(OWN_VALUE) else None

    def remove(self, name: str) -> None:
        path = self._kind.path(name)
        with self._area._locked():
            if not self._area._context.store.zk.exists(path):
                raise NotFound(f"no {self._kind.noun} named '{name}'")
            users = self._kind.users(self._area._stored_profiles(), name)
            if users:
                raise Conflict(f"{self._kind.noun} '{name}' is used by profile(s) {', '.join(users)}; change or "
                               "remove them first")
            self._area._context.store.transaction().delete(path).commit()
            self._collection.refresh(name)

    def _view(self, name: str, record: dict[str, Any], profiles: Mapping[str, Mapping[str, Any]],
              detail: bool) -> dict[str, Any]:
        text = record[self._kind.field]
        view = {"name": name, "size_bytes": len(text.encode()), "used_by": self._kind.users(profiles, name)}
        if detail:
            view[self._kind.field] = text
        return view


def texts_of(area: Any, attribute: str, kind: TextKind) -> NamedTexts:
    """`area`'s texts of `kind`, kept in `attribute`: made on first use, by one thread only, since the mixins
    that use them have no constructor of their own."""
    with _collection_lock:
        texts = getattr(area, attribute, None)
        if texts is None:
            texts = NamedTexts(area, kind)
            setattr(area, attribute, texts)
        return texts
