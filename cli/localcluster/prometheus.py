"""A real Prometheus server (Debian's ``prometheus``) scraping a local cluster's coordinators, with the alert
rules of contrib/monitoring loaded: what `pvc-local up --monitoring` starts and the monitoring tests query."""
import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from pvc.cli.localcluster.processes import free_port, kill_pid, live_pid, log_tail, start_detached, wait_until

MONITORING = Path(__file__).resolve().parents[2] / "contrib" / "monitoring"
"""contrib/monitoring of this checkout (the package maps cli/ to pvc.cli, so contrib/ is beside cli/)."""
SCRAPE_INTERVAL_S = 1
RULES_FILE = "pvc-alerts.yml"


class LocalPrometheus:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def settings(self) -> dict[str, Any]:
        path = self.directory / "prometheus.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def address(self) -> str | None:
        port = self.settings.get("port")
        return f"127.0.0.1:{port}" if port else None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return live_pid(self.directory / "prometheus.pid", str(self.directory / "prometheus.yml"))

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, targets: list[str], timeout: float = 30.0) -> None:
        """Write prometheus.yml (scraping `targets` every second, the alert rules loaded) and start the
        server on a free loopback port; return once it is ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(MONITORING / RULES_FILE, self.directory / RULES_FILE)
        port = self.settings.get("port") or free_port()
        config = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                             "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
                  "rule_files": [RULES_FILE],
                  "scrape_configs": [{"job_name": "pvc", "static_configs": [{"targets": targets}]}]}
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        (self.directory / "prometheus.json").write_text(json.dumps({"port": port}))
        start_detached(["prometheus", f"--config.file={self.directory / 'prometheus.yml'}",
                        f"--storage.tsdb.path={self.directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                       self.directory / "prometheus.log", self.directory / "prometheus.pid", cwd=self.directory)
        try:
            wait_until(self._ready, timeout, what=f"prometheus to be ready on 127.0.0.1:{port}")
        except TimeoutError as error:
            self.stop()
            raise RuntimeError(f"prometheus did not start ({error}); last lines of its log:\n"
                               f"{log_tail(self.directory / 'prometheus.log')}") from error

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        pid = self.pid
        if pid is not None:
            kill_pid(pid)
        (self.directory / "prometheus.pid").unlink(missing_ok=True)

    def query(self, expression: str, at: float | None = None) -> dict[str, Any]:
        """Prometheus's answer to an instant query (its HTTP API's JSON: ``status``, ``data`` or ``error``)."""
        parameters = {"query": expression, **({"time": str(at)} if at else {})}
        request = urllib.request.Request(f"{self.url}/api/v1/query",
                                         data=urllib.parse.urlencode(parameters).encode())
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read() or b"{}") or {"status": "error", "error": str(error)}

    def wait_for_scrapes(self, count: int = 3, timeout: float = 30.0) -> None:
        """Return once every target has been scraped up `count` times in a row."""
        def scraped() -> bool:
            answer = self.query(f"min(count_over_time(up[{count * SCRAPE_INTERVAL_S + 1}s])) >= {count} "
                                f"and min(up) == 1")
            return answer.get("status") == "success" and bool(answer["data"]["result"])
        wait_until(scraped, timeout, what="prometheus to scrape every coordinator")
