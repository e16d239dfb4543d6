"""lmgate beside its peers, in one run: the same upstream, load generator and scenarios.

    bash bench/install_peers.sh      # once: LiteLLM's proxy (PyPI) and Portkey's gateway (npm)
    python bench/run.py --peers

Each gateway runs alone on CPU 0 (the upstream and wrk on CPU 1), one worker,
started fresh. A peer that fails a scenario is shown failing, with what it answered.
Scenarios: non-stream and 20-chunk stream at concurrency 1 and 16; a stream paced
like a real model's (20 ms to the first chunk, then 5 ms each) at concurrency 64,
as a share of the direct upstream's throughput; memory after the load; the time from
starting the process to its first answered chat. Then lmgate with ``--workers 2``
against one worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import cpu_seconds, free_port, wait_listening

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers"  # what install_peers.sh installs: a venv and node_modules
LITELLM = PEERS / "venv" / "bin" / "litellm"
PORTKEY = PEERS / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def chat_body(model: str, stream: bool) -> str:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say twenty words."}],
            "stream": stream,
        },
        separators=(",", ":"),
    )


@dataclass
class Contender:
    """A gateway (or the upstream itself) as the scenarios drive it."""

    name: str
    command: list[str]
    models: dict[str, str]  # scenario model (bench, bench-paced) -> what this one is sent
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def body(self, model: str, stream: bool) -> str:
        return chat_body(self.models[model], stream)

    def start(self, pinned: Callable[[int, list[str]], list[str]]) -> float:
        """Start it; seconds until its first chat was answered."""
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        started = time.monotonic()
        self.process = subprocess.Popen(
            pinned(0, command),
            env={**_environment(), **_OFFLINE, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = started + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                self.ask(stream=False)
                return time.monotonic() - started
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.name} answered no chat in 120 s")

    def ask(self, stream: bool, model: str = "bench") -> bytes:
        request = urllib.request.Request(
            self.url(),
            self.body(model, stream).encode(),
            {"Content-Type": "application/json", **self.headers},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bytes(reply.read())

    def failure(self, stream: bool, model: str = "bench") -> str:
        """What one request answers, when a scenario saw errors."""
        try:
            self.ask(stream, model)
            return "errors under load"
        except urllib.error.HTTPError as error:
            return f"{error.code}: {error.read()[:120].decode(errors='replace')}"
        except OSError as error:
            return str(error)

    def rss_mb(self) -> float:
        """Resident memory of the process and its children."""
        assert self.process is not None
        return sum(_rss_kb(pid) for pid in _tree(self.process.pid)) / 1024

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 15)
            self.process.wait(20)
            self.process = None


def _environment() -> dict[str, str]:
    # A DATABASE_URL of the caller's would turn LiteLLM's database on.
    return {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}


# Nothing leaves the machine: proxies at a closed port, the upstream reached directly.
_OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        todo += [int(child) for child in children]
    return pids


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def contenders(upstream_port: int, store_url: str) -> list[Contender]:
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    found = [
        Contender(
            "lmgate",
            [sys.executable, "-m", "lmgate", "serve", "--config", str(HERE / "bench.yaml"),
             "--port", "{port}", "--log-level", "warning"],
            {"bench": "bench", "bench-paced": "bench-paced"},
            env={"BENCH_UPSTREAM_PORT": str(upstream_port), "BENCH_STORE_URL": store_url},
        ),
    ]  # fmt: skip
    if PORTKEY.exists():
        # Portkey takes its upstream per request, and passes the model on as sent.
        config = {"provider": "openai", "api_key": "bench-key", "custom_host": upstream}
        found.append(
            Contender(
                "Portkey " + _version(PORTKEY.parents[1] / "package.json"),
                ["node", str(PORTKEY), "--port={port}"],
                {"bench": "bench-model", "bench-paced": "bench-paced"},
                headers={"x-portkey-config": json.dumps(config)},
            )
        )
    if LITELLM.exists():
        litellm_config = PEERS / "litellm.yaml"
        models = [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{target}",
                    "api_base": upstream,
                    "api_key": "bench-key",
                },
            }
            for name, target in (("bench", "bench-model"), ("bench-paced", "bench-paced"))
        ]
        litellm_config.write_text(json.dumps({"model_list": models}))  # JSON is YAML
        found.append(
            Contender(
                "LiteLLM " + _litellm_version(),
                [str(LITELLM), "--config", str(litellm_config), "--port", "{port}",
                 "--num_workers", "1"],
                {"bench": "bench", "bench-paced": "bench-paced"},
                headers={"Authorization": f"Bearer {_LITELLM_KEY}"},
                # No database: usage is not recorded (lmgate's is, in SQLite).
                env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                     "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                     "LITELLM_MASTER_KEY": _LITELLM_KEY},
            )
        )  # fmt: skip
    return found


_LITELLM_KEY = "sk-bench-" + "5f0c9a7e3b1d4c2a8e6f0b9d7c5a3e1f"


def _version(package_json: Path) -> str:
    return str(json.loads(package_json.read_text())["version"])


def _litellm_version() -> str:
    python = LITELLM.parent / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


def scenarios(who: Contender, wrk: Callable[..., dict[str, float]], seconds: int) -> dict[str, Any]:
    """Every scenario's figures for one contender (or the error it failed with)."""
    result: dict[str, Any] = {}
    url = who.url()
    with contextlib.suppress(RuntimeError):  # a failing warm-up fails its scenarios below
        wrk(url, who.body("bench", False), 16, 1, who.headers)
    for name, model, stream, connections in (
        ("non_stream_c1", "bench", False, 1),
        ("non_stream_c16", "bench", False, 16),
        ("stream_c1", "bench", True, 1),
        ("stream_c16", "bench", True, 16),
        ("paced_c64", "bench-paced", True, 64),
    ):
        try:
            result[name] = wrk(url, who.body(model, stream), connections, seconds, who.headers)
        except RuntimeError:
            result[name] = {"error": who.failure(stream, model)}
    return result


