"""A node asks a pool for its free space only when a remembered answer cannot settle whether an upload fits."""
import pytest

from pvc.errors import NotFound
from pvc.node import pool_room
from pvc.node.pool_room import PoolRoom
from pvc.plugins.storage_file import FileBackend


@pytest.fixture
def backend(tmp_path):
    backend = FileBackend({"storage_directory": str(tmp_path)})
    backend.pool_create("disks", {})
    return backend


def test_a_small_upload_trusts_a_recent_answer_a_large_one_asks_again(backend, mocker):
    asked = mocker.spy(backend, "pool_usage")
    free = backend.pool_usage("disks")["free_bytes"]
    asked.reset_mock()
    room = PoolRoom(backend)

    assert room.fits("disks", 1 << 20)[0] and asked.call_count == 1
    assert room.fits("disks", 1 << 20)[0] and asked.call_count == 1, "the remembered answer settles it"
    assert room.fits("disks", free // 2)[0] and asked.call_count == 2, "more than half of it is asked afresh"

    fits, answered = room.fits("disks", free * 4)
    assert not fits and asked.call_count == 3
    assert abs(answered - free) < free // 10, "a refusal names a fresh figure"


def test_replacing_a_larger_volume_never_raises_the_remembered_figure(backend, mocker):
    asked = mocker.spy(backend, "pool_usage")
    free = backend.pool_usage("disks")["free_bytes"]
    room = PoolRoom(backend)
    room.fits("disks", 1)

    assert room.fits("disks", -free)[0]
    room.fits("disks", free // 2 + (1 << 20))
    assert asked.call_count == 3, "an upload needing more than half of the figure asks, whatever a replacement freed"


def test_a_remembered_answer_expires(backend, mocker, monkeypatch):
    asked = mocker.spy(backend, "pool_usage")
    room = PoolRoom(backend)
    room.fits("disks", 1)
    monkeypatch.setattr(pool_room, "TRUSTED_S", -1)

    room.fits("disks", 1)

    assert asked.call_count == 2


def test_an_unknown_pool_is_an_error_not_a_remembered_zero(backend):
    with pytest.raises(NotFound):
        PoolRoom(backend).fits("missing", 1)
