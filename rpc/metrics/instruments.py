"""PVC's own counters and histograms, updated where things happen (a remote call, a fence, a recovery), kept
in one registry per process that the coordinator's endpoint serves."""
import functools
import time
from typing import Any, Callable

import Pyro5.api
import Pyro5.server
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_CALLS = Counter("pvc_rpc_calls", "Remote calls answered by this coordinator, by area, method and outcome "
                    "(ok, or the error class)", ["area", "method", "outcome"], registry=REGISTRY)
RPC_DURATION = Histogram("pvc_rpc_call_duration_seconds", "Time this coordinator took to answer a remote call",
                         ["area", "method"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TASK_DURATION = Histogram("pvc_task_duration_seconds", "Time a long task (flush, ready, recover, provision) took "
                          "from its start on this leader to its end, by kind and outcome", ["kind", "state"],
                          registry=REGISTRY, buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
FENCE_DURATION = Histogram("pvc_fence_duration_seconds", "Time fencing a dead node took, by outcome",
                           ["outcome"], registry=REGISTRY, buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
RECOVERY_DURATION = Histogram("pvc_recovery_duration_seconds", "Time restarting a fenced node's VMs took",
                              registry=REGISTRY, buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
FENCES = Counter("pvc_fences", "Fencing attempts of dead nodes by this leader, by the policy chain tried and "
                 "outcome (off, isolated, failed)", ["policy", "outcome"], registry=REGISTRY)


def instrument(area_name: str, area: Any) -> Any:
    """Wrap every exposed method of a remote object so each remote call is counted and timed (the
    coordinator's own calls, on threads serving no client, are not); the wrapper is an attribute of the
    instance, which Pyro5 calls in place of the class's method."""
    for name in Pyro5.server._get_exposed_members(area, only_exposed=True)["methods"]:
        setattr(area, name, _timed(area_name, name, getattr(area, name)))
    return area


def _timed(area_name: str, method_name: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if Pyro5.api.current_context.client is None:
            return method(*args, **kwargs)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return method(*args, **kwargs)
        except Exception as error:
            outcome = type(error).__name__
            raise
        finally:
            RPC_DURATION.labels(area_name, method_name).observe(time.perf_counter() - started)
            RPC_CALLS.labels(area_name, method_name, outcome).inc()
    call._pyroExposed = True  # type: ignore[attr-defined]
    return call
