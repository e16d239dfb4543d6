"""Gateway vs direct upstream, measured in one run.

    python bench/run.py [--seconds 5] [--stream-requests 500]

Starts bench/upstream.py and `lmgate serve --config bench/bench.yaml` (one
worker), then drives both with wrk (non-stream requests/s and latency at
concurrency 1, 16, 64) and with a small uvloop client (stream time to first
chunk and to the end, one request at a time). What usage recording costs is CPU
per request of the gateway vs the same without a store. The gateway is pinned to CPU 0;
the upstream and the load generators to CPU 1, so the gateway's figures are one
core's. Needs wrk (apt-get install wrk). Prints a table; writes
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import instructions
import peers
import uvloop
from common import free_port, have_wrk, wait_ready

HERE = Path(__file__).resolve().parent
BODY = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say twenty words."}],
        "stream": False,
    },
    separators=(",", ":"),
)
STREAM_BODY = BODY.replace('"stream":false', '"stream":true')
MESSAGES_BODY = json.dumps(
    {
        "model": "bench",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say twenty words."}],
        "stream": True,
    },
    separators=(",", ":"),
)
RESPONSES_BODY = json.dumps(
    {"model": "bench", "input": "Say twenty words.", "store": False, "stream": False},
    separators=(",", ":"),
)
GEMINI_BODY = json.dumps(
    {"contents": [{"role": "user", "parts": [{"text": "Say twenty words."}]}]},
    separators=(",", ":"),
)
RESPONSES_STREAM_BODY = RESPONSES_BODY.replace('"stream":false', '"stream":true')
PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if PIN else command


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    """bench/upstream.py on CPU 1 (beside the load generator)."""
    return subprocess.Popen(pinned(1, [sys.executable, str(HERE / "upstream.py"), str(port)]))


def serve_bench(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """lmgate on bench.yaml, one worker on CPU 0; ``env`` holds its BENCH_ variables."""
    return subprocess.Popen(
        pinned(0, [sys.executable, "-m", "lmgate", "serve", "--config", str(HERE / "bench.yaml"),
                   "--port", str(port), "--log-level", "warning"]),
        env=env,
    )  # fmt: skip


def wrk(
    url: str, body: str, connections: int, seconds: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        for name, value in (headers or {}).items():
            script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
    try:
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        out = subprocess.run(pinned(1, command), capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"), "requests": done}


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads."""
    return sum(_cpu(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))


def side_cpu_seconds(pid: int) -> float:
    """The same for the threads other than the main one (a store's writer thread)."""
    return sum(_cpu(pid, tid) for tid in os.listdir(f"/proc/{pid}/task") if tid != str(pid))


def _cpu(pid: int, tid: str) -> float:
    # The scheduler's own count, in nanoseconds (/proc/PID/stat rounds it to 10 ms:
    # up to 1% of a round's figure).
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except FileNotFoundError:  # a thread that just ended
        return 0.0


def cpu_per_request(
    a: tuple[int, str], b: tuple[int, str], connections: int, rounds: int, seconds: int = 3
) -> tuple[list[float], list[float]]:
    """How much more CPU per request gateway ``a`` spends than ``b``, each round:
    (ratio - 1), and the part of it spent in ``a``'s threads other than the event
    loop's (the store's writer), as a share of ``b``'s CPU.

    Both are loaded at once, on the same core: whatever else the machine does in a
    round slows both alike, which alternating runs cannot promise on a noisy VM."""
    extra, side = [], []
    for _ in range(rounds):
        before = [cpu_seconds(pid) for pid, _ in (a, b)]
        side_before = side_cpu_seconds(a[0])
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda url: wrk(url, BODY, connections, seconds), (a[1], b[1])))
        time.sleep(1)  # the last usage batch is written (store.flush_interval 0.5)
        after = [cpu_seconds(pid) for pid, _ in (a, b)]
        used = [(after[i] - before[i]) / runs[i]["requests"] for i in (0, 1)]
        extra.append(used[0] / used[1] - 1)
        side.append((side_cpu_seconds(a[0]) - side_before) / runs[0]["requests"] / used[1])
    return extra, side


