"""What usage recording costs, in instructions per request: counted by valgrind
(cachegrind without cache simulation), so no other load on the machine moves it.

Each gateway runs under valgrind four times (with and without a SQLite store; with
W requests and with W + N), so that start, shutdown and what only the first requests
do (the first key check, the first usage batch's setup) cancel out:

    per request = (instructions with W + N requests - instructions with W) / N

Requests go one at a time on one keep-alive connection. At valgrind's pace (some 50
times slower) work done per second rather than per request would count 50 times
over. So the store writes when a batch waits (store.batch_size, 2,000), as under load
at full speed, rather than every 0.5 s (at valgrind's pace, a few dozen); and an
open gateway checks the store for new keys every 600 s rather than 10 s (a check
costs about 0.01% of a request at full speed, 0.4% here).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from common import free_port, wait_ready

from lmgate.config import StoreConfig

HERE = Path(__file__).resolve().parent
BATCH = StoreConfig().batch_size  # records per usage write, by default


def available() -> bool:
    return shutil.which("valgrind") is not None


def recording_cost(
    env: dict[str, str], requests: int, body: str, warm_up: int = BATCH
) -> dict[str, float]:
    """Instructions per request of the gateway with a SQLite store ("on") and
    without ("off"). ``warm_up`` is one usage batch (store.batch_size)."""
    store_dir = tempfile.mkdtemp(prefix="lmgate-bench-vg-")
    try:
        per_request = {}
        for name in ("on", "off"):
            runs = []
            for count in (warm_up, warm_up + requests):
                store = f"sqlite:///{store_dir}/{name}-{count}.db" if name == "on" else "none"
                runs.append(_instructions(env, store, count, body))
            per_request[name] = (runs[1] - runs[0]) / requests
        return per_request
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def _instructions(env: dict[str, str], store_url: str, requests: int, body: str) -> int:
    port = free_port()
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "lmgate", "serve", "--config", str(HERE / "bench.yaml"),
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    settings = {
        "BENCH_STORE_URL": store_url,
        "BENCH_FLUSH": "60",
        "BENCH_KEY_CACHE": "600",
        "PYTHONHASHSEED": "0",
    }
    gateway = subprocess.Popen(command, env={**env, **settings}, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", timeout=300)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        for _ in range(requests):
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"the gateway answered {response.status}")
        connection.close()
        gateway.send_signal(signal.SIGTERM)  # a graceful stop writes what is queued
        _, errors = gateway.communicate(timeout=300)
    finally:
        if gateway.poll() is None:
            gateway.kill()
    match = re.search(r"I\s+refs:\s+([\d,]+)", errors)
    if not match:
        raise RuntimeError(f"no instruction count from valgrind:\n{errors[-2000:]}")
    return int(match.group(1).replace(",", ""))


if __name__ == "__main__":  # a quick look on its own: python bench/instructions.py [N]
    from run import BODY

    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "upstream.py"), str(upstream_port)])
    try:
        environment = {**os.environ, "BENCH_UPSTREAM_PORT": str(upstream_port)}
        cost = recording_cost(
            environment, int(sys.argv[1]) if len(sys.argv) > 1 else 2 * BATCH, BODY
        )
    finally:
        upstream.terminate()
    print(f"instructions per request: {cost['off']:.0f} without a store, {cost['on']:.0f} with")
    print(f"usage recording adds {(cost['on'] / cost['off'] - 1) * 100:+.1f}%")
