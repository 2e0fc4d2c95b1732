"""Asking before a command loses data or disrupts a VM, as upstream PVC's `pvc` asks.

A command decorated with `confirm_option` gets `-y/--yes`; the root's `--unsafe` (or ``PVC_UNSAFE``) skips
every question at once. Without a terminal to ask on, the question is refused with a one-line error instead
of waiting for an answer that cannot come: a script must say `--yes`.

`confirm` is the same question for a command to ask itself, when whether to ask depends on what it finds
(a diff to apply, a restart requested).
"""
import contextlib
import functools
import sys
from typing import Any, Callable

import click


def unsafe() -> bool:
    """Whether the root option `--unsafe` was given for this invocation."""
    context = click.get_current_context(silent=True)
    session = context.find_root().obj if context is not None else None
    return bool(getattr(session, "unsafe", False))


def confirm(question: str, yes: bool = False) -> None:
    """Ask `question` (yes/no, default no) unless `yes` or `--unsafe`; a "no" aborts the command (exit 1)
    and no terminal is a `click.ClickException` naming how to say yes."""
    if yes or unsafe():
        return
    if not sys.stdin.isatty():
        raise click.ClickException(f"not confirmed: {question} (no terminal to ask on; pass --yes, or pvc "
                                   "--unsafe)")
    context = click.get_current_context(silent=True)
    session = context.find_root().obj if context is not None else None
    terminal = getattr(session, "terminal_stderr", None)
    with contextlib.redirect_stderr(terminal) if terminal is not None else contextlib.nullcontext():
        click.confirm(question, abort=True, err=True)


def confirm_option(question: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add `-y/--yes` to a command and ask `question` before it runs. The question may name the command's
    parameters as ``{name}`` (``"Remove VM {vm}"``)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @click.option("-y", "--yes", "yes", is_flag=True, help="do not ask for confirmation")
        @functools.wraps(function)
        def confirmed(*args: Any, yes: bool, **kwargs: Any) -> Any:
            confirm(question.format(**kwargs), yes)
            return function(*args, **kwargs)
        return confirmed
    return decorate
