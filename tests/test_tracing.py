"""OpenTelemetry traces, sent to a local OTLP/HTTP receiver started by the test: a
span per request with the GenAI attributes, a child per upstream attempt (a retry
shows as two), the client's traceparent continued and passed upstream."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import RunningGateway, upstream_config, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, prefix: str) -> list[Any]:
        return [span for span in self.spans if span.name.startswith(prefix)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


def attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        value = item.value
        kind = value.WhichOneof("value")
        values[item.key] = (
            list(v.string_value for v in value.array_value.values)
            if kind == "array_value"
            else getattr(value, kind)
        )
    return values


def test_spans_per_request_and_attempt(
    start_gateway: Any, upstream: FakeUpstream, receiver: Receiver
) -> None:
    config = upstream_config(upstream)
    config["otel"] = {"enabled": True, "endpoint": receiver.url, "service_name": "gw-test"}
    config["routing"] = {"retries": 1, "backoff": 0}
    gw: RunningGateway = start_gateway(config)
    upstream.push(
        Script(status=503, json={"error": {"message": "busy"}}),
        Script(json=completion("hi", USAGE)),
    )
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    reply = gw.request(
        "POST",
        "/v1/chat/completions",
        {"model": "chat-model", "messages": [{"role": "user", "content": "x"}]},
        headers={"traceparent": traceparent},
    )
    assert reply.status == 200
    upstream.push(Script(chunks=text_stream(["a", "b"], usage=USAGE)))
    streamed = gw.request(
        "POST",
        "/v1/messages",
        {
            "model": "chat-model",
            "max_tokens": 9,
            "stream": True,
            "messages": [{"role": "user", "content": "y"}],
        },
    )
    assert streamed.status == 200 and b"message_stop" in streamed.body
    wait_until(
        lambda: (
            len(receiver.named("chat chat-model")) == 2
            and len(receiver.named("chat up-model")) == 3
        )
    )

    first = next(s for s in receiver.named("chat chat-model") if s.trace_id.hex() == TRACE_ID)
    assert first.parent_span_id.hex() == CLIENT_SPAN  # continues the client's trace
    assert first.kind == first.SPAN_KIND_SERVER
    found = attributes(first)
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.request.model"] == found["gen_ai.response.model"] == "chat-model"
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (12, 5)
    assert found["gen_ai.response.finish_reasons"] == ["stop"]
    assert found["lmgate.request_id"] == reply.headers["x-request-id"]
    attempts = sorted(
        (s for s in receiver.named("chat up-model") if s.parent_span_id == first.span_id),
        key=lambda span: span.start_time_unix_nano,
    )
    assert len(attempts) == 2  # the retry shows
    failed, answered = attempts
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert attributes(failed)["error.type"] == "overloaded"
    assert answered.status.code != answered.status.STATUS_CODE_ERROR
    assert attributes(answered)["gen_ai.provider.name"] == "openai"
    # Each attempt's own context went upstream.
    sent = [r.headers.get("traceparent", "") for r in upstream.requests]
    assert sent[0] == f"00-{TRACE_ID}-{failed.span_id.hex()}-01"
    assert sent[1] == f"00-{TRACE_ID}-{answered.span_id.hex()}-01"

    stream_span = next(s for s in receiver.named("chat chat-model") if s is not first)
    assert stream_span.trace_id.hex() != TRACE_ID and not stream_span.parent_span_id
    assert attributes(stream_span)["lmgate.protocol"] == "anthropic"
    assert attributes(stream_span)["gen_ai.usage.output_tokens"] == 5


def test_sampling_at_zero_sends_nothing_but_keeps_the_callers_decision(
    start_gateway: Any, upstream: FakeUpstream, receiver: Receiver
) -> None:
    config = upstream_config(upstream)
    config["otel"] = {"enabled": True, "endpoint": receiver.url, "sample_ratio": 0}
    gw: RunningGateway = start_gateway(config)
    ask = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    assert gw.request("POST", "/v1/chat/completions", ask).status == 200
    sampled = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}
    assert gw.request("POST", "/v1/chat/completions", ask, headers=sampled).status == 200
    # Not sampled by its caller: no span, and its traceparent goes upstream as it came.
    unsampled = f"00-{'1' * 32}-{CLIENT_SPAN}-00"
    upstream.push(Script(json=completion("hi", USAGE)))
    ask = {"model": "chat-model", "messages": [{"role": "user", "content": "x"}]}
    reply = gw.request("POST", "/v1/chat/completions", ask, headers={"traceparent": unsampled})
    assert reply.status == 200 and upstream.last.headers["traceparent"] == unsampled
    wait_until(lambda: len(receiver.named("chat echo")) >= 1)
    gw.stop()  # flushes whatever is left
    assert not receiver.named("chat chat-model") and not receiver.named("chat up-model")
    requests = [s for s in receiver.named("chat echo") if s.kind == s.SPAN_KIND_SERVER]
    assert [s.trace_id.hex() for s in requests] == [TRACE_ID]