def recording_cost(
    start: Callable[[str], tuple[subprocess.Popen[bytes], int]],
    store_url: Callable[[int], str],
    connections: int,
    pairs: int = 6,
    rounds: int = 2,
) -> dict[str, list[float]]:
    """``cpu_per_request`` of a gateway with the store ``store_url(i)`` against one
    without, over ``pairs`` pairs of freshly started gateways (which starts first
    alternates). A process keeps its luck for life: two identical gateways differ by
    up to 3% either way, pair to pair (with one hash seed and no address randomization
    too), so a figure from one pair is one draw. ``extra``: every round's, sorted (the
    median is the figure); ``pairs``: each pair's median, sorted (the spread);
    ``side_threads``: the writer thread's share, sorted."""
    extra, side, medians = [], [], []
    for i in range(pairs):
        urls = (store_url(i), "none") if i % 2 == 0 else ("none", store_url(i))
        started = [start(url) for url in urls]
        on, off = started if i % 2 == 0 else started[::-1]
        try:
            ends = []
            for process, port in (on, off):
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wait_ready(f"http://127.0.0.1:{port}/ready")
                wrk(url, BODY, 16, 1)  # warm-up
                ends.append((process.pid, url))
            pair_extra, pair_side = cpu_per_request(ends[0], ends[1], connections, rounds)
        finally:
            for process, _ in started:
                process.terminate()
                process.wait(10)
        extra += pair_extra
        side += pair_side
        medians.append(statistics.median(pair_extra))
    return {"extra": sorted(extra), "pairs": sorted(medians), "side_threads": sorted(side)}


async def _stream_latency(
    port: int, path: str, body_text: str, word: bytes, expected: int, requests: int
) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = body_text.encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    first: list[float] = []
    total: list[float] = []
    for _ in range(requests):
        started = time.perf_counter()
        writer.write(request)
        buffer = b""
        first_at = 0.0
        while not buffer.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("connection closed mid-stream")
            buffer += data
            if not first_at and b"data:" in buffer:
                first_at = time.perf_counter()
        if buffer.count(word) != expected:
            raise RuntimeError("incomplete stream")
        first.append((first_at - started) * 1000)
        total.append((time.perf_counter() - started) * 1000)
    writer.close()
    return {
        "first_chunk_p50_ms": statistics.median(first),
        "full_stream_p50_ms": statistics.median(total),
        "full_stream_p99_ms": statistics.quantiles(total, n=100)[98],
    }


def stream_latency(
    port: int,
    path: str,
    requests: int,
    body: str = STREAM_BODY,
    word: bytes = b'"content":"word "',
    expected: int = 20,
) -> dict[str, float]:
    return uvloop.run(_stream_latency(port, path, body, word, expected, requests))


