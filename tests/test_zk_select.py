"""The poll(2)-based select that PVC's ZooKeeper sessions use keeps `select.select`'s contract."""
import socket

import pytest

from pvc.zk_select import poll_select


def test_poll_select_reports_what_is_ready_and_refuses_a_closed_socket():
    reader, writer = socket.socketpair()
    try:
        assert poll_select([reader], [writer], [], 0) == ([], [writer], [])
        writer.send(b"x")
        assert poll_select([reader, writer], [], [], 0) == ([reader], [], [])
        assert poll_select([reader.fileno()], [], [], 0) == ([reader.fileno()], [], [])
    finally:
        reader.close()
        writer.close()
    with pytest.raises(TypeError, match="Invalid file descriptor"):
        poll_select([reader], [], [], 0)
    with pytest.raises(ValueError):
        poll_select([], [], [], -1)
