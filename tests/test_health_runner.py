"""Health checks run bounded in time, at most one run of each in flight: a check that hangs counts as failed
every round and holds one thread, however many rounds pass."""
import threading

from pvc.health.runner import CheckRunner
from pvc.hookspecs import HealthResult


class Hangs:
    description = "never returns until released"
    timeout = 0.2
    failure_delta = 7

    def __init__(self):
        self.release = threading.Event()
        self.runs = 0

    def check(self, context):
        self.runs += 1
        self.release.wait()
        return HealthResult.healthy()


class Healthy:
    description = "always fine"
    timeout = 1.0
    failure_delta = 5

    def check(self, context):
        return HealthResult(3, "a little wrong\nsecond line")


class Raises:
    description = "raises"
    timeout = 1.0
    failure_delta = 9

    def check(self, context):
        raise OSError("disk on fire")


def test_a_hanging_check_fails_each_round_and_holds_one_thread():
    hangs = Hangs()
    reported = []
    runner = CheckRunner({"hang": hangs, "fine": Healthy(), "raises": Raises()}, lambda deadline: None,
                         lambda name, result: reported.append((name, result)), lambda: 60)
    try:
        rounds = [runner.run_round() for _ in range(6)]
        hanging_threads = [thread for thread in threading.enumerate() if thread.name == "health-hang"]
        assert len(hanging_threads) == 1
        assert hangs.runs == 1
        assert rounds[0]["hang"].delta == 7 and "did not return within 0.2 s" in rounds[0]["hang"].message
        assert all("has not returned, so no other is started" in outcome["hang"].message for outcome in rounds[1:])
        assert rounds[-1]["fine"] == HealthResult(3, "a little wrong second line")
        assert rounds[-1]["raises"].delta == 9 and "disk on fire" in rounds[-1]["raises"].message
        assert len(reported) == 18
        assert runner.in_flight() == ["hang"]
    finally:
        hangs.release.set()
    for thread in hanging_threads:
        thread.join(5)
    after = runner.run_round()
    assert after["hang"].delta == 0 and hangs.runs == 2
