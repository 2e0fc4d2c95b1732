"""Text a user hands the client (a domain document, user data, fence options, an API key file, the connections
file, the client settings file, an editor's result), read the same way whatever the locale.

Each is size-checked before it is read (a regular file by its size, a pipe by reading one byte past the
limit), decoded as strict UTF-8 (a leading byte-order mark is dropped), and refused when it holds a NUL or a
control character other than tab, line feed and carriage return: a binary file given by mistake is named in one
`InvalidInput` line, never a `UnicodeDecodeError` traceback, and nothing is sent.
"""
import os
import stat
import sys
from typing import BinaryIO

from pvc.errors import InvalidInput, PVCError

_ALLOWED_CONTROLS = {"\t", "\n", "\r"}
_BOM = "\ufeff"


def read_text(path: str | os.PathLike, what: str, limit_bytes: int,
              error: type[PVCError] = InvalidInput, shown_as: str | None = None) -> str:
    """The text of file `path` (``-``: standard input), `what` naming it in any refusal ("the domain XML
    file"), followed by `shown_as` (default: the path; '' for a temporary file the user never named). Raises
    `error` (`InvalidInput` unless told), also when the file cannot be opened."""
    try:
        return _read_text(path, what, limit_bytes, shown_as)
    except InvalidInput as refused:
        raise refused if error is InvalidInput else error(str(refused)) from None


def _read_text(path: str | os.PathLike, what: str, limit_bytes: int, shown_as: str | None) -> str:
    name = "standard input" if str(path) == "-" else str(path) if shown_as is None else shown_as
    what = f"{what} {name}" if name else what
    if str(path) == "-":
        return decode_text(_read_limited(sys.stdin.buffer, what, limit_bytes), what)
    try:
        with open(path, "rb") as file:
            details = os.fstat(file.fileno())
            if stat.S_ISREG(details.st_mode) and details.st_size > limit_bytes:
                raise InvalidInput(f"{what} is {details.st_size} bytes; more than {limit_bytes} is refused")
            data = _read_limited(file, what, limit_bytes)
    except OSError as error:
        raise InvalidInput(f"cannot read {what}: {error.strerror}") from None
    return decode_text(data, what)


def decode_text(data: bytes, what: str) -> str:
    """`data` as text, or `InvalidInput` naming `what` (the file) and the first offending byte or character."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{what} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
                           f"{error.start}") from None
    text = text.removeprefix(_BOM)
    for offset, character in enumerate(text):
        if (character < " " or character == "\x7f") and character not in _ALLOWED_CONTROLS:
            line = text.count("\n", 0, offset) + 1
            kind = "a NUL byte" if character == "\0" else f"control character U+{ord(character):04X}"
            raise InvalidInput(f"{what} holds {kind} on line {line}; a text file cannot")
    return text


def _read_limited(stream: BinaryIO, what: str, limit_bytes: int) -> bytes:
    data = stream.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise InvalidInput(f"{what} is more than {limit_bytes} bytes; refused")
    return data
