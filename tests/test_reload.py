"""Reloading the config without a restart: ``POST /admin/reload`` and SIGHUP (one
process, and ``--workers 2``) add models and remove keys for new requests while a
stream in flight finishes on what it started with; a broken file is refused whole."""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.accounts import ADMIN, HI, admin
from tests.support.fakes.upstream import FakeUpstream, Script, text_stream
from tests.support.gateway import (
    API_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    Served,
    upstream_config,
    wait_until,
)

OTHER_KEY = "second-client-key"


def team_config(upstream: FakeUpstream) -> dict[str, Any]:
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["server"]["api_keys"] = [API_KEY, OTHER_KEY]
    config["store"] = {"url": "none"}
    return config


def changed(config: dict[str, Any]) -> dict[str, Any]:
    """The config with a model more, the first client key gone, the upstream's
    provider changed (so it is replaced), and a restart-only setting changed."""
    new = copy.deepcopy(config)
    new["models"].append({"id": "added-model", "provider": "up", "model": "up-added"})
    new["server"]["api_keys"] = [OTHER_KEY]
    new["providers"]["up"]["timeouts"]["idle"] = 2
    new["server"]["max_body_mb"] = 2
    return new


def model_ids(gw: RunningGateway, key: str) -> list[str]:
    return [model.id for model in gw.client(key).models.list()]


