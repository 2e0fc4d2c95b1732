"""The exceptions that cross the wire.

Every error a user can cause is one of these, with a message that names what is wrong. `pvc.wire` registers
each class with Pyro5, so a client catches `pvc.errors.NotFound` exactly as the server raised it.
"""


class PVCError(Exception):
    """Base of every error PVC reports to a user; its message is shown as-is, on one line."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(PVCError):
    """The request itself is wrong: a malformed name, size, document or option."""


class NotFound(PVCError):
    """The named object does not exist."""


class AlreadyExists(PVCError):
    """An object of that name (or identity) exists already."""


class Conflict(PVCError):
    """The request is valid but the cluster's state does not allow it now."""


class Busy(PVCError):
    """Another operation holds the object's lock; try again shortly."""


class AuthenticationError(PVCError):
    """The API key or cluster secret was missing or wrong."""


class Unavailable(PVCError):
    """No coordinator (or node agent, or ZooKeeper) answered in time."""


class NotLeader(PVCError):
    """A leader-only write was refused because this coordinator no longer holds leadership."""


class ConfigError(PVCError):
    """A configuration file is missing, unreadable, or has a missing, unknown or mistyped key."""


class PluginError(PVCError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class OperationFailed(PVCError):
    """An action on a node (libvirt, storage) failed; the message carries the node's reason."""


ALL_ERRORS: tuple[type[PVCError], ...] = (
    PVCError, InvalidInput, NotFound, AlreadyExists, Conflict, Busy, AuthenticationError, Unavailable,
    NotLeader, ConfigError, PluginError, OperationFailed,
)
