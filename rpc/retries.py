"""A retried call is answered from its first attempt, never carried out twice.

Every call that may change something runs under its request id (`pvc.request_ids`): its first transaction
records ``/pvc/requests/ID`` with the coordinator carrying it out, and the call's result or error is added
once it returns. A retry of the same id (the client lost the first answer and asked another coordinator):

- finds the result or error: it gets the same answer;
- finds the id but no answer yet: the first attempt is still running, or its coordinator died after its
  write. It waits while that coordinator is alive; once it is gone the effect stands without an answer, and
  the area answers as if asked afterwards (`_replayed`: the VM or volume as it now is);
- finds nothing: the first attempt changed nothing, so doing it now is doing it once.

A first attempt (`request_ids.FIRST_ATTEMPT`) is not read for: nothing can be recorded under its id yet.

Records outlive the client's retry window (`RETRY_WINDOW_S`); the leader prunes older ones.
"""
import functools
import logging
import time
from typing import Any, Callable

import Pyro5.api
from kazoo.exceptions import NoNodeError

from pvc import errors, request_ids, schema
from pvc.errors import PVCError, Unavailable

log = logging.getLogger(__name__)

RETRY_WINDOW_S = 900.0
"""How long a request's record is kept: longer than a client tries one call (its wait timeout and then the
other coordinators)."""
ANSWER_POLL_S = 0.1
FIRST_ATTEMPT_BOUND_S = 360.0
"""Longest a first attempt may still be running when its retry arrives (a call's own wait is bounded at 300 s)."""


def retry_safe(reads: set[str]) -> Callable[[type], type]:
    """Class decorator for a remote area: every public method not in `reads`, its own or one it inherits from
    a mixin, runs under its request id. The area's `_replayed(method, args, kwargs)` answers a call whose
    coordinator died before answering."""
    def decorate(cls: type) -> type:
        wrapped: set[str] = set()
        for klass in cls.__mro__[:-1]:
            for name, member in list(vars(klass).items()):
                if callable(member) and not name.startswith("_") and name not in reads and name not in wrapped:
                    wrapped.add(name)
                    setattr(cls, name, _once_per_request(member))
        return cls
    return decorate


def _once_per_request(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(area, *args: Any, **kwargs: Any) -> Any:
        correlation_id = Pyro5.api.current_context.correlation_id
        if correlation_id is None or request_ids.active():
            return method(area, *args, **kwargs)
        request_id = str(correlation_id)
        context = area._context
        first_attempt = request_ids.FIRST_ATTEMPT in (Pyro5.api.current_context.annotations or {})
        earlier = None if first_attempt else _read(context.store, request_id)
        if earlier is not None:
            return _answer(area, request_id, earlier, method.__name__, args, kwargs)
        record = {"coordinator": context.name, "method": method.__name__, "created": time.time()}
        request_ids.begin(request_id, record)
        try:
            result = method(area, *args, **kwargs)
        except request_ids.Repeated:
            request_ids.end()
            return _answer(area, request_id, _read(context.store, request_id), method.__name__, args, kwargs)
        except PVCError as error:
            if request_ids.end():
                _settle(context.store, request_id, {**record, "error": type(error).__name__,
                                                    "message": error.message})
            raise
        except BaseException:
            request_ids.end()
            raise
        if request_ids.end():
            _settle(context.store, request_id, {**record, "result": result})
        return result
    return call


def _read(store, request_id: str) -> dict[str, Any] | None:
    try:
        data, _stat = store.zk.get(schema.request(request_id))
    except NoNodeError:
        return None
    return schema.decode(data) or {}


def _settle(store, request_id: str, answered: dict[str, Any]) -> None:
    """Write the request's record with its answer (the record this call created, so nothing is read back),
    without waiting for ZooKeeper: a retry that comes before the answer is recorded waits for it while this
    coordinator lives, and is answered anew once it is gone, as if this coordinator had died before writing
    it. An answer that is not plain data is left out (a retry then gets the replayed answer)."""
    try:
        data = schema.encode(answered)
    except (TypeError, ValueError) as error:
        log.info("request %s: its answer is not recorded (%s)", request_id, error)
        return

    def written(result) -> None:
        try:
            result.get()
        except Exception as error:
            log.warning("request %s: its answer could not be recorded: %s", request_id, error)
    try:
        store.zk.set_async(schema.request(request_id), data).rawlink(written)
    except Exception as error:
        log.warning("request %s: its answer could not be recorded: %s", request_id, error)


def _answer(area, request_id: str, record: dict[str, Any] | None, method: str, args: tuple,
            kwargs: dict[str, Any]) -> Any:
    store = area._context.store
    deadline = time.monotonic() + FIRST_ATTEMPT_BOUND_S
    while record is not None and "result" not in record and "error" not in record:
        if time.monotonic() > deadline:
            raise Unavailable(f"request {request_id} ({method}) is still being carried out by "
                              f"{record.get('coordinator')}; check its effect")
        if store.zk.exists(schema.live_coordinator(record.get("coordinator", "?"))) is None:
            log.info("request %s (%s) was carried out by %s, which left before answering: answering anew",
                     request_id, method, record.get("coordinator"))
            return area._replayed(method, args, kwargs)
        time.sleep(ANSWER_POLL_S)
        record = _read(store, request_id)
    if record is None:
        raise Unavailable(f"request {request_id} ({method}) was recorded and then pruned; check its effect")
    if "error" in record:
        raise getattr(errors, record["error"], PVCError)(record["message"])
    return record["result"]


class RequestPruner:
    """Deletes request records the leader has seen for longer than the retry window, timed on its own
    monotonic clock (never by comparing a znode's time with this host's); a new leader starts counting anew,
    which only keeps records longer."""

    def __init__(self, every_s: float = 60.0):
        self._every_s = every_s
        self._seen: dict[str, float] = {}
        self._next = 0.0

    def tick(self, store, leader_node: str) -> int:
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self._every_s
        names = set(store.children(schema.REQUESTS))
        self._seen = {name: self._seen.get(name, now) for name in names}
        expired = sorted(name for name, seen in self._seen.items() if now - seen > RETRY_WINDOW_S)
        for start in range(0, len(expired), 100):
            transaction = store.transaction(leader_node)
            for name in expired[start:start + 100]:
                transaction.delete(schema.request(name))
            try:
                transaction.commit()
            except PVCError as error:
                log.info("pruning request records: %s", error)
                return 0
        for name in expired:
            del self._seen[name]
        return len(expired)