def test_admin_reload_under_a_running_stream(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "lmgate.yaml"
    config = team_config(upstream)
    gw = start_gateway(config, path=path)
    pieces = [f"w{n} " for n in range(8)]
    upstream.push(Script(chunks=text_stream(pieces), chunk_delay=0.1))
    stream = gw.client(API_KEY).chat.completions.create(
        model="chat-model", messages=HI, stream=True
    )
    chunks = iter(stream)
    first = next(chunks)  # the stream is under way, on the key and provider being removed
    path.write_bytes(orjson.dumps(changed(config)))
    status, body = admin(gw, "POST", "/admin/reload")
    assert status == 200, body
    assert "added-model" in body["models"]
    assert body["restart_needed"] == ["server.max_body_mb"]
    text = "".join(c.choices[0].delta.content or "" for c in [first, *chunks] if c.choices)
    assert text == "".join(pieces)  # it finished on what it started with
    assert "added-model" in model_ids(gw, OTHER_KEY)
    reply = gw.client(OTHER_KEY).chat.completions.create(model="added-model", messages=HI)
    assert reply.choices[0].message.content
    assert upstream.last.body["model"] == "up-added"
    with pytest.raises(openai.AuthenticationError):
        gw.client(API_KEY).models.list()
    status, shown = admin(gw, "GET", "/admin/config")
    assert status == 200 and shown["loaded_at"] > time.time() - 60
    text = orjson.dumps(shown).decode()
    assert UPSTREAM_KEY not in text and ADMIN not in text and OTHER_KEY not in text
    assert shown["config"]["providers"]["up"]["api_key"] == "[redacted]"
    assert shown["config"]["server"]["max_body_mb"] == 1  # the running value, until a restart
    assert any(model["id"] == "added-model" for model in shown["config"]["models"])


def test_a_broken_file_is_refused_with_all_its_errors(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "lmgate.yaml"
    gw = start_gateway(team_config(upstream), path=path)
    broken = team_config(upstream)
    broken["models"].append({"id": "orphan", "provider": "nowhere"})
    broken["routing"]["retries"] = -1
    broken["server"]["timeouts"] = {"keepalive": 3}
    path.write_bytes(orjson.dumps(broken))
    status, body = admin(gw, "POST", "/admin/reload")
    assert status == 400, body
    message = body["error"]["message"]
    assert "running config stays" in message
    for problem in ("nowhere", "routing.retries", "keepalive"):
        assert problem in message, message
    assert body["error"]["code"] == "invalid_config"
    path.write_text("")  # caught half-written by an editor: no models at all
    status, body = admin(gw, "POST", "/admin/reload")
    assert status == 400 and "no models" in body["error"]["message"], body
    assert "chat-model" in model_ids(gw, API_KEY)  # still the old config
    assert gw.client(API_KEY).chat.completions.create(model="echo", messages=HI).choices


def test_reload_needs_the_admin_key(start_gateway: Any, upstream: FakeUpstream) -> None:
    gw = start_gateway(team_config(upstream))
    assert gw.request("POST", "/admin/reload", api_key=API_KEY).status == 403
    status, body = admin(gw, "POST", "/admin/reload")  # no file: nothing to read again
    assert status == 400 and "nothing to read again" in body["error"]["message"]


def _wait_for_model(served: Served, model: str, key: str, times: int = 1) -> None:
    """Until ``times`` answers in a row (any worker's) list ``model``."""
    in_a_row = 0
    deadline = time.monotonic() + 20
    while in_a_row < times:
        assert time.monotonic() < deadline, f"{model} never listed {times} times in a row"
        status, body = served.request(
            "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        listed = status == 200 and model in [m["id"] for m in orjson.loads(body)["data"]]
        in_a_row = in_a_row + 1 if listed else 0
        if not listed:
            time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_and_a_broken_file_leaves_it_running(
    serve: Any, upstream: FakeUpstream, tmp_path: Path, workers: int
) -> None:
    path = tmp_path / "lmgate.yaml"
    config = team_config(upstream)
    path.write_bytes(orjson.dumps(config))
    served = serve("--config", str(path), "--workers", str(workers))
    output = Output(served)
    pieces = [f"w{n} " for n in range(8)]
    upstream.push(Script(chunks=text_stream(pieces), chunk_delay=0.1))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key=API_KEY)
    chunks = iter(client.chat.completions.create(model="chat-model", messages=HI, stream=True))
    first = next(chunks)  # under way, on the key being removed
    path.write_bytes(orjson.dumps(changed(config)))
    served.process.send_signal(signal.SIGHUP)
    _wait_for_model(served, "added-model", OTHER_KEY, times=10)
    text = "".join(c.choices[0].delta.content or "" for c in [first, *chunks] if c.choices)
    assert text == "".join(pieces)  # it finished on what it started with
    client.close()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert served.request("GET", "/v1/models", headers=auth)[0] == 401
    broken = changed(config)
    broken["models"].append({"id": "orphan", "provider": "nowhere"})
    path.write_bytes(orjson.dumps(broken))
    served.process.send_signal(signal.SIGHUP)
    text = output.until("config reload refused")
    assert "nowhere" in text and text.count("config reloaded from") == workers, text
    assert served.process.poll() is None
    _wait_for_model(served, "added-model", OTHER_KEY, times=10)  # the running config stays


class Output:
    """What a served process has printed so far, read without blocking."""

    def __init__(self, served: Served) -> None:
        assert served.process.stdout is not None
        self.fd = served.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.text = ""

    def until(self, wanted: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while wanted not in self.text:
            assert time.monotonic() < deadline, self.text
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                data = None
            if data:
                self.text += data.decode(errors="replace")
            else:
                time.sleep(0.05)
        return self.text


def test_a_dead_worker_is_replaced(serve: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "lmgate.yaml"
    path.write_bytes(orjson.dumps(team_config(upstream)))
    served = serve("--config", str(path), "--workers", "2")

    def workers() -> list[int]:
        children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        # The supervisor's own helper (multiprocessing's resource tracker) is no worker.
        return [pid for pid in pids if b"lmgate" in _cmdline(pid) or b"spawn" in _cmdline(pid)]

    wait_until(lambda: len(workers()) >= 2)
    before = workers()
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(workers()) >= 2 and before[0] not in workers(), timeout=30)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    wait_until(lambda: served.request("GET", "/ready")[0] == 200)
    for _ in range(10):
        status, _body = served.request(
            "POST", "/v1/chat/completions", {"model": "echo", "messages": HI}, auth
        )
        assert status == 200


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