def trace_sink() -> ThreadingHTTPServer:
    """An OTLP/HTTP endpoint that takes trace exports and drops them."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--stream-requests", type=int, default=500)
    parser.add_argument(
        "--instructions",
        type=int,
        default=2 * instructions.BATCH,  # two usage batches
        help="requests per valgrind run for the recording cost in instructions (0: skip)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="only lmgate beside LiteLLM and Portkey (bench/install_peers.sh), one table",
    )
    parser.add_argument(
        "--costs-only",
        action="store_true",
        help="only what recording, metrics and tracing cost (pairs of gateways)",
    )
    args = parser.parse_args()
    if not have_wrk():
        return 2
    up_port = free_port()
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port)}
    upstream = start_upstream(up_port)
    store_dir = tempfile.mkdtemp(prefix="lmgate-bench-")
    sink = trace_sink()

    def start_gateway(
        store_url: str, metrics: bool = True, otel: bool = False, ratio: float = 1.0
    ) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = serve_bench(
            port,
            {**env, "BENCH_STORE_URL": store_url, "BENCH_METRICS": str(metrics).lower(),
             "BENCH_OTEL": str(otel).lower(), "BENCH_OTEL_PORT": str(sink.server_port),
             "BENCH_OTEL_RATIO": str(ratio)},
        )  # fmt: skip
        return process, port

    def start_for_tracing(ratio: float) -> Callable[[str], tuple[subprocess.Popen[bytes], int]]:
        # Both record usage and keep metrics on (the default config); one also traces
        # requests (all, or a sample) to a local sink: what tracing on costs.
        def start(url: str) -> tuple[subprocess.Popen[bytes], int]:
            if url == "none":
                return start_gateway(f"sqlite:///{store_dir}/untraced-{next(started_off)}.db")
            return start_gateway(url, otel=True, ratio=ratio)

        return start

    started_off = iter(range(1_000_000))

    def start_for_metrics(url: str) -> tuple[subprocess.Popen[bytes], int]:
        # recording_cost's "none" is the gateway without metrics; both record usage
        # (the default config), so this is what the metrics add to it.
        if url == "none":
            return start_gateway(f"sqlite:///{store_dir}/off-{next(started_off)}.db", False)
        return start_gateway(url, metrics=True)

    results: dict[str, Any] = {"non_stream": {}, "stream": {}, "recording": {}}
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        if args.peers:
            rig = peers.Rig(up_port, store_dir, wrk, pinned, args.seconds)
            results["peers"] = peers.run(rig)
            peers.report(results["peers"])
            (HERE / "results").mkdir(exist_ok=True)
            (HERE / "results" / "peers.json").write_text(json.dumps(results["peers"], indent=2))
            return 0
        for connections in (1, 8):
            results["recording"][connections] = {
                "cost": recording_cost(
                    start_gateway, lambda i: f"sqlite:///{store_dir}/pair-{i}.db", connections
                ),
                # Two identical gateways: how far this machine's noise goes.
                "control": recording_cost(start_gateway, lambda i: "none", connections),
            }
        # What the metrics (on by default) cost: gateways with and without.
        results["metrics"] = {
            connections: recording_cost(
                start_for_metrics, lambda i: f"sqlite:///{store_dir}/on-{i}.db", connections
            )
            for connections in (1, 8)
        }
        results["tracing"] = {
            connections: recording_cost(
                start_for_tracing(1.0),
                lambda i: f"sqlite:///{store_dir}/traced-{i}.db",
                connections,
            )
            for connections in (1, 8)
        }
        results["tracing_sampled"] = {
            connections: recording_cost(
                start_for_tracing(0.1),
                lambda i: f"sqlite:///{store_dir}/sampled-{i}.db",
                connections,
            )
            for connections in (1, 8)
        }
        if args.costs_only:
            report_costs(results)
            return 0
        gateway, gw_port = start_gateway(f"sqlite:///{store_dir}/lmgate.db")
        gateways.append(gateway)
        wait_ready(f"http://127.0.0.1:{gw_port}/ready")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        wrk(through, BODY, 16, 2)  # warm-up
        for connections in (1, 16, 64):
            results["non_stream"][connections] = {
                "direct": wrk(direct, BODY, connections, args.seconds),
                "gateway": wrk(through, BODY, connections, args.seconds),
            }
        routed = BODY.replace('"model":"bench"', '"model":"bench-routed"')
        results["router"] = {}
        for connections in (1, 16):
            # A B B A: whichever runs second is favoured on this machine; this cancels it.
            order = [("one", BODY), ("routed", routed), ("routed", routed), ("one", BODY)]
            runs = [(name, wrk(through, body, connections, args.seconds)) for name, body in order]
            results["router"][connections] = {
                label: {
                    key: statistics.mean(r[key] for n, r in runs if n == name)
                    for key in ("rps", "p50_ms", "p99_ms")
                }
                for label, name in (("one_deployment", "one"), ("routed", "routed"))
            }
        # Every client protocol against /v1/chat/completions on the same upstream, in
        # one palindrome (chat, responses, messages, gemini, then back), which cancels
        # the machine's drift. Responses is stateless (store false); with store true
        # each reply is also written.
        base = f"http://127.0.0.1:{gw_port}"
        fronts = {
            "chat": (through, BODY),
            "responses": (base + "/v1/responses", RESPONSES_BODY),
            "messages": (base + "/v1/messages", MESSAGES_BODY.replace('"stream":true', '"stream":false')),
            "gemini": (base + "/v1beta/models/bench:generateContent", GEMINI_BODY),
        }  # fmt: skip
        stored = RESPONSES_BODY.replace('"store":false', '"store":true')
        results["frontends"] = {}
        for connections in (1, 16):
            order = [*fronts, *reversed(fronts)]
            runs = [(name, wrk(*fronts[name], connections, args.seconds)) for name in order]
            row = {
                name: {
                    key: statistics.mean(r[key] for n, r in runs if n == name)
                    for key in ("rps", "p50_ms", "p99_ms")
                }
                for name in fronts
            }
            row["responses_stored"] = wrk(fronts["responses"][0], stored, connections, args.seconds)
            results["frontends"][connections] = row
        results["stream"]["responses_c1"] = stream_latency(
            gw_port, "/v1/responses", args.stream_requests, RESPONSES_STREAM_BODY,
            b'"delta":"word "',
        )  # fmt: skip
        results["stream"]["rps_c16"] = {
            "direct": wrk(direct, STREAM_BODY, 16, args.seconds)["rps"],
            "gateway": wrk(through, STREAM_BODY, 16, args.seconds)["rps"],
        }
        results["stream"]["c1"] = {
            "direct": stream_latency(up_port, "/v1/chat/completions", args.stream_requests),
            "gateway": stream_latency(gw_port, "/v1/chat/completions", args.stream_requests),
        }
        results["stream"]["anthropic_c1"] = stream_latency(
            gw_port, "/v1/messages", args.stream_requests, MESSAGES_BODY, b'"text":"word "'
        )
        think = {}
        for name, model in (
            ("direct", "bench-think"),
            ("split", "thinking"),
            ("unsplit", "thinking-raw"),
        ):
            body = STREAM_BODY.replace('"model":"bench"', f'"model":"{model}"')
            port = up_port if name == "direct" else gw_port
            think[name] = stream_latency(
                port, "/v1/chat/completions", args.stream_requests // 2, body, expected=99
            )
        results["stream"]["think_200"] = think
        results["gateway_rss_mb"] = rss_mb(gateway.pid)
        gateway.terminate()  # the core to valgrind alone
        if args.instructions and instructions.available():
            counted = instructions.recording_cost(env, args.instructions, BODY)
            results["recording"]["instructions"] = counted
    finally:
        for process in (*gateways, upstream):
            process.terminate()
            process.wait(10)
        shutil.rmtree(store_dir, ignore_errors=True)
    report(results)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, Any]) -> None:
    print("\nnon-stream, one gateway worker (wrk, 1 thread)")
    print(
        f"{'conc':>5} {'direct rps':>11} {'gateway rps':>12} {'ratio':>6} {'direct p50':>11} {'gateway p50':>12} {'added p50':>10} {'gateway p99':>12}"
    )
    for connections, row in results["non_stream"].items():
        d, g = row["direct"], row["gateway"]
        print(
            f"{connections:>5} {d['rps']:>11.0f} {g['rps']:>12.0f} {g['rps'] / d['rps']:>6.2f} "
            f"{d['p50_ms']:>9.3f}ms {g['p50_ms']:>10.3f}ms {g['p50_ms'] - d['p50_ms']:>8.3f}ms {g['p99_ms']:>10.3f}ms"
        )
    print("\nthe router: one deployment vs three (least in flight, capped, with a fallback)")
    for connections, row in results["router"].items():
        one, routed = row["one_deployment"], row["routed"]
        print(
            f"  c={connections}: rps {one['rps']:.0f} vs {routed['rps']:.0f}"
            f" (ratio {routed['rps'] / one['rps']:.2f}), p50 {one['p50_ms']:.3f} vs"
            f" {routed['p50_ms']:.3f}ms, p99 {one['p99_ms']:.3f} vs {routed['p99_ms']:.3f}ms"
        )
    print("\neach client protocol vs /v1/chat/completions, non-stream, same upstream")
    for connections, row in results["frontends"].items():
        chat = row["chat"]["rps"]
        shares = ", ".join(
            f"{name} {row[name]['rps']:.0f} ({row[name]['rps'] / chat:.2f})"
            for name in ("responses", "messages", "gemini")
        )
        stored = row["responses_stored"]["rps"]
        print(f"  c={connections}: chat {chat:.0f} rps; {shares}; responses stored {stored:.0f}")
    report_costs(results)
    s = results["stream"]
    d, g = s["c1"]["direct"], s["c1"]["gateway"]
    print("\nstream of 20 chunks, one request at a time")
    print(
        f"  first chunk p50: direct {d['first_chunk_p50_ms']:.3f}ms, gateway {g['first_chunk_p50_ms']:.3f}ms"
    )
    print(
        f"  whole stream p50: direct {d['full_stream_p50_ms']:.3f}ms, gateway {g['full_stream_p50_ms']:.3f}ms,"
        f" added {g['full_stream_p50_ms'] - d['full_stream_p50_ms']:.3f}ms"
    )
    a = s["anthropic_c1"]
    print(
        f"  /v1/messages (Anthropic out, OpenAI upstream) first event p50 {a['first_chunk_p50_ms']:.3f}ms,"
        f" whole stream p50 {a['full_stream_p50_ms']:.3f}ms,"
        f" added vs direct {a['full_stream_p50_ms'] - d['full_stream_p50_ms']:.3f}ms"
    )
    r = s["responses_c1"]
    print(
        f"  /v1/responses (Responses out, OpenAI upstream) first event p50 {r['first_chunk_p50_ms']:.3f}ms,"
        f" whole stream p50 {r['full_stream_p50_ms']:.3f}ms,"
        f" added vs chat {r['full_stream_p50_ms'] - g['full_stream_p50_ms']:.3f}ms"
    )
    print(
        f"  stream rps at c=16: direct {s['rps_c16']['direct']:.0f}, gateway {s['rps_c16']['gateway']:.0f}"
    )
    t = s["think_200"]
    per_chunk = (t["split"]["full_stream_p50_ms"] - t["direct"]["full_stream_p50_ms"]) / 200 * 1000
    splitter = (t["split"]["full_stream_p50_ms"] - t["unsplit"]["full_stream_p50_ms"]) / 200 * 1000
    print("\nthinking stream of 200 chunks (<think> split out by the gateway), one at a time")
    print(
        f"  whole stream p50: direct {t['direct']['full_stream_p50_ms']:.3f}ms,"
        f" gateway split {t['split']['full_stream_p50_ms']:.3f}ms,"
        f" gateway unsplit {t['unsplit']['full_stream_p50_ms']:.3f}ms"
    )
    print(f"  added per chunk: {per_chunk:.1f}us (of which the splitter {splitter:.1f}us)")
    print(f"\ngateway RSS after the run: {results['gateway_rss_mb']:.1f} MB")


def report_costs(results: dict[str, Any]) -> None:
    print("\nusage recording (SQLite): CPU per request, gateway vs the same without a store,")
    print("both loaded at once on one core, over pairs of fresh gateways; the control is")
    print("pairs of two identical gateways (this machine's noise)")
    for connections, row in results["recording"].items():
        if connections == "instructions":
            continue
        cost, control = row["cost"], row["control"]
        print(
            f"  {connections} connection(s) each: recording {_spread(cost)}, of which the writer"
            f" thread {statistics.median(cost['side_threads']) * 100:+.1f}%; control {_spread(control)}"
        )
    for connections, cost in results.get("metrics", {}).items():
        print(f"  metrics, {connections} connection(s) each: {_spread(cost)} (both recording)")
    for connections, cost in results.get("tracing", {}).items():
        print(
            f"  tracing every request, {connections} connection(s) each: {_spread(cost)}"
            " (both recording, with metrics)"
        )
    for connections, cost in results.get("tracing_sampled", {}).items():
        print(f"  tracing, sample_ratio 0.1, {connections} connection(s) each: {_spread(cost)}")
    counted = results["recording"].get("instructions")
    if counted:
        print(
            f"  instructions per request (valgrind): {counted['off']:.0f} without a store,"
            f" {counted['on']:.0f} with ({(counted['on'] / counted['off'] - 1) * 100:+.1f}%)"
        )


def _spread(figure: dict[str, list[float]]) -> str:
    pairs = figure["pairs"]
    return (
        f"{statistics.median(figure['extra']) * 100:+.1f}% (pairs {pairs[0] * 100:+.1f}"
        f"..{pairs[-1] * 100:+.1f}%)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
