"""What crosses Pyro5 between client, coordinators and node agents.

Control calls use serpent; results are plain data (dicts, lists, str, int, float, bool, None). PVC's own
exceptions are registered here so that they arrive as themselves, with the server's traceback attached
(`remote_traceback`). Every process that talks Pyro5 calls `register()` once, before its first call.
"""
import gc

import Pyro5
import Pyro5.errors
import Pyro5.serializers
from Pyro5.serializers import MsgpackSerializer, SerializerBase

from pvc import errors

_registered = False


def _rebuild_error(error_type: type[errors.PVCError]):
    def convert(_classname: str, data: dict) -> errors.PVCError:
        return SerializerBase.make_exception(error_type, data)
    return convert


class _QuietMsgpackSerializer(MsgpackSerializer):
    """msgpack with the cyclic garbage collector paused while a message is decoded: a list of 10,000 VMs is
    some 40,000 new dicts and lists, whose allocations set off collection after collection of every object
    the process holds (a quarter of the decoding in a bare process, more in a full one). Nothing a decode
    makes is garbage yet."""

    def loads(self, data):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return super().loads(data)
        finally:
            if enabled:
                gc.enable()


def register() -> None:
    """Make PVC's errors deserialisable; tune Pyro5 defaults shared by every PVC process."""
    global _registered
    if _registered:
        return
    for error_type in errors.ALL_ERRORS:
        SerializerBase.register_dict_to_class(f"{error_type.__module__}.{error_type.__name__}",
                                              _rebuild_error(error_type))
    quiet = _QuietMsgpackSerializer()
    Pyro5.serializers.serializers["msgpack"] = quiet
    Pyro5.serializers.serializers_by_id[quiet.serializer_id] = quiet
    Pyro5.config.SERIALIZER = "serpent"
    Pyro5.config.DETAILED_TRACEBACK = False
    Pyro5.config.MAX_RETRIES = 0
    _registered = True


def remote_traceback(error: BaseException) -> str:
    """The server-side traceback Pyro5 attached to an error raised remotely, or '' for a local one."""
    lines = getattr(error, "_pyroTraceback", None)
    return "".join(lines) if lines else ""


def is_handshake_refusal(error: BaseException) -> bool:
    """A server that answered but refused our credentials: another server would refuse them too."""
    return isinstance(error, Pyro5.errors.CommunicationError) and " rejected: " in str(error)


def handshake_refusal_reason(error: BaseException) -> str:
    return str(error).split(" rejected: ", 1)[-1]
