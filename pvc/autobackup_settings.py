"""Scheduled backups' cluster config (``autobackup_*`` keys of `pvc.cluster_config`): checking it, and when a
run is due.

A schedule is ``Nh`` (every N hours, counted from the last run, or from the moment the schedule was first
seen) or ``HH:MM`` (once a day at that time, UTC: due once that time has passed since the last run). ``off``
(stored as absent) stops it. Pure, without I/O, so that the rules are tested apart from any cluster.
"""
import re
from dataclasses import dataclass
from typing import Any

from pvc import cluster_config, schema
from pvc.errors import InvalidInput

KEYS = ("autobackup_tag", "autobackup_destination", "autobackup_full_interval", "autobackup_keep_chains",
        "autobackup_schedule")
DEFAULTS: dict[str, Any] = {key: cluster_config.BY_NAME[key].default for key in KEYS}
MAX_INTERVAL_HOURS = 168
MAX_FULL_INTERVAL = 1000
MAX_KEEP_CHAINS = 1000
OFF = "off"
_EVERY = re.compile(r"([0-9]{1,3})h")
_DAILY = re.compile(r"([0-9]{1,2}):([0-9]{2})")


@dataclass(frozen=True)
class Schedule:
    """Every `every_hours` hours, or daily at `daily_minute` minutes past midnight UTC."""

    every_hours: int | None = None
    daily_minute: int | None = None

    def due(self, last_run: float, now: float) -> bool:
        """Whether a run is due at `now`, the last one (or the schedule's first sighting) having been at
        `last_run`."""
        if self.every_hours is not None:
            return now - last_run >= self.every_hours * 3600
        midnight = now - now % 86400
        today = midnight + self.daily_minute * 60
        latest = today if today <= now else today - 86400
        return last_run < latest


def parse_schedule(text: Any, key: str = "autobackup_schedule") -> Schedule | None:
    """The schedule `text` names (None for ``off``); anything else is refused in one line naming `key`."""
    if text is None or text == OFF:
        return None
    if isinstance(text, str):
        every = _EVERY.fullmatch(text.strip())
        if every and 1 <= int(every.group(1)) <= MAX_INTERVAL_HOURS:
            return Schedule(every_hours=int(every.group(1)))
        daily = _DAILY.fullmatch(text.strip())
        if daily and int(daily.group(1)) < 24 and int(daily.group(2)) < 60:
            return Schedule(daily_minute=int(daily.group(1)) * 60 + int(daily.group(2)))
    raise InvalidInput(f"{key} must be 'Nh' (every N hours, 1 to {MAX_INTERVAL_HOURS}), 'HH:MM' "
                       f"(daily, UTC) or 'off', not {text!r}")


def check(changes: dict[str, Any]) -> dict[str, Any]:
    """The autobackup keys of `changes` checked and normalised (``off`` becomes absent); refuses, in one line
    naming the key, a value that could never work."""
    checked = {}
    if "autobackup_tag" in changes:
        tag = changes["autobackup_tag"]
        checked["autobackup_tag"] = _name_or_none(tag, "autobackup_tag", "a tag name")
    if "autobackup_destination" in changes:
        destination = changes["autobackup_destination"]
        if destination is not None and destination != OFF and (
                not isinstance(destination, str) or not destination.startswith("/")
                or ".." in destination.split("/") or "." in destination.split("/")
                or len(destination) > 1024 or "\0" in destination):
            raise InvalidInput(f"autobackup_destination must be an absolute path without '..' or '.' (under a "
                               f"backup root of the nodes), not {destination!r}")
        checked["autobackup_destination"] = None if destination == OFF else \
            (destination.rstrip("/") or "/") if destination else None
    for key, most in (("autobackup_full_interval", MAX_FULL_INTERVAL), ("autobackup_keep_chains", MAX_KEEP_CHAINS)):
        if key in changes:
            value = changes[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise InvalidInput(f"{key} must be a whole number from 1 to {most}, not {value!r}")
            checked[key] = value
    if "autobackup_schedule" in changes:
        text = changes["autobackup_schedule"]
        checked["autobackup_schedule"] = None if parse_schedule(text) is None else text.strip()
    return checked


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """The cluster's autobackup settings, defaults filled in."""
    return {**DEFAULTS, **{key: config[key] for key in KEYS if config.get(key) is not None}}


def _name_or_none(value: Any, key: str, what: str) -> str | None:
    if value is None or value == OFF:
        return None
    try:
        return schema.check_name("tag", value)
    except InvalidInput:
        raise InvalidInput(f"{key} must be {what} (1-63 letters, digits, '.', '_' or '-'), not {value!r}") from None
