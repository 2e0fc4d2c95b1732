"""Scheduled mirrors' cluster config (``automirror_*`` keys of `pvc.cluster_config`): checking it. The schedule
reads as autobackup's does (`pvc.autobackup_settings.parse_schedule`)."""
from typing import Any

from pvc import cluster_config, schema
from pvc.autobackup_settings import OFF, parse_schedule
from pvc.errors import InvalidInput

KEYS = ("automirror_tag", "automirror_destination", "automirror_keep", "automirror_schedule")
DEFAULTS: dict[str, Any] = {key: cluster_config.BY_NAME[key].default for key in KEYS}
MAX_KEEP = 1000


def check(changes: dict[str, Any]) -> dict[str, Any]:
    """The automirror keys of `changes` checked and normalised (``off`` becomes absent)."""
    checked = {}
    for key, kind in (("automirror_tag", "tag"), ("automirror_destination", "mirror destination")):
        if key in changes:
            value = changes[key]
            if value is None or value == OFF:
                checked[key] = None
                continue
            try:
                checked[key] = schema.check_name(kind, value)
            except InvalidInput:
                raise InvalidInput(f"{key} must be a {kind} name (1-63 letters, digits, '.', '_' or '-'), not "
                                   f"{value!r}") from None
    if "automirror_keep" in changes:
        value = changes["automirror_keep"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEP:
            raise InvalidInput(f"automirror_keep must be a whole number from 1 to {MAX_KEEP}, not {value!r}")
        checked["automirror_keep"] = value
    if "automirror_schedule" in changes:
        text = changes["automirror_schedule"]
        checked["automirror_schedule"] = None if parse_schedule(text, "automirror_schedule") is None \
            else text.strip()
    return checked


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """The cluster's automirror settings, defaults filled in."""
    return {**DEFAULTS, **{key: config[key] for key in KEYS if config.get(key) is not None}}
