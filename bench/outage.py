"""A fleet through outages: three ``lmgate serve`` processes sharing a private
PostgreSQL and Redis, under steady load from three keys (one with an rpm limit, one
first used during the outage), while PostgreSQL and then Redis are stopped and
started again. Prints the answers by status in each phase, and whether every
answered request has its usage record.

    python bench/outage.py [--seconds-per-phase 8] [--clients 12]

Run from the repository (it borrows the tests' private servers). The upstream is
the echo provider: the figures are about the gateway and its dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.servers import PostgresCluster, RedisServer  # noqa: E402

ADMIN = "fleet-admin-key"
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hello fleet"}]}


def start_fleet(config: Path, ports: list[int]) -> list[subprocess.Popen[bytes]]:
    logs = config.parent
    return [
        subprocess.Popen(
            [sys.executable, "-m", "lmgate", "serve", "--config", str(config), "--port", str(port)],
            stdout=(logs / f"gateway-{port}.log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for port in ports
    ]


async def wait_ready(client: httpx.AsyncClient, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway on {port} never became ready")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds-per-phase", type=float, default=8)
    parser.add_argument("--clients", type=int, default=12)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmgate-fleet-"))
    postgres, redis_server = PostgresCluster(), RedisServer(work)
    # Their helpers run loops of their own: in threads.
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(redis_server.start)
    database = await asyncio.to_thread(postgres.database)
    config = work / "fleet.yaml"
    config.write_bytes(
        orjson.dumps(
            {
                "server": {"admin_key": ADMIN},
                "providers": {"echo": {"type": "echo"}},
                "models": [{"id": "echo", "provider": "echo"}],
                "store": {"url": database, "key_cache_seconds": 2},
                "redis": {"url": redis_server.url},
                "logging": {"request_lines": False},
            }
        )
    )
    ports = [int(port) for port in os.environ.get("FLEET_PORTS", "17861 17862 17863").split()]
    fleet = start_fleet(config, ports)
    phases: dict[str, collections.Counter[str]] = {}
    answered = 0
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for port in ports:
                await wait_ready(client, port)
            admin = {"Authorization": f"Bearer {ADMIN}"}
            made = []
            for name, settings in (("steady", {}), ("limited", {"rpm": 600}), ("late", {})):
                reply = await client.post(
                    f"http://127.0.0.1:{ports[0]}/admin/keys", json={"name": name, **settings},
                    headers=admin,
                )  # fmt: skip
                made.append(reply.json()["key"])
            steady, limited, late = made
            phase = ["warm-up"]
            keys_now = [steady, limited]

            async def load(number: int) -> None:
                nonlocal answered
                while phase[0] != "done":
                    key = keys_now[(number // len(ports)) % len(keys_now)]
                    port = ports[number % len(ports)]
                    number += 1
                    counts = phases.setdefault(phase[0], collections.Counter())
                    try:
                        reply = await client.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            json=BODY,
                            headers={"Authorization": f"Bearer {key}"},
                        )
                        counts[str(reply.status_code)] += 1
                        answered += 1
                        if reply.status_code >= 500 and not reply.headers.get("retry-after"):
                            counts["5xx without Retry-After"] += 1
                    except httpx.HTTPError as error:
                        counts[type(error).__name__] += 1
                    await asyncio.sleep(0.01)

            clients = [asyncio.create_task(load(n)) for n in range(args.clients)]
            step = args.seconds_per_phase
            await asyncio.sleep(step)
            phase[0] = "postgres down"
            await asyncio.to_thread(postgres.stop)
            keys_now.append(late)  # a key no instance has seen yet
            await asyncio.sleep(step)
            readiness = [
                (await client.get(f"http://127.0.0.1:{port}/ready")).json() for port in ports
            ]
            phase[0] = "postgres back"
            await asyncio.to_thread(postgres.start)
            await asyncio.sleep(step)
            phase[0] = "redis down"
            await asyncio.to_thread(redis_server.stop)
            await asyncio.sleep(step)
            phase[0] = "redis back"
            await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(step)
            phase[0] = "done"
            await asyncio.gather(*clients)
    finally:
        for process in fleet:
            process.send_signal(signal.SIGTERM)
        for process in fleet:
            process.wait(60)
    connection = await asyncpg.connect(database)
    records = await connection.fetch("SELECT status, count(*) FROM lmgate_usage GROUP BY status")
    await connection.close()
    redis_server.stop()
    postgres.remove()
    report(args, ports, phases, readiness, records, answered, work)


def report(
    args: argparse.Namespace,
    ports: list[int],
    phases: dict[str, collections.Counter[str]],
    readiness: list[object],
    records: list[asyncpg.Record],
    answered: int,
    work: Path,
) -> None:
    print(f"{len(ports)} instances, {args.clients} clients, {args.seconds_per_phase:g} s a phase")
    for name, counts in phases.items():
        print(f"  {name:14} " + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    print(f"  /ready while PostgreSQL was down: {readiness}")
    written = {row["status"]: row["count"] for row in records}
    print(f"  usage records by status: {dict(sorted(written.items()))}")
    print(f"  answered requests: {answered}, records: {sum(written.values())}")
    outages = collections.Counter(
        line.split("lmgate: ", 1)[1].split(" (")[0].split(":")[0].strip()
        for path in work.glob("gateway-*.log")
        for line in path.open()
        if "reachable" in line and "lmgate: request " not in line
    )
    print(f"  dependency lines in the three logs: {dict(outages)}")


if __name__ == "__main__":
    asyncio.run(main())
