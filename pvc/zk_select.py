"""A kazoo handler whose `select` costs one poll(2) call.

kazoo's connection thread selects once to pick each request to send, once more before writing it and once
per answer it reads; its stock `select` builds, fills and closes an epoll selector for every one of those
(five system calls and a selector object each). Loading a cache of 10,000 VMs makes about 40,000 reads, so
that was some 160,000 epoll selectors. A poll object is built in user space and waited on with one call, and
unlike select(2) it accepts any descriptor number.
"""
import select

from kazoo.handlers.threading import SequentialThreadingHandler

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR


def poll_select(rlist: list, wlist: list, xlist: list, timeout: float | None = None) -> tuple[list, list, list]:
    """`select.select`'s contract (file objects or descriptors in, the ready ones out), served by poll(2);
    errors as kazoo's own `selector_select` raises them."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    poller = select.poll()
    masks: dict[int, int] = {}
    for fileobj in rlist:
        masks[_fd(fileobj)] = masks.get(_fd(fileobj), 0) | _READ
    for fileobj in wlist:
        masks[_fd(fileobj)] = masks.get(_fd(fileobj), 0) | _WRITE
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ready = dict(poller.poll(None if timeout is None else timeout * 1000))
    for events in ready.values():
        if events & select.POLLNVAL:
            raise ValueError("Invalid event mask or fd")
    return ([fileobj for fileobj in rlist if ready.get(_fd(fileobj), 0) & _READ],
            [fileobj for fileobj in wlist if ready.get(_fd(fileobj), 0) & _WRITE], [])


def _fd(fileobj) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise TypeError(f"Invalid file descriptor: {fd}")
    return fd


class PollingHandler(SequentialThreadingHandler):
    def select(self, *args, **kwargs):
        return poll_select(*args, **kwargs)
