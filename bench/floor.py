"""What lmgate's own work costs, against the floor of its HTTP stack, in one run.

    python bench/floor.py [--rounds 2] [--seconds 4]

The floor is a pass-through on lmgate's own server and client (uvicorn with uvloop and
lmgate's GuardedProtocol in, lmgate's upstream Pool out): it reads the request's body,
posts it to the upstream, and answers with the upstream's bytes, streamed or not. It
parses no JSON, checks nothing, records nothing. The gateway does all of that on the
same stack (bench/bench.yaml, SQLite store and metrics on). Each is alone on CPU 0,
the upstream and wrk on CPU 1, in A B B A rounds; the table gives the best requests/s
and the CPU per request (from /proc), whose difference is lmgate's own work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    arguments,
    cpu_seconds,
    free_port,
    have_wrk,
    stop,
    wait_listening,
    wait_ready,
)
from run import BODY, STREAM_BODY, pinned, serve_bench, start_upstream, wrk

HERE = Path(__file__).resolve().parent
_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}


def serve_floor(port: int, upstream_port: int) -> None:
    import uvicorn

    from lmgate.providers.client import Pool

    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    pool: Pool | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal pool
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if pool is None:
            pool = Pool(256, 10.0, proxy="direct")
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        response = await pool.request("POST", url, _HEADERS, b"".join(chunks))
        headers = [(b"content-type", response.content_type.encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if "event-stream" in response.content_type:
            while chunk := await response.read_chunk(65536):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": await response.read()})
        response.release()

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop",
                http="lmgate.web.server:GuardedProtocol", log_level="warning")  # fmt: skip


def main() -> int:
    args = arguments(__doc__, rounds=2).parse_args()
    if not have_wrk():
        return 2
    up_port = free_port()
    upstream = start_upstream(up_port)
    store = tempfile.mkdtemp(prefix="lmgate-floor-")
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port),
           "BENCH_STORE_URL": f"sqlite:///{store}/lmgate.db"}  # fmt: skip
    floor_port, gateway_port = free_port(), free_port()
    floor = subprocess.Popen(
        pinned(0, [sys.executable, __file__, "--serve", str(floor_port), str(up_port)])
    )
    gateway = serve_bench(gateway_port, env)
    pids = {"floor": floor.pid, "gateway": gateway.pid}
    try:
        wait_listening(up_port)
        wait_listening(floor_port)
        wait_ready(f"http://127.0.0.1:{gateway_port}/ready")
        urls = {
            "direct": f"http://127.0.0.1:{up_port}/v1/chat/completions",
            "floor": f"http://127.0.0.1:{floor_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        }
        for name in ("floor", "gateway"):
            for body in (BODY, STREAM_BODY):
                wrk(urls[name], body, 16, 1)  # warm-up
        best: dict[tuple[str, str], float] = {}
        cpu: dict[tuple[str, str], float] = {}
        order = ["direct", "floor", "gateway", "gateway", "floor", "direct"]
        for _ in range(args.rounds):
            for load, body in (("chat", BODY), ("stream", STREAM_BODY)):
                for name in order:
                    before = cpu_seconds(pids[name]) if name in pids else 0.0
                    rps = wrk(urls[name], body, 16, args.seconds)["rps"]
                    if name in pids:
                        used = (cpu_seconds(pids[name]) - before) / (rps * args.seconds)
                        cpu[name, load] = min(cpu.get((name, load), used), used)
                    best[name, load] = max(best.get((name, load), 0.0), rps)
        print("\nc=16, best of each; CPU per request from /proc (the gateway's includes its store)")
        print(
            "  load   | direct rps | floor rps (share) | gateway rps (share) | floor us | gateway us"
        )
        for load in ("chat", "stream"):
            direct = best["direct", load]
            floor_rps, gateway_rps = best["floor", load], best["gateway", load]
            print(
                f"  {load:6} | {direct:10,.0f} | {floor_rps:7,.0f} ({floor_rps / direct:.3f})"
                f"   | {gateway_rps:7,.0f} ({gateway_rps / direct:.3f})     |"
                f" {cpu['floor', load] * 1e6:8.0f} | {cpu['gateway', load] * 1e6:10.0f}"
            )
    finally:
        stop(floor, gateway, upstream)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_floor(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
