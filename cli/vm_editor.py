"""`pvc vm modify --editor`: the VM's XML in $EDITOR, the change shown as a diff, applied only when confirmed.

Nothing is sent when the editor is left without a change or the diff is declined; what is sent is checked by
the coordinator like any `vm modify` (same name, same UUID, the safe-definition allowlist).
"""
import difflib
import os
import tempfile

import click
from lxml import etree

from pvc import text_input
from pvc.cli.confirm import confirm
from pvc.domain_xml import MAX_XML_BYTES

_PRETTY_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                                 remove_blank_text=True)


def pretty(xml: str) -> str:
    """The stored document indented, so that the editor shows one element a line and the diff is readable."""
    try:
        root = etree.fromstring(xml.encode(), _PRETTY_PARSER)
    except etree.XMLSyntaxError:
        return xml
    return etree.tostring(root, encoding="unicode", pretty_print=True)


def edited_xml(vm: str, current: str, yes: bool) -> str | None:
    """The XML the user wrote in $EDITOR and confirmed; None when there is nothing to apply."""
    before = pretty(current)
    after = _edit(before)
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), fromfile=f"{vm} (current)",
                                     tofile=f"{vm} (edited)", lineterm=""))
    if not diff:
        click.echo(f"VM {vm}: no changes; nothing applied")
        return None
    for line in diff:
        colour = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1])
        click.echo(click.style(line, fg=colour) if colour and not line.startswith(("+++", "---")) else line)
    confirm(f"Apply these changes to VM {vm}", yes)
    return after


def _edit(text: str) -> str:
    """`text` as the editor left it, read back as any domain document the user names is read (UTF-8, size,
    no control characters), whatever the locale."""
    descriptor, name = tempfile.mkstemp(prefix="pvc-edit-", suffix=".xml")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        click.edit(filename=name)
        return text_input.read_text(name, "the domain XML your editor left", MAX_XML_BYTES, shown_as="")
    finally:
        os.unlink(name)
