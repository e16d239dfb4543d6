"""Prometheus metrics at ``GET /metrics`` (``metrics.enabled``, behind the admin key
when ``metrics.require_admin_key``).

Per-request figures are taken from the usage row every request ends with (the
same tuple the store writes), so a request is counted once, however it ended;
they are kept as plain numbers and handed to the library when scraped.
Labels are bounded: the catalog model that answered (never the name a client
asked for), its deployment and provider, the client protocol, the status class,
and the key's id only with ``metrics.per_key_labels``.

What other parts count (the router's retries, fallbacks and cooldowns, the limits'
refusals, the image guard's, the usage writer's) stays a plain integer there, and
state (in flight and circuit per deployment, the usage queue) is read where it is:
both are copied into the metrics when scraped, so the hot path pays nothing for
them. With several workers (``lmgate serve --workers N``) the library's
multiprocess mode keeps each process's values in files that any process's scrape
adds up; each process then copies its own figures every second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lmgate.accounts.store import UsageRecord

if TYPE_CHECKING:
    from lmgate.accounts.limits import LocalLimiter
    from lmgate.accounts.usage import UsageRecorder
    from lmgate.media.fetch import ImageFetcher
    from lmgate.observe.dependencies import Dependency
    from lmgate.routing.catalog import Catalog
    from lmgate.routing.router import Router

log = logging.getLogger("lmgate")
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # the library's own variable
_FIELDS = list(UsageRecord.__slots__)
_PROTOCOL, _KEY, _MODEL, _DEPLOYMENT, _PROVIDER, _STATUS = map(
    _FIELDS.index, ("protocol", "key_id", "model", "deployment", "provider", "status")
)
_INPUT, _OUTPUT, _CACHED, _WRITTEN, _REASONING, _COST = map(
    _FIELDS.index,
    (
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost",
    ),
)
_LATENCY, _TTFT, _UPSTREAM, _OVERHEAD = map(
    _FIELDS.index, ("latency_ms", "ttft_ms", "upstream_ms", "overhead_ms")
)
# Input includes the cached kinds, output the reasoning.
_TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
_TOKEN_INDEXES = (_INPUT, _OUTPUT, _CACHED, _WRITTEN, _REASONING)
# Seconds: LLM requests run from milliseconds (errors, cache hits) to minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The gateway's own time per request: tens of microseconds to milliseconds.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(
        self,
        catalog: Catalog,
        recorder: UsageRecorder | None,
        router: Router,
        limiter: LocalLimiter,
        fetcher: ImageFetcher,
        per_key: bool = False,
        dependencies: Sequence[Dependency] = (),
    ) -> None:
        self.catalog = catalog  # replaced on a reload
        self.sockets: Callable[[], int] | None = None  # WebSocket connections so far
        self.sign_ins: dict[str, int] | None = None  # by outcome (oidc), counted so far
        self._sources = recorder, router, limiter, fetcher
        self._dependencies = dependencies
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self._want_per_key = per_key
        self.registry: Any = None  # made at the first scrape (or copy): see _build
        self._series: dict[tuple[Any, ...], _Series] = {}  # per usage-row labels
        self._by_key: dict[tuple[Any, ...], _Series] = {}  # per key id and status class
        self._copied: dict[tuple[Any, ...], Any] = {}  # what sync() last handed over
        self._task: asyncio.Task[None] | None = None

    # ---- per request ----------------------------------------------------------------

    def observe(self, row: tuple[Any, ...]) -> None:
        """Count one finished request, from its usage row: into plain numbers (the
        library's own objects take a lock per value, 11 us a request here), which
        ``sync`` hands to the library when scraped."""
        status = row[_STATUS]
        key = (row[_PROTOCOL], row[_MODEL], row[_DEPLOYMENT], row[_PROVIDER], status // 100)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.requests += 1
        series.duration.observe(row[_LATENCY] / 1000)
        if row[_TTFT] is not None:
            series.ttft.observe(row[_TTFT] / 1000)
        if row[_UPSTREAM] is not None:
            series.upstream.observe(row[_UPSTREAM] / 1000)
        if row[_OVERHEAD] is not None:
            series.overhead.observe(row[_OVERHEAD] / 1000)
        if row[_COST]:
            series.cost += row[_COST]
        tokens = series.tokens
        for position, index in enumerate(_TOKEN_INDEXES):
            if row[index]:
                tokens[position] += row[index]
        if self._want_per_key and row[_KEY] is not None:
            by_key = (row[_KEY], status // 100)
            series = self._by_key.get(by_key)
            if series is None:
                series = self._by_key[by_key] = _Series()
            series.requests += 1
            if row[_COST]:
                series.cost += row[_COST]
            series.tokens[0] += row[_INPUT]
            series.tokens[1] += row[_OUTPUT]

    def _sync_requests(self) -> None:
        """Hand the per-request figures to the library, added up by each metric's labels."""
        totals: dict[tuple[Any, ...], Any] = {}

        def add(metric: Any, labels: tuple[str, ...], value: Any) -> None:
            key = (metric, labels)
            known = totals.get(key)
            if known is None:
                totals[key] = value.copy() if isinstance(value, _Histogram) else value
            elif isinstance(known, _Histogram):
                known.add(value)
            else:
                totals[key] = known + value

        for (protocol, model, deployment, provider, status), series in self._series.items():
            model, deployment, provider = model or "-", deployment or "-", provider or "-"
            add(
                self._requests,
                (protocol, model, deployment, provider, f"{status}xx"),
                series.requests,
            )
            add(self._duration, (protocol, model), series.duration)
            add(self._ttft, (protocol, model), series.ttft)
            add(self._upstream, (deployment,), series.upstream)
            add(self._overhead, (protocol,), series.overhead)
            add(self._cost, (model, provider), series.cost)
            for kind, count in zip(_TOKEN_KINDS, series.tokens, strict=True):
                add(self._tokens, (model, provider, kind), count)
        if self._per_key is not None:
            requests, tokens, cost = self._per_key
            for (key, status), series in self._by_key.items():
                add(requests, (key, f"{status}xx"), series.requests)
                add(cost, (key,), series.cost)
                add(tokens, (key, "input"), series.tokens[0])
                add(tokens, (key, "output"), series.tokens[1])
        cached: dict[str, list[int]] = {}  # model -> [input, cache read]
        for (_, model, *_rest), series in self._series.items():
            both = cached.setdefault(model or "-", [0, 0])
            both[0] += series.tokens[0]
            both[1] += series.tokens[2]
        for model, (given, read) in cached.items():
            if given:
                self._cache_hit.labels(model).set(read / given)
        for (metric, labels), total in totals.items():
            if isinstance(total, _Histogram):
                self._add_histogram(metric, labels, total)
            else:
                self._add(metric, labels, total)

    def _add_histogram(self, metric: Any, labels: tuple[str, ...], total: _Histogram) -> None:
        key = (metric, labels)
        copied = self._copied.get(key)
        if copied is not None and copied.counts == total.counts:
            return
        child = metric.labels(*labels)
        before = copied.counts if copied is not None else [0] * len(total.counts)
        for index, (now, then) in enumerate(zip(total.counts, before, strict=True)):
            if now > then:
                child._buckets[index].inc(now - then)  # the library's own per-bucket counts
        child._sum.inc(total.sum - (copied.sum if copied is not None else 0.0))
        self._copied[key] = total

    # ---- what others count, and state --------------------------------------------------

    def _build(self) -> None:
        # Imported here: until the first scrape the library is not loaded (10 MB),
        # and a config with metrics off never loads it.
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # a _created series per counter doubles the page
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, about: str, labels: list[str]) -> Any:
            return Counter(name, about, labels, registry=registry)

        def histogram(name: str, about: str, labels: list[str], buckets: Any = _BUCKETS) -> Any:
            return Histogram(name, about, labels, buckets=buckets, registry=registry)

        def gauge(name: str, about: str, labels: list[str], mode: Any) -> Any:
            return Gauge(name, about, labels, registry=registry, multiprocess_mode=mode)

        self._requests = counter(
            "lmgate_requests",
            "Requests, by how they ended.",
            ["protocol", "model", "deployment", "provider", "status"],
        )
        self._duration = histogram(
            "lmgate_request_duration_seconds",
            "Whole requests, from arrival to the last byte.",
            ["protocol", "model"],
        )
        self._ttft = histogram(
            "lmgate_time_to_first_token_seconds",
            "Streams: from arrival to the first text, reasoning or tool call.",
            ["protocol", "model"],
        )
        self._upstream = histogram(
            "lmgate_upstream_time_to_first_byte_seconds",
            "From sending a request upstream to its first event, for the answering attempt.",
            ["deployment"],
        )
        self._overhead = histogram(
            "lmgate_overhead_seconds",
            "The gateway's own time per request: its duration minus the upstream's.",
            ["protocol"],
            _OVERHEAD_BUCKETS,
        )
        self._tokens = counter(
            "lmgate_tokens",
            "Tokens by kind: input (cached included), output (reasoning included), "
            "cache_read, cache_write, reasoning.",
            ["model", "provider", "kind"],
        )
        self._cost = counter(
            "lmgate_cost_usd", "Cost of the requests with a price.", ["model", "provider"]
        )
        self._retries = counter(
            "lmgate_retries", "Attempts after a failed one, by deployment tried.", ["deployment"]
        )
        self._fallbacks = counter(
            "lmgate_fallbacks", "Times a model gave up and the next was tried.", ["model"]
        )
        self._cooldowns = counter(
            "lmgate_cooldowns", "Circuits opened after repeated failures.", ["deployment"]
        )
        self._upstream_errors = counter(
            "lmgate_upstream_errors",
            "Failed upstream attempts, by deployment and kind (upstream, timeout, rate_limit…).",
            ["deployment", "kind"],
        )
        self._refusals = counter(
            "lmgate_limit_refusals", "Requests refused by a key's limit.", ["limit"]
        )
        self._guarded = counter(
            "lmgate_image_fetch_refusals",
            "Image URLs refused by the address guard (private, loopback, link-local).",
            [],
        )
        self._records = counter("lmgate_usage_records", "Usage records.", ["outcome"])
        self._in_flight = gauge(
            "lmgate_deployment_in_flight", "Requests being answered.", ["deployment"], "livesum"
        )
        self._circuit = gauge(
            "lmgate_deployment_circuit_open",
            "1 while the deployment is cooling down after repeated failures.",
            ["deployment"],
            "livemax",
        )
        self._queue = gauge(
            "lmgate_usage_queue_depth", "Usage records waiting to be written.", [], "livesum"
        )
        self._cache_hit = gauge(
            "lmgate_cache_hit_ratio",
            "Input tokens read from the upstream's prompt cache, of all input tokens, since start.",
            ["model"],
            "liveall",
        )
        self._affinity = counter(
            "lmgate_session_affinity_lookups",
            "Sessions looked up for the deployment of their last turn (hit: it was known).",
            ["outcome"],
        )
        self._restored = counter(
            "lmgate_reasoning_restored",
            "Turns whose reasoning a client dropped, given back from what lmgate kept.",
            [],
        )
        self._sockets = counter(
            "lmgate_responses_websockets",
            "Connections to the Responses API over WebSocket (each serves many responses).",
            [],
        )
        self._sign_ins = counter(
            "lmgate_sign_ins",
            "Sign-ins with the OpenID provider (dashboard and lmgate login), by outcome: "
            "ok, refused, provider_down.",
            ["outcome"],
        )
        self._dependency_errors = counter(
            "lmgate_dependency_errors",
            "Failed calls to a service lmgate depends on (store, redis).",
            ["dependency"],
        )
        self._dependency_up = gauge(
            "lmgate_dependency_up",
            "1 while the dependency answered its last call, 0 after it failed.",
            ["dependency"],
            "livemin",
        )
        self._per_key: Any = None
        if self._want_per_key:
            self._per_key = (
                counter("lmgate_key_requests", "Requests per API key id.", ["key", "status"]),
                counter("lmgate_key_tokens", "Tokens per API key id.", ["key", "kind"]),
                counter("lmgate_key_cost_usd", "Cost per API key id.", ["key"]),
            )

    def sync(self) -> None:
        """Copy the other parts' counts and state into the metrics."""
        if self.registry is None:
            self._build()
        catalog = self.catalog
        recorder, router, limiter, fetcher = self._sources
        self._sync_requests()
        now = time.monotonic()
        seen: set[str] = set()
        for entry in catalog.entries:
            for deployment in entry.deployments:
                name = deployment.name
                if name in seen:
                    continue
                seen.add(name)
                self._in_flight.labels(name).set(deployment.health.in_flight)
                self._circuit.labels(name).set(1 if deployment.health.open_until > now else 0)
        named = {"retry": self._retries, "fallback": self._fallbacks, "cooldown": self._cooldowns}
        for (what, name), count in list(router.counts.items()):
            self._add(named[what], (name,), count)
        for labels, count in list(router.errors.items()):
            self._add(self._upstream_errors, labels, count)
        for limit, count in list(limiter.refused.items()):
            self._add(self._refusals, (limit,), count)
        self._add(self._guarded, (), fetcher.refused)
        if router.affinity is not None:
            self._add(self._affinity, ("hit",), router.affinity.hits)
            self._add(self._affinity, ("miss",), router.affinity.misses)
        self._add(self._restored, (), router.reasoning.restored)
        if self.sockets is not None:
            self._add(self._sockets, (), self.sockets())
        for outcome, count in list((self.sign_ins or {}).items()):
            self._add(self._sign_ins, (outcome,), count)
        for dependency in self._dependencies:
            self._add(self._dependency_errors, (dependency.name,), dependency.errors)
            self._dependency_up.labels(dependency.name).set(1 if dependency.up else 0)
        if recorder is not None:
            self._queue.set(len(recorder._queue))
            for outcome, count in (
                ("written", recorder.written),
                ("dropped_queue_full", recorder.dropped),
                ("dropped_refused", recorder.bad),
            ):
                self._add(self._records, (outcome,), count)

    def _add(self, counter: Any, labels: tuple[str, ...], total: float) -> None:
        """Bring ``counter`` up to a total counted elsewhere."""
        key = (counter, labels)
        delta = total - self._copied.get(key, 0)
        if delta > 0 or key not in self._copied:
            child = counter.labels(*labels) if labels else counter
            child.inc(delta)
            self._copied[key] = total

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        self.sync()
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)
        return generate_latest(everyone)

    # ---- several workers ---------------------------------------------------------------

    async def start(self) -> None:
        if self.multiprocess:
            self._task = asyncio.create_task(self._copy_every_second())

    async def _copy_every_second(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                self.sync()
            except Exception:  # a bug here must not stop the copies (nor the worker)
                log.exception("could not copy this worker's metrics")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sync()  # the counts of this process's last second
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # its live gauges leave the sums


class _Histogram:
    """Observations as the library keeps them: a count per bucket (the last one +Inf)
    and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # its bucket: value <= bound
        self.sum += value

    def copy(self) -> _Histogram:
        copied = _Histogram(self.bounds)
        copied.counts, copied.sum = list(self.counts), self.sum
        return copied

    def add(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum


class _Series:
    """One combination of a usage row's labels: its figures so far."""

    __slots__ = ("cost", "duration", "overhead", "requests", "tokens", "ttft", "upstream")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = _Histogram(_BUCKETS)
        self.ttft = _Histogram(_BUCKETS)
        self.upstream = _Histogram(_BUCKETS)
        self.overhead = _Histogram(_OVERHEAD_BUCKETS)
        self.cost = 0.0
        self.tokens = [0] * len(_TOKEN_KINDS)


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
