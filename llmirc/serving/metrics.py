"""Prometheus metrics of one server, named as vLLM names them with an `llmirc:` prefix.

Everything lives in the server's own CollectorRegistry, not prometheus_client's global
one: two servers in one process (tests) or a library user's own metrics never collide.
Gauges and counters are refreshed from the engine's EngineStats after every step (the
engine's counters are cumulative; the Prometheus counters get the increase). TTFT and
inter-token latency are observed by the engine thread when it hands outputs over, so they
include queueing and scheduling but not the client's network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "llmirc:"
# vLLM's buckets: TTFT from 1 ms up to minutes, inter-token latency 10 ms .. 80 s.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)

# Cumulative EngineStats fields and the counter each one feeds.
COUNTED_STATS = {
    "prompt_tokens": "prompt_tokens",
    "generation_tokens": "generation_tokens",
    "num_preemptions": "num_preemptions",
    "prefix_cache_queries": "prefix_cache_queries",
    "prefix_cache_hits": "prefix_cache_hits",
}


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r, p = self.registry, PREFIX
        self.running = Gauge(p + "num_requests_running", "Requests in the running batch.", registry=r)
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting to be scheduled.", registry=r)
        self.pages_used = Gauge(p + "kv_cache_pages_used", "KV pages in use (prefix cache included).", registry=r)
        self.pages_total = Gauge(p + "kv_cache_pages_total", "KV pages a sequence can get (scratch page excluded).",
                                 registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_perc", "Fraction of KV pages in use, 0..1.", registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first generated token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between successive outputs of a request.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to the last token.",
                             buckets=TTFT_BUCKETS, registry=r)
        self.counters = {
            "prompt_tokens": Counter(p + "prompt_tokens", "Prompt tokens of accepted requests.",
                                     registry=r),
            "generation_tokens": Counter(p + "generation_tokens", "Tokens generated.", registry=r),
            "num_preemptions": Counter(p + "num_preemptions", "Requests preempted (recomputed later).", registry=r),
            "prefix_cache_queries": Counter(p + "prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                            "cache.", registry=r),
            "prefix_cache_hits": Counter(p + "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                         registry=r),
        }
        self.finished = Counter(p + "request_success", "Requests finished, by finish reason.", ["finished_reason"],
                                registry=r)
        self._last: dict[str, int] = {k: 0 for k in COUNTED_STATS}

    def update(self, stats) -> None:
        """Refresh from an EngineStats (called by the engine thread after each step)."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.pages_used.set(stats.num_pages_used)
        self.pages_total.set(stats.num_pages_total)
        self.kv_usage.set(stats.num_pages_used / stats.num_pages_total if stats.num_pages_total else 0.0)
        for stat, name in COUNTED_STATS.items():
            now = int(getattr(stats, stat))
            if now > self._last[stat]:
                self.counters[name].inc(now - self._last[stat])
            self._last[stat] = now

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
