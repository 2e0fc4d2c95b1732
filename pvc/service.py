"""What both daemons do the same way: a command line built from their settings, logging, and signals.

Signal handlers only enqueue the signal; the daemon's main loop acts on it, so no work runs inside a handler.
"""
import logging
import logging.handlers
import queue
import signal
import sys
from typing import Any, Callable

import click

from pvc import config
from pvc.errors import PVCError


def daemon_command(name: str, settings: list[config.Setting], default_config: str,
                   run: Callable[[dict[str, Any]], None]) -> click.Command:
    """A click command: ``--config FILE`` plus one override option per setting, then `run(settings)`."""

    def main(config_path: str | None, **overrides: Any) -> None:
        parsed = {setting.name: config.parse_override(setting, overrides[setting.name])
                  for setting in settings if overrides.get(setting.name) is not None}
        try:
            values = config.load(config_path, settings, parsed)
            setup_logging(name, values["log_level"], values.get("log_file"))
            run(values)
        except PVCError as error:
            click.echo(f"{name}: error: {error}", err=True)
            sys.exit(1)

    params = [click.Option(["--config", "config_path"], default=default_config, show_default=True,
                           help="YAML configuration file")]
    params += [click.Option([setting.option, setting.name], default=None, help=setting.description)
               for setting in settings]
    return click.Command(name, params=params, callback=main,
                         help=f"The PVC {name} daemon; every configuration key can be overridden here.")


def setup_logging(name: str, level: str, log_file: str | None = None) -> None:
    """Log to stderr, or to `log_file` (a watched file, reopened after logrotate moves it)."""
    handler = logging.handlers.WatchedFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler],
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    logging.getLogger("Pyro5").setLevel(logging.WARNING)


class SignalQueue:
    """SIGTERM and SIGINT as items of a queue the main loop waits on."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self._queue: queue.Queue[int] = queue.Queue()
        for signum in signals:
            signal.signal(signum, self._enqueue)

    def _enqueue(self, signum: int, _frame: Any) -> None:
        self._queue.put_nowait(signum)

    def wait(self, timeout: float) -> int | None:
        """The next signal received within `timeout` seconds, or None."""
        try:
            return self._queue.get(timeout=max(timeout, 0))
        except queue.Empty:
            return None
