"""OpenTelemetry traces (``otel.enabled``), sent as OTLP/HTTP by the SDK's batch
processor, on its own thread.

One span per request (kind SERVER, a child of the client's W3C ``traceparent``
when it sends one), with the GenAI semantic conventions' attributes, and one child
span per upstream attempt (kind CLIENT), so retries and fallbacks show; each
attempt's context goes upstream as its ``traceparent``. The ``Meter`` of a request
drives its span: the router tells it of every attempt, and its finished usage row
says how the request ended. Off, nothing here is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lmgate.accounts.store import UsageRecord
from lmgate.config import ConfigError, OtelConfig
from lmgate.providers.http import TRACE_HEADERS

if TYPE_CHECKING:
    from lmgate.errors import GatewayError
    from lmgate.routing.catalog import Deployment

_FIELDS = list(UsageRecord.__slots__)
_REQUESTED, _MODEL, _DEPLOYMENT, _STATUS, _ERROR = map(
    _FIELDS.index, ("requested_model", "model", "deployment", "status", "error_type")
)
_INPUT, _OUTPUT, _CACHED, _COST, _REQUEST_ID = map(
    _FIELDS.index, ("input_tokens", "output_tokens", "cached_tokens", "cost", "request_id")
)


class Tracing:
    def __init__(self, config: OtelConfig) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as error:
            raise ConfigError(
                f"otel.enabled needs the OpenTelemetry SDK: pip install 'lmgate[otel]' ({error})"
            ) from None
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers))
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = self._provider.get_tracer("lmgate")
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = SpanKind
        self.error = lambda description: Status(StatusCode.ERROR, description)

    def start(self, headers: Mapping[str, str], protocol: str) -> RequestSpan | None:
        """The request's span; None when it is not sampled (then only the caller's
        own ``traceparent``, if any, goes on upstream: nothing else is paid for)."""
        traceparent = headers.get("traceparent")
        parent = self.propagator.extract(headers) if traceparent else None
        span = self.tracer.start_span("chat", context=parent, kind=self.kinds.SERVER)
        if not span.is_recording():
            if traceparent:
                TRACE_HEADERS.set({"traceparent": traceparent})
            return None
        span.set_attributes({"gen_ai.operation.name": "chat", "lmgate.protocol": protocol})
        return RequestSpan(self, span)

    def stop(self) -> None:
        """Send what is left (blocks up to the exporter's timeout: run off the loop)."""
        self._provider.shutdown()


class RequestSpan:
    """The span of one request, and of its current upstream attempt."""

    __slots__ = ("_attempt", "_span", "_tracing", "finish_reason")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self._tracing = tracing
        self._span = span
        self._attempt: Any = None
        self.finish_reason: str | None = None

    def attempt_began(self, deployment: Deployment) -> None:
        from opentelemetry import trace

        self._end_attempt()
        provider = deployment.provider
        self._attempt = attempt = self._tracing.tracer.start_span(
            f"chat {deployment.target.model}",
            context=trace.set_span_in_context(self._span),
            kind=self._tracing.kinds.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": deployment.target.model,
                "gen_ai.provider.name": provider.config.type,
                "lmgate.provider": provider.name,
                "lmgate.deployment": deployment.name,
            },
        )
        carrier: dict[str, str] = {}
        self._tracing.propagator.inject(carrier, trace.set_span_in_context(attempt))
        TRACE_HEADERS.set(carrier)

    def attempt_failed(self, error: GatewayError) -> None:
        if self._attempt is not None:
            self._attempt.set_attribute("error.type", error.kind)
            self._attempt.set_status(self._tracing.error(error.message[:200]))
            self._end_attempt()

    def upstream_ended(self) -> None:
        self._end_attempt()

    def _end_attempt(self) -> None:
        if self._attempt is not None:
            self._attempt.end()
            self._attempt = None
            TRACE_HEADERS.set(None)

    def end(self, row: tuple[Any, ...]) -> None:
        """The request ended, as its usage row says."""
        self._end_attempt()
        span = self._span
        requested = row[_REQUESTED]
        if requested:
            span.update_name(f"chat {requested}")
            span.set_attribute("gen_ai.request.model", requested)
        attributes = {
            "lmgate.request_id": row[_REQUEST_ID],
            "http.response.status_code": row[_STATUS],
            "gen_ai.usage.input_tokens": row[_INPUT],
            "gen_ai.usage.output_tokens": row[_OUTPUT],
        }
        if row[_MODEL]:
            attributes["gen_ai.response.model"] = row[_MODEL]
            attributes["lmgate.deployment"] = row[_DEPLOYMENT]
        if row[_CACHED]:
            attributes["gen_ai.usage.cache_read.input_tokens"] = row[_CACHED]
        if row[_COST] is not None:
            attributes["lmgate.cost_usd"] = row[_COST]
        if self.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", (self.finish_reason,))
        span.set_attributes(attributes)
        if row[_ERROR] is not None:
            span.set_attribute("error.type", row[_ERROR])
            span.set_status(self._tracing.error(row[_ERROR]))
        span.end()
