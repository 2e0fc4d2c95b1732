"""Short secrets (BMC passwords) sealed for storage in ZooKeeper, under a key that never enters it.

Whoever reads ZooKeeper (a backup, a snapshot, an administrator's shell, a leaked digest password) must not
learn a BMC password: a BMC powers a host off, out of band. So a secret is stored only as
``sealed:v1:BASE64``, AES-256-GCM (authenticated: a changed byte is refused, never opened to garbage) with a
random 96-bit nonce, and the text a plain value is recognised by.

The key is derived (HKDF-SHA256) from the ``cluster_secret`` every pvcnoded and pvcapid already holds in its
own YAML file, outside ZooKeeper: the node needs it to seal its BMC password, the coordinators to open it.
A dedicated key would have to be distributed, kept equal and rotated alongside the cluster secret for no
gain, since both would sit in the same files. Changing the cluster secret makes sealed values unopenable:
each pvcnoded seals its BMC password again when it starts; fence options with a password are set again
(``pvc cluster config --fence-options``), and until then the fence level fails saying so.

Each secret is sealed for a `context` (e.g. ``node hv1 bmc password``), authenticated with it, so a sealed
value copied to another place (another node's record) does not open there.
"""
import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pvc.errors import PVCError

PREFIX = "sealed:v1:"
SHOWN = "(set)"
"""What any listing shows in place of a secret, sealed or not."""

_HKDF_INFO = b"pvc sealed secrets v1"
_NONCE_BYTES = 12


class SecretError(PVCError):
    """A sealed value cannot be opened: another key sealed it, or it was altered."""


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith("sealed:")


def shown(value: object) -> str | None:
    """A secret as listings show it: `SHOWN` when there is one, else None."""
    return SHOWN if value not in (None, "") else None


class SecretsBox:
    """Seals and opens secrets under the key derived from `cluster_secret`."""

    def __init__(self, cluster_secret: str):
        if not cluster_secret:
            raise SecretError("no cluster_secret: cannot seal or open secrets")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            cluster_secret.encode())
        self._cipher = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher.encrypt(nonce, plaintext.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, value: str, context: str) -> str:
        """The plaintext of a value `seal` made for `context`; a SecretError naming `context` otherwise."""
        if not value.startswith(PREFIX):
            scheme = value.split(":")[1] if is_sealed(value) else "none"
            raise SecretError(f"{context}: not sealed by this version of PVC (scheme {scheme!r}, expected "
                              f"{PREFIX[:-1]!r})")
        try:
            raw = base64.urlsafe_b64decode(value[len(PREFIX):].encode("ascii"))
        except (binascii.Error, UnicodeEncodeError):
            raise SecretError(f"{context}: the sealed value is not valid base64") from None
        if len(raw) <= _NONCE_BYTES:
            raise SecretError(f"{context}: the sealed value is truncated")
        try:
            plaintext = self._cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SecretError(f"{context}: cannot open the sealed value: it was sealed under another "
                              f"cluster_secret, for another place, or altered") from None
        return plaintext.decode()
