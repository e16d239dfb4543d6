"""Prometheus metrics at ``GET /metrics`` (``metrics.enabled``, behind the admin key
when ``metrics.require_admin_key``).

Per-request figures are taken from the usage row every request ends with (the
same tuple the store writes), so a request is counted once, however it ended.
Labels are bounded: the catalog model that answered (never the name a client
asked for), its deployment and provider, the client protocol, the status class.
State (in flight and circuit per deployment, the usage queue) is read when
scraped, not kept up to date on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lmgate.store import UsageRecord

if TYPE_CHECKING:
    from lmgate.catalog import Catalog
    from lmgate.usage import UsageRecorder

_FIELDS = list(UsageRecord.__slots__)
_PROTOCOL, _MODEL, _DEPLOYMENT, _PROVIDER, _STATUS = map(
    _FIELDS.index, ("protocol", "model", "deployment", "provider", "status")
)
_INPUT, _OUTPUT, _CACHED, _LATENCY, _TTFT = map(
    _FIELDS.index, ("input_tokens", "output_tokens", "cached_tokens", "latency_ms", "ttft_ms")
)
# Seconds: LLM requests run from milliseconds (errors, cache hits) to minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, catalog: Catalog, recorder: UsageRecorder | None) -> None:
        # Imported here: a config with metrics off does not load the library.
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["protocol", "model", "deployment", "provider", "status"]
        self._requests = Counter(
            "lmgate_requests", "Requests, by how they ended.", labels, registry=self.registry
        )
        self._duration = Histogram(
            "lmgate_request_duration_seconds",
            "Whole requests, from arrival to the last byte.",
            ["protocol", "model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "lmgate_time_to_first_token_seconds",
            "Streams: from arrival to the first text, reasoning or tool call.",
            ["protocol", "model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "lmgate_tokens",
            "Tokens, by kind: input (cached included), output, cached (read from cache).",
            ["model", "provider", "kind"],
            registry=self.registry,
        )
        self.registry.register(_State(catalog, recorder))
        self._children: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def observe(self, row: tuple[Any, ...]) -> None:
        """Count one finished request, from its usage row."""
        status = row[_STATUS]
        key = (row[_PROTOCOL], row[_MODEL], row[_DEPLOYMENT], row[_PROVIDER], status // 100)
        children = self._children.get(key)
        if children is None:  # labels resolved once per combination, not per request
            protocol, model = key[0], key[1] or "-"
            provider = key[3] or "-"
            children = (
                self._requests.labels(protocol, model, key[2] or "-", provider, f"{key[4]}xx"),
                self._duration.labels(protocol, model),
                self._ttft.labels(protocol, model),
                self._tokens.labels(model, provider, "input"),
                self._tokens.labels(model, provider, "output"),
                self._tokens.labels(model, provider, "cached"),
            )
            self._children[key] = children
        requests, duration, ttft, input_tokens, output_tokens, cached = children
        requests.inc()
        duration.observe(row[_LATENCY] / 1000)
        if row[_TTFT] is not None:
            ttft.observe(row[_TTFT] / 1000)
        if row[_INPUT]:
            input_tokens.inc(row[_INPUT])
        if row[_OUTPUT]:
            output_tokens.inc(row[_OUTPUT])
        if row[_CACHED]:
            cached.inc(row[_CACHED])

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _State:
    """Gauges read at scrape time."""

    def __init__(self, catalog: Catalog, recorder: UsageRecorder | None) -> None:
        self._catalog = catalog
        self._recorder = recorder

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        in_flight = GaugeMetricFamily(
            "lmgate_deployment_in_flight", "Requests being answered.", labels=["deployment"]
        )
        circuit = GaugeMetricFamily(
            "lmgate_deployment_circuit_open",
            "1 while the deployment is cooling down after repeated failures.",
            labels=["deployment"],
        )
        now = time.monotonic()
        seen: set[str] = set()
        for entry in self._catalog.entries:
            for deployment in entry.deployments:
                name = deployment.name
                if name in seen:
                    continue
                seen.add(name)
                in_flight.add_metric([name], deployment.health.in_flight)
                circuit.add_metric([name], 1.0 if deployment.health.open_until > now else 0.0)
        yield in_flight
        yield circuit
        recorder = self._recorder
        if recorder is None:
            return
        yield GaugeMetricFamily(
            "lmgate_usage_queue_depth", "Usage records waiting to be written.", len(recorder._queue)
        )
        written = CounterMetricFamily("lmgate_usage_records", "Usage records.", labels=["outcome"])
        written.add_metric(["written"], recorder.written)
        written.add_metric(["dropped_queue_full"], recorder.dropped)
        written.add_metric(["dropped_refused"], recorder.bad)
        yield written


class MeterSink:
    """Where a ``Meter`` hands its finished row: the metrics, then the usage queue."""

    __slots__ = ("_metrics", "_recorder")

    def __init__(self, metrics: Metrics | None, recorder: UsageRecorder | None) -> None:
        self._metrics = metrics
        self._recorder = recorder

    def submit(self, row: tuple[Any, ...]) -> None:
        if self._metrics is not None:
            self._metrics.observe(row)
        if self._recorder is not None:
            self._recorder.submit(row)