@dataclass
class Rig:
    """What every contender is measured with."""

    upstream_port: int
    store_dir: str
    wrk: Callable[..., dict[str, float]]
    pinned: Callable[[int, list[str]], list[str]]
    seconds: int


def run(rig: Rig) -> dict[str, Any]:
    upstream_port, wrk, seconds = rig.upstream_port, rig.wrk, rig.seconds
    direct = Contender("direct", [], {"bench": "bench-model", "bench-paced": "bench-paced"})
    direct.port = upstream_port
    wait_listening(upstream_port)
    results: dict[str, Any] = {"direct": scenarios(direct, wrk, seconds)}
    for who in contenders(upstream_port, f"sqlite:///{rig.store_dir}/peer.db"):
        try:
            start = who.start(rig.pinned)
            figures = scenarios(who, wrk, seconds)
            figures["rss_mb"] = who.rss_mb()
            figures["start_s"] = start
        except RuntimeError as error:
            figures = {"error": str(error)}
        finally:
            who.stop()
        results[who.name] = figures
    results["workers"] = workers(rig)
    return results


def workers(rig: Rig) -> dict[str, Any]:
    """lmgate non-stream throughput with 1 and 2 workers (on CPU 0, and on CPUs 0 and
    1: this machine has two, so the second worker shares CPU 1 with the upstream and
    wrk), how the connections spread (each worker's share of the CPU), and the CPU
    each request took, all workers together."""
    found: dict[str, Any] = {}
    for count in (1, 2):
        who = contenders(rig.upstream_port, f"sqlite:///{rig.store_dir}/workers-{count}.db")[0]
        who.command += ["--workers", str(count)]

        def on_cpus(cpu: int, command: list[str], count: int = count) -> list[str]:
            return rig.pinned(cpu, command) if count == 1 else ["taskset", "-c", "0,1", *command]

        try:
            who.start(on_cpus)
            assert who.process is not None
            time.sleep(1)  # every worker up (the first answer may come from one alone)
            rig.wrk(who.url(), who.body("bench", False), 16, 1)  # warm-up
            row: dict[Any, Any] = {}
            for connections in (16, 64):
                before = _worker_cpu(who.process.pid)
                row[connections] = rig.wrk(
                    who.url(), who.body("bench", False), connections, rig.seconds
                )
                after = _worker_cpu(who.process.pid)
                used = [after[pid] - before.get(pid, 0.0) for pid in after]
                served = row[connections]["rps"] * rig.seconds
                # CPU per request, all workers together: the same with 1 and 2 workers
                # means they share nothing, and requests/s grows with the cores given.
                row[f"{connections}_cpu_us"] = sum(used) / served * 1e6
                row[f"{connections}_cpu_shares"] = sorted(
                    (u / sum(used) for u in used if u > 0.01 * sum(used)), reverse=True
                )
            found[str(count)] = row
        finally:
            who.stop()
    return found


