"""Runs health checks, each bounded in time, with at most one run of each in flight.

A Python thread cannot be killed, so a check that hangs keeps its thread; the runner then starts no second
run of that check until the first returns, and reports it failed every round meanwhile. The threads a runner
can hold are therefore at most one per check, however long a check hangs.
"""
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pvc.hookspecs import HealthCheck, HealthResult

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_FAILURE_DELTA = 10


@dataclass
class _Run:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: HealthResult | None = None
    error: str | None = None


class CheckRunner:
    """Runs `checks` every `interval` seconds on a thread of its own, reporting each outcome to `report`.

    `context_for(deadline)` builds what one run of a check is given; `report(name, result)` is called on the
    runner's thread once per check per round, whatever happened (a failed run becomes a result with the
    check's ``failure_delta``), then `after_round()`. `active()` says whether a round should run now (a
    leader-only runner)."""

    def __init__(self, checks: Mapping[str, HealthCheck], context_for: Callable[[float], Any],
                 report: Callable[[str, HealthResult], None], interval: Callable[[], float],
                 active: Callable[[], bool] = lambda: True, thread_prefix: str = "health",
                 after_round: Callable[[], None] = lambda: None):
        self.checks = dict(checks)
        self._context_for = context_for
        self._report = report
        self._interval = interval
        self._active = active
        self._prefix = thread_prefix
        self._after_round = after_round
        self._runs: dict[str, _Run] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._prefix, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval()):
            if not self._active():
                continue
            try:
                self.run_round()
            except Exception as error:
                log.warning("a health check round failed: %s", error)

    def run_round(self) -> dict[str, HealthResult]:
        """Run every check once (those still running from an earlier round are not started again), wait for
        each at most its timeout, report and return each outcome."""
        now = time.monotonic()
        waiting: dict[str, tuple[_Run, float, bool]] = {}
        for name, check in self.checks.items():
            timeout = float(getattr(check, "timeout", DEFAULT_TIMEOUT_S))
            previous = self._runs.get(name)
            if previous is not None and not previous.done.is_set():
                waiting[name] = (previous, now, False)
                continue
            run = _Run(started=now)
            self._runs[name] = run
            threading.Thread(target=self._run_one, args=(check, run, now + timeout),
                             name=f"{self._prefix}-{name}", daemon=True).start()
            waiting[name] = (run, now + timeout, True)
        outcomes: dict[str, HealthResult] = {}
        for name, (run, deadline, fresh) in waiting.items():
            check = self.checks[name]
            failure_delta = int(getattr(check, "failure_delta", DEFAULT_FAILURE_DELTA))
            if fresh and run.done.wait(max(deadline - time.monotonic(), 0)) and run.result is not None:
                outcome = run.result
            elif fresh and run.done.is_set():
                outcome = HealthResult(failure_delta, f"check {name} failed: {run.error}")
            elif fresh:
                outcome = HealthResult(failure_delta, f"check {name} failed: it did not return within "
                                                      f"{deadline - run.started:g} s")
            else:
                outcome = HealthResult(failure_delta, f"check {name} failed: its run started "
                                                      f"{time.monotonic() - run.started:.0f} s ago has not "
                                                      "returned, so no other is started")
            outcomes[name] = outcome
            try:
                self._report(name, outcome)
            except Exception as error:
                log.warning("health check %s: its outcome was not recorded: %s", name, error)
        self.rounds += 1
        self._after_round()
        return outcomes

    def _run_one(self, check: HealthCheck, run: _Run, deadline: float) -> None:
        try:
            result = check.check(self._context_for(deadline))
            if not isinstance(result, HealthResult):
                raise TypeError(f"returned {type(result).__name__}, not a HealthResult")
            run.result = HealthResult(max(0, min(100, int(result.delta))), _one_line(result.message),
                                      result.severity)
        except Exception as error:
            run.error = _one_line(str(error) or type(error).__name__)
        finally:
            run.done.set()

    def in_flight(self) -> list[str]:
        """The checks whose latest run has not returned."""
        return sorted(name for name, run in self._runs.items() if not run.done.is_set())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]
