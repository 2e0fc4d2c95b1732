"""A private ZooKeeper server for a local cluster or a test, run from Debian's jars.

Debian's ``zookeeper`` package ships the jars but no service, so the server is
started here with its own configuration, data and log under one directory; a
later process can find it again from that directory to stop it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pvc.cli.localcluster.processes import (
    free_port,
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


def ruok(port: int, timeout: float = 0.5) -> bool:
    """Whether something on port answers ZooKeeper's liveness probe, which a port that
    merely accepts connections does not."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"ruok")
            reply = b""
            while chunk := sock.recv(16):
                reply += chunk
    except OSError:
        return False
    return reply == b"imok"


class ZooKeeperServer:
    """One standalone ZooKeeper server listening on loopback only."""

    def __init__(self, directory: Path, port: int | None = None, tick_ms: int = 500) -> None:
        """tick_ms bounds client session timeouts to [2, 20] ticks; the default 500 ms
        allows sessions of 1-10 s, so a killed node is noticed within seconds."""
        # Absolute, because the JVM runs with the directory as its working directory.
        self.directory = Path(directory).absolute()
        self._port = port if port is not None else free_port()
        self.tick_ms = tick_ms

    @classmethod
    def attach(cls, directory: Path) -> ZooKeeperServer:
        """The server previously started in directory, read back from its zoo.cfg."""
        directory = Path(directory)
        settings = _read_cfg(directory / "conf" / "zoo.cfg")
        return cls(directory, int(settings["clientPort"]), int(settings["tickTime"]))

    @property
    def port(self) -> int:
        return self._port

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self._port}"

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
        """Start the server and return once it serves clients; on failure nothing is left running."""
        if self.running:
            raise RuntimeError(f"ZooKeeper in {self.directory} is already running (pid {self.pid})")
        if _accepts_connections(self._port):
            # Whatever listens there would answer the readiness probe in our server's place.
            raise RuntimeError(f"cannot start ZooKeeper on {self.hosts}: the port is in use")
        self._write_config()
        pid = start_detached(
            [
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
        try:
            wait_until(
                lambda: self._ready_or_dead(pid),
                timeout,
                what=f"ZooKeeper to answer on {self.hosts}",
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

    def _ready_or_dead(self, pid: int) -> bool:
        """Stop waiting as soon as the outcome is known: a failed JVM exits within a second."""
        return ruok(self._port) or not pid_alive(pid)

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
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            # ruok is how start() knows the server is up, and 3.8 disables it by default.
            "4lw.commands.whitelist=ruok,srvr,mntr,stat\n"
        )
        (self.conf_dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, FILE\n"
            "log4j.appender.FILE=org.apache.log4j.FileAppender\n"
            f"log4j.appender.FILE.File={self.log_path}\n"
            "log4j.appender.FILE.Append=true\n"
            "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n\n"
        )


def _accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
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