def _worker_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each process in the tree that serves (uvicorn's workers; the
    supervisor itself serves when alone)."""
    times = {}
    for process in _tree(pid):
        try:
            times[process] = cpu_seconds(process)
        except FileNotFoundError:
            continue
    return times


def report(results: dict[str, Any]) -> None:
    names = [name for name in results if name != "workers"]
    direct = results["direct"]

    def cell(name: str, scenario: str) -> str:
        figures = results[name]
        if "error" in figures:
            return "fails"
        row = figures.get(scenario, {})
        if "error" in row:
            return "fails"
        if scenario == "paced_c64":
            return f"{row['rps'] / direct[scenario]['rps']:.2f}"
        text = f"{row['rps']:,.0f} rps"
        if scenario.endswith("_c1") and name != "direct":
            text += f", +{row['p50_ms'] - direct[scenario]['p50_ms']:.2f} ms p50"
        return text

    rows = [
        ("non-stream c=1", "non_stream_c1"),
        ("non-stream c=16", "non_stream_c16"),
        ("stream (20 chunks) c=1", "stream_c1"),
        ("stream c=16", "stream_c16"),
        ("paced stream c=64, share of direct", "paced_c64"),
    ]
    table = [["", *names]]
    table += [[label, *(cell(name, scenario) for name in names)] for label, scenario in rows]
    table.append(
        ["memory after load", *(_figure(results[n], "rss_mb", "{:.0f} MiB") for n in names)]
    )
    table.append(
        [
            "start to first answered chat",
            *(_figure(results[n], "start_s", "{:.2f} s") for n in names),
        ]
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print("\nside by side: one worker each on CPU 0, upstream and wrk on CPU 1")
    for row in table:
        print("  " + " | ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)))
    for name in names:
        figures = results[name]
        errors = [
            f"{s}: {r['error']}" for s, r in figures.items() if isinstance(r, dict) and "error" in r
        ]
        if "error" in figures:
            errors = [str(figures["error"])]
        for error in errors:
            print(f"  {name} failed {error}")
    scaled = results.get("workers", {})
    if "1" in scaled and "2" in scaled:
        print(
            "\nlmgate --workers 2 vs 1 (non-stream; the second worker shares CPU 1 with the load)"
        )
        for connections in (16, 64):
            one, two = scaled["1"][connections]["rps"], scaled["2"][connections]["rps"]
            shares = ", ".join(f"{share:.0%}" for share in scaled["2"][f"{connections}_cpu_shares"])
            cost = [scaled[n].get(f"{connections}_cpu_us", 0.0) for n in ("1", "2")]
            print(
                f"  c={connections}: {one:,.0f} vs {two:,.0f} rps, {two / one:.2f}x;"
                f" the workers' shares of the CPU: {shares};"
                f" CPU per request {cost[0]:.0f} vs {cost[1]:.0f} us"
                f" ({1e6 / cost[0]:,.0f} vs {1e6 / cost[1]:,.0f} requests per CPU-second)"
            )


def _figure(figures: dict[str, Any], key: str, form: str) -> str:
    return form.format(figures[key]) if key in figures else "-"
