"""Request ids: what makes a retried call safe to repeat.

A client sends one id with a call and the same id with every retry of it (Pyro5's correlation id), so a call
cut off mid-answer can be tried on another coordinator. The coordinator that carries a call out records its id
in ZooKeeper in the same transaction as the call's first write: "the call changed something" and "its id is
recorded" are one fact, with no crash between them. A retry that finds the id answers from the first attempt
(`pvc.rpc.retries`) instead of acting again; one whose transaction collides with the recorded id meets
`Repeated`.

The id travels with the call's thread from the coordinator's wrapper to `pvc.store.Transaction`.
"""
import threading
from typing import Any

FIRST_ATTEMPT = "PVCF"
"""The Pyro annotation PVC's client sends with a call's first attempt only: no earlier attempt can have recorded
its id, so the coordinator skips the read a retry needs, a round trip of every call. A client that does not
send it (an older one, a script's own) is read for as before."""

_calls = threading.local()


class Repeated(Exception):
    """The transaction that would record this call's id found it recorded: an attempt of the same call (a
    retry that arrived while the first attempt still ran) has had its effect already."""


def begin(request_id: str, record: dict[str, Any]) -> None:
    """From now on, this thread's first committed transaction also creates the request's `record`."""
    _calls.pending = (request_id, record)
    _calls.recorded = False
    _calls.active = True


def active() -> bool:
    """Whether this thread is inside a call that runs under its request id: a call one area makes to another
    within it is part of that call, not a request of its own."""
    return getattr(_calls, "active", False)


def end() -> bool:
    """Stop tracking this thread's call; whether one of its transactions recorded the id."""
    recorded = getattr(_calls, "recorded", False)
    _calls.pending, _calls.recorded, _calls.active = None, False, False
    return recorded


def take() -> tuple[str, dict[str, Any]] | None:
    """The id and record for a transaction about to commit, if none of this call has recorded them yet."""
    pending = getattr(_calls, "pending", None)
    _calls.pending = None
    return pending


def committed(pending: tuple[str, dict[str, Any]] | None, succeeded: bool) -> None:
    """Settle what `take` handed out: recorded if the transaction committed, pending again if it failed."""
    if pending is None:
        return
    if succeeded:
        _calls.recorded = True
    else:
        _calls.pending = pending
