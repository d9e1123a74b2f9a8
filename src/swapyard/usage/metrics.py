"""``GET /metrics`` in the Prometheus text format.

Counters and histograms are fed by events (house style 10): a finished request,
a swap, a load. Gauges are read from the router when scraped: queue depth, each
engine's state, memory per model (declared, estimated, measured, scheduled) and
per device (budget, used by swapyard's models, and NVML's used/total where
present).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swapyard.events import (
    EngineStateChanged,
    Event,
    RequestAdmitted,
    RequestFinished,
    SwapStarted,
)
from swapyard.process.state import EngineState

if TYPE_CHECKING:
    from swapyard.surface import RouterSurface

S = EngineState
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKS = (1, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000)
_WAIT = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOAD = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, router: RouterSurface) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("swapyard_requests", "Proxied requests", ["model", "status"],
                                registry=r)  # fmt: skip
        self.tokens = Counter("swapyard_tokens", "Tokens", ["model", "kind"], registry=r)
        self.errors = Counter("swapyard_errors", "Failed requests", ["model", "code"], registry=r)
        self.ttft = Histogram("swapyard_time_to_first_token_seconds", "Time to first token "
                              "(from arrival, waits included)", ["model"], buckets=_TTFT,
                              registry=r)  # fmt: skip
        self.tok_s = Histogram("swapyard_generation_tokens_per_second", "Generation speed",
                               ["model"], buckets=_TOKS, registry=r)  # fmt: skip
        self.wait = Histogram("swapyard_queue_wait_seconds", "Time from arrival to dispatch",
                              ["model"], buckets=_WAIT, registry=r)  # fmt: skip
        self.swaps = Counter("swapyard_swaps", "Models evicted for another", ["model", "mode"],
                             registry=r)  # fmt: skip
        self.loads = Histogram("swapyard_load_seconds", "Starting -> ready", ["model", "mode"],
                               buckets=_LOAD, registry=r)  # fmt: skip
        r.register(_Live(router))
        # Each label set's child, looked up once: prometheus' labels() validates
        # and takes a lock on every call.
        self._child = functools.cache(lambda metric, *labels: metric.labels(*labels))

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, RequestFinished):
            rec = ev.record
            self._child(self.requests, rec.model, str(rec.status)).inc()
            if rec.error:
                self._child(self.errors, rec.model, rec.error).inc()
            if rec.prompt_tokens:
                self._child(self.tokens, rec.model, "prompt").inc(rec.prompt_tokens)
            if rec.completion_tokens:
                self._child(self.tokens, rec.model, "completion").inc(rec.completion_tokens)
            if rec.ttft_s is not None:
                self._child(self.ttft, rec.model).observe(rec.ttft_s)
            if rec.tok_s is not None:
                self._child(self.tok_s, rec.model).observe(rec.tok_s)
        elif isinstance(ev, RequestAdmitted):
            self._child(self.wait, ev.model).observe(ev.waited)
        elif isinstance(ev, SwapStarted) and ev.old is not None:
            self._child(self.swaps, ev.old, ev.mode).inc()
        elif isinstance(ev, EngineStateChanged) and ev.load_s is not None:
            self._child(self.loads, ev.model, "wake" if ev.woke else "cold").observe(ev.load_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """Gauges read from one router snapshot at scrape time."""

    def __init__(self, router: RouterSurface) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        snap = self.router.snapshot()
        q = GaugeMetricFamily("swapyard_queue_depth", "Requests waiting", labels=["model"])
        inflight = GaugeMetricFamily("swapyard_in_flight", "Requests running", labels=["model"])
        state = GaugeMetricFamily("swapyard_engine_state", "1 for the engine's current state",
                                  labels=["model", "state"])  # fmt: skip
        mem = GaugeMetricFamily("swapyard_model_memory_bytes", "Memory per model",
                                labels=["model", "kind"])  # fmt: skip
        for model, m in snap.models.items():
            q.add_metric([model], m.queued)
            inflight.add_metric([model], m.in_flight)
            for st in EngineState:
                state.add_metric([model, str(st)], 1.0 if m.state is st else 0.0)
            for kind, value in m.memory.as_dict().items():
                if isinstance(value, int) and not isinstance(value, bool):
                    mem.add_metric([model, kind], value)
        dev = GaugeMetricFamily("swapyard_device_memory_bytes", "Memory per device",
                                labels=["device", "kind"])  # fmt: skip
        for d in snap.devices.values():
            dev.add_metric([d.id, "budget"], d.budget)
            dev.add_metric([d.id, "used_by_models"], d.used)
            dev.add_metric([d.id, "foreign"], d.foreign)  # held by processes not ours
        for gpu, (gpu_used, total) in self.router.device_usage().items():
            dev.add_metric([gpu, "nvml_used"], gpu_used)
            dev.add_metric([gpu, "nvml_total"], total)
        host = GaugeMetricFamily("swapyard_host_memory_sleeping_bytes",
                                 "Host RAM held by sleeping engines")  # fmt: skip
        host.add_metric([], snap.host_used)
        up = GaugeMetricFamily("swapyard_up_since_seconds", "Unix time swapyard started")
        up.add_metric([], snap.started_at)
        yield from (q, inflight, state, mem, dev, host, up)
