"""ZooKeeper's four-letter words (``ruok``, ``mntr``), asked of each server of a connection string directly."""
import socket
import time


def servers(hosts: str) -> list[tuple[str, int]]:
    """The servers of a kazoo connection string (``host:port,host:port/chroot``)."""
    found = []
    for entry in hosts.split("/", 1)[0].split(","):
        host, _, port = entry.strip().rpartition(":")
        found.append((host.strip("[]"), int(port)) if host else (entry.strip(), 2181))
    return found


def ask(host: str, port: int, word: str, deadline: float) -> str | None:
    """The server's answer to `word`, None when it did not answer by `deadline` (`time.monotonic`)."""
    try:
        with socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1)) as connection:
            connection.sendall(word.encode())
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None


def mntr(text: str) -> dict[str, str]:
    """``mntr``'s ``key<TAB>value`` lines as a mapping."""
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
