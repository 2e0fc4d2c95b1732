"""A private ZooKeeper server for a local cluster or a test, run from Debian's jars.

Debian's ``zookeeper`` package ships the jars but no service, so the server is
started here with its own configuration, data and log under one directory; a
later process can find it again from that directory to stop it.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pvc.cli.localcluster.processes import (
    free_port,
    kill_pid,
    live_pid,
    log_tail,
    pid_alive,
    start_detached,
    stop_pid,
    wait_until,
)

JARS = (
    "/usr/share/java/zookeeper.jar",
    # ZooKeeper logs through slf4j; without a binding it would log nothing at all.
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
)
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def ruok(port: int, timeout: float = 0.5, address: str = "127.0.0.1") -> bool:
    """Whether something on port answers ZooKeeper's liveness probe, which a port that
    merely accepts connections does not."""
    return four_letter_word("ruok", address, port, timeout) == "imok"


def four_letter_word(word: str, address: str, port: int, timeout: float = 0.5, netns: str | None = None) -> str:
    """ZooKeeper's answer to `word` (``ruok``, ``srvr``), '' if none. With `netns`, asked from inside that
    network namespace (bash's /dev/tcp), so a server whose link is cut still answers its own namespace."""
    if netns:
        script = f'exec 3<>/dev/tcp/{address}/{port} && printf {word} >&3 && cat <&3'
        try:
            result = subprocess.run(["ip", "netns", "exec", netns, "timeout", str(timeout), "bash", "-c", script],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout if result.returncode == 0 else ""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return ""
    return reply.decode(errors="replace")


def server_mode(srvr_answer: str) -> str | None:
    """``leader``, ``follower`` or ``standalone`` from a ``srvr`` answer; None while the server does not serve
    (no quorum, or no answer)."""
    for line in srvr_answer.splitlines():
        if line.startswith("Mode:"):
            return line.partition(":")[2].strip()
    return None


@dataclass(frozen=True)
class Peer:
    """One server of an ensemble as its peers reach it: its myid, address and quorum and election ports."""
    myid: int
    address: str
    quorum_port: int
    election_port: int

    @property
    def line(self) -> str:
        return f"server.{self.myid}={self.address}:{self.quorum_port}:{self.election_port}"


class ZooKeeperServer:
    """One ZooKeeper server: standalone on loopback by default; with `ensemble`, the server `myid` of it, and
    with `netns`, run inside that network namespace and listening on `address` there."""

    def __init__(self, directory: Path, port: int | None = None, tick_ms: int = 500, address: str = "127.0.0.1",
                 netns: str | None = None, myid: int = 1, ensemble: Sequence[Peer] = ()) -> None:
        """tick_ms bounds client session timeouts to [2, 20] ticks; the default 500 ms
        allows sessions of 1-10 s, so a killed node is noticed within seconds."""
        # Absolute, because the JVM runs with the directory as its working directory.
        self.directory = Path(directory).absolute()
        self._port = port if port is not None else free_port(address)
        self.tick_ms = tick_ms
        self.address = address
        self.netns = netns
        self.myid = myid
        self.ensemble = tuple(ensemble)

    @classmethod
    def attach(cls, directory: Path) -> ZooKeeperServer:
        """The server previously started in directory, read back from its zoo.cfg (a standalone one; a
        cluster rebuilds an ensemble's servers from its own state)."""
        directory = Path(directory)
        settings = _read_cfg(directory / "conf" / "zoo.cfg")
        return cls(directory, int(settings["clientPort"]), int(settings["tickTime"]),
                   settings.get("clientPortAddress", "127.0.0.1"))

    @property
    def port(self) -> int:
        return self._port

    @property
    def hosts(self) -> str:
        return f"{self.address}:{self._port}"

    def ask(self, word: str, timeout: float = 1.0) -> str:
        """The server's answer to a four-letter word, asked from its own network namespace."""
        return four_letter_word(word, self.address, self._port, timeout, self.netns)

    @property
    def mode(self) -> str | None:
        """``leader``, ``follower`` or ``standalone`` while it serves clients, else None."""
        return server_mode(self.ask("srvr"))

    @property
    def conf_dir(self) -> Path:
        return self.directory / "conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "zookeeper.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / "zookeeper.pid"

    @property
    def pid(self) -> int | None:
        return live_pid(self.pid_path, str(self.conf_dir / "zoo.cfg"))

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it serves clients; on failure nothing is left running. A server of
        an ensemble serves once a quorum of its peers runs: start them all with `launch`, then `wait_serving`."""
        self.wait_serving(self.launch(), timeout)

    def launch(self) -> int:
        """Start the JVM and return its pid at once."""
        if self.running:
            raise RuntimeError(f"ZooKeeper in {self.directory} is already running (pid {self.pid})")
        if not self.netns and _accepts_connections(self.address, self._port):
            # Whatever listens there would answer the readiness probe in our server's place.
            raise RuntimeError(f"cannot start ZooKeeper on {self.hosts}: the port is in use")
        self._write_config()
        in_netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        return start_detached(
            [
                *in_netns,
                "java",
                "-Xmx256m",
                "-cp",
                ":".join((str(self.conf_dir), *JARS)),
                MAIN_CLASS,
                str(self.conf_dir / "zoo.cfg"),
            ],
            self.log_path,
            pid_path=self.pid_path,
            cwd=self.directory,
        )

    def wait_serving(self, pid: int, timeout: float = 30.0) -> None:
        """Until the server started as `pid` serves clients; on failure it is stopped."""
        try:
            wait_until(
                lambda: self._ready_or_dead(pid),
                timeout,
                interval=0.2 if self.netns else 0.05,
                what=f"ZooKeeper to serve on {self.hosts}",
            )
            if not pid_alive(pid):
                raise RuntimeError("the java process exited")
        except BaseException as error:
            stop_pid(pid, timeout=5.0)
            self.pid_path.unlink(missing_ok=True)
            if isinstance(error, (TimeoutError, RuntimeError)):
                raise RuntimeError(
                    f"ZooKeeper failed to start ({error}); last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                ) from error
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if it runs; its data stays in the directory."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, timeout)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a power cut would; its data stays in the directory."""
        pid = self.pid
        if pid is not None:
            kill_pid(pid)
        self.pid_path.unlink(missing_ok=True)

    def _ready_or_dead(self, pid: int) -> bool:
        """Stop waiting as soon as the outcome is known: a failed JVM exits within a second."""
        if not self.ensemble:
            return ruok(self._port, address=self.address) or not pid_alive(pid)
        # ruok answers before a quorum forms; srvr names a mode only once the server serves.
        return self.mode is not None or not pid_alive(pid)

    def _write_config(self) -> None:
        data_dir = self.directory / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "zoo.cfg").write_text(
            f"tickTime={self.tick_ms}\n"
            "initLimit=10\n"
            "syncLimit=5\n"
            f"dataDir={data_dir}\n"
            f"clientPort={self._port}\n"
            f"clientPortAddress={self.address}\n"
            "admin.enableServer=false\n"
            # Every daemon of a local cluster connects from one address; the default cap of 60 connections an
            # address would refuse the nodes of a cluster of more than about 55.
            "maxClientCnxns=0\n"
            # ruok is how start() knows the server is up, and 3.8 disables it by default; wchc (watches by
            # session) shows which znodes one daemon watches.
            "4lw.commands.whitelist=ruok,srvr,mntr,stat,wchc\n"
            + "".join(f"{peer.line}\n" for peer in self.ensemble)
        )
        if self.ensemble:
            (data_dir / "myid").write_text(f"{self.myid}\n")
        (self.conf_dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, FILE\n"
            "log4j.appender.FILE=org.apache.log4j.FileAppender\n"
            f"log4j.appender.FILE.File={self.log_path}\n"
            "log4j.appender.FILE.Append=true\n"
            "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n\n"
        )


def _accepts_connections(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _read_cfg(path: Path) -> dict[str, str]:
    settings = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            settings[key.strip()] = value.strip()
    return settings
