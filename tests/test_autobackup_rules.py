"""Autobackup's pure rules: what a schedule means and when it is due, which settings are refused, and how chains
grow and are retired (whole, never the one in use)."""
import calendar
import time

import pytest

from pvc import autobackup_settings
from pvc.errors import InvalidInput
from pvc.rpc.backup import chains

HOUR = 3600


def _utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M")))


def test_an_interval_schedule_is_due_n_hours_after_the_last_run():
    every_six = autobackup_settings.parse_schedule("6h")
    assert not every_six.due(1000.0, 1000.0 + 6 * HOUR - 1)
    assert every_six.due(1000.0, 1000.0 + 6 * HOUR)


def test_a_daily_schedule_is_due_once_its_time_has_passed_since_the_last_run():
    daily = autobackup_settings.parse_schedule("02:30")
    assert not daily.due(_utc("2026-12-03 02:31"), _utc("2026-12-04 02:29")), "not before the time"
    assert daily.due(_utc("2026-12-03 02:31"), _utc("2026-12-04 02:30"))
    assert daily.due(_utc("2026-12-01 12:00"), _utc("2026-12-03 01:00")), "a day missed: due at once"
    assert not daily.due(_utc("2026-12-03 02:30"), _utc("2026-12-03 23:59")), "once a day"


@pytest.mark.parametrize("changes, words", [
    ({"autobackup_schedule": "25:00"}, "autobackup_schedule must be 'Nh'"),
    ({"autobackup_schedule": "0h"}, "autobackup_schedule must be 'Nh'"),
    ({"autobackup_schedule": "daily"}, "autobackup_schedule must be 'Nh'"),
    ({"autobackup_keep_chains": 0}, "autobackup_keep_chains must be a whole number from 1"),
    ({"autobackup_full_interval": True}, "autobackup_full_interval must be a whole number from 1"),
    ({"autobackup_destination": "relative/path"}, "autobackup_destination must be an absolute path"),
    ({"autobackup_destination": "/srv/../etc"}, "without '..'"),
    ({"autobackup_tag": "no spaces"}, "autobackup_tag must be a tag name"),
])
def test_a_bad_setting_is_refused_in_one_line_naming_it(changes, words):
    with pytest.raises(InvalidInput) as refused:
        autobackup_settings.check(changes)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_off_clears_a_setting():
    assert autobackup_settings.check({"autobackup_schedule": "off", "autobackup_destination": "/srv/b/"}) == \
        {"autobackup_schedule": None, "autobackup_destination": "/srv/b"}


def _backup(snapshot: str, kind: str) -> dict:
    return {"snapshot": snapshot, "directory": f"/b/vm/{snapshot}", "node": "hv1", "kind": kind}


def test_chains_grow_full_then_incrementals_and_retire_whole_chains_only():
    record = chains.empty()
    assert chains.next_kind(record, 3) == "full"
    for index in range(7):
        kind = chains.next_kind(record, 3)
        record = chains.with_backup(record, _backup(f"s{index}", kind), keep_chains=2)
        for chain_id in list(record["removing"]):
            removed = next(chain for chain in record["chains"] if chain["id"] == chain_id)
            assert [backup["kind"] for backup in chains.removal_order(removed)][-1] == "full", \
                "a chain's full export goes last"
            record = chains.without_chain(record, chain_id)
    assert [[backup["snapshot"] for backup in chain["backups"]] for chain in record["chains"]] == \
        [["s3", "s4", "s5"], ["s6"]]
    assert chains.latest(record)["snapshot"] == "s6"
    assert [chain["backups"][0]["kind"] for chain in record["chains"]] == ["full", "full"]
