"""Graceful shutdown of ``lmgate serve`` on SIGTERM/SIGINT, with streams in flight."""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import Served

HI = [{"role": "user", "content": "hi"}]
WORDS = [f"w{i} " for i in range(12)]


def start(serve: Any, upstream: FakeUpstream, tmp_path: Path, grace: float, *args: str) -> Served:
    config = {
        "server": {"shutdown_grace": grace},
        "providers": {"up": {"type": "openai", "base_url": upstream.url + "/v1"}},
        "models": [{"id": "m", "provider": "up"}],
    }
    path = tmp_path / "lmgate.yaml"
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    return serve("--config", str(path), *args)  # type: ignore[no-any-return]


class StreamInThread:
    """Streams through the OpenAI SDK in a thread; says when the first words arrived."""

    def __init__(self, served: Served) -> None:
        self.client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{served.port}/v1", api_key="-", max_retries=0
        )
        self.text = ""
        self.finish: str | None = None
        self.error: openai.APIError | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for chunk in stream:
                if chunk.choices:
                    self.text += chunk.choices[0].delta.content or ""
                    self.finish = chunk.choices[0].finish_reason or self.finish
                if self.text:
                    self.first.set()
        except openai.APIError as error:
            self.error = error
        finally:
            self.first.set()
            self.client.close()

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_streams_in_flight_finish(
    serve: Any, upstream: FakeUpstream, tmp_path: Path, workers: str, sig: signal.Signals
) -> None:
    served = start(serve, upstream, tmp_path, 10, "--workers", workers)
    upstream.push(Script(chunks=text_stream(WORDS), chunk_delay=0.1))
    stream = StreamInThread(served)
    assert stream.first.wait(10)
    served.process.send_signal(sig)
    started = time.monotonic()
    while not refused(served.port):  # new connections are turned away at once
        assert time.monotonic() - started < 3
        time.sleep(0.05)
    stream.join()
    assert stream.error is None
    assert stream.text == "".join(WORDS) and stream.finish == "stop"
    # uvicorn re-raises the signal once it is done, as the default action would end it.
    assert served.process.wait(15) in (0, -sig, 1)
    assert upstream.cancelled == 0


def test_what_outlives_the_grace_period_ends_with_an_error(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    served = start(serve, upstream, tmp_path, 1)
    upstream.push(
        Script(chunks=text_stream(WORDS), chunk_delay=0.5),  # about 7 seconds
        Script(json=completion(), delay=7),
    )
    stream = StreamInThread(served)
    assert stream.first.wait(10)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            served.request, "POST", "/v1/chat/completions", {"model": "m", "messages": HI}
        )
        while len(upstream.requests) < 2:
            time.sleep(0.01)
        served.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        stream.join()
        assert stream.error is not None and "the gateway is shutting down" in stream.error.message
        status, body = waiting.result()
    assert 0.8 < time.monotonic() - started < 3
    assert status == 503 and b"the gateway is shutting down" in body
    assert served.process.wait(10) in (0, -signal.SIGTERM)
    output = served.process.stdout.read() if served.process.stdout else ""
    assert "in-flight requests have 1s to finish" in output
    assert "Traceback" not in output
