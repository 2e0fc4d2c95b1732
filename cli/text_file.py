"""A click parameter for a text file the user names (``-``: standard input), read through `pvc.text_input`:
the command receives its checked text, or the user one line saying what is wrong with the file."""
from typing import Any

import click
from click.shell_completion import CompletionItem

from pvc import text_input


class TextFile(click.ParamType):
    name = "file"

    def __init__(self, what: str, limit_bytes: int):
        self.what, self.limit_bytes = what, limit_bytes

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return text_input.read_text(value, self.what, self.limit_bytes)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(incomplete, type="file")]
