"""The engines' own routers from PyPI as data: which package, how it starts, its policies. Kept
apart from launchers.router (which starts and stops a router process) so that the engines'
capabilities (launchers.engines.base) can name their router without importing process code.

    python -c "from launchers.router_kinds import ROUTERS; print(sorted(ROUTERS))"
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class RouterKind:
    """One router package: how to start it and the policies it has (its --policy choices)."""
    name: str                         # the PyPI distribution, and what tables call it
    package: str                      # what must be importable
    module: str                       # `python -m module` starts it
    policies: tuple[str, ...]
    default_policy: str               # the router's own default (--policy)
    routed_metric: str                # its Prometheus counter of requests per worker (label "worker")

    @property
    def install(self) -> str:
        return f"pip install {self.name}"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


# The --policy choices of vllm-router 0.1.17 and sglang-router 0.3.2 (their router_args.py) that
# route plain OpenAI requests; both default to cache_aware. power_of_two is their load-aware policy
# (the less loaded of two workers picked at random). Left out: vllm-router's kv_aware (needs the
# workers' KV events over ZMQ), consistent_hash and sticky_least_loaded (key on a session header),
# sglang-router's manual (a routing key per request): our load carries none of those.
ROUTERS: dict[str, RouterKind] = {
    "vllm-router": RouterKind("vllm-router", "vllm_router", "vllm_router.launch_router",
                              ("round_robin", "power_of_two", "cache_aware", "random"), "cache_aware",
                              "vllm_router_processed_requests_total"),
    # sglang-router 0.3.2 counts per worker only in its circuit breaker's outcomes (success, failure)
    "sglang-router": RouterKind("sglang-router", "sglang_router", "sglang_router.launch_router",
                                ("round_robin", "power_of_two", "cache_aware", "random"), "cache_aware",
                                "smg_worker_cb_outcomes_total"),
}
