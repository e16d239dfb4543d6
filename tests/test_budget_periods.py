"""Budgets that reset: ``budget_period`` daily, weekly or monthly (UTC calendar, a
monthly ``budget_reset_day``). Spend of an earlier period stops counting at the
boundary with no job running; keys show ``used_*`` of the period and
``budget_resets_at``; the 429 says when it resets. The clock is the test's: it is
moved across the boundary, never slept out. On SQLite alone, and on PostgreSQL with
Redis."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from lmgate.accounts.periods import bounds
from tests.support.accounts import HI, accounts_config, admin, backend, stored_key
from tests.support.clock import FakeClock
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, wait_until


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "day", "now", "start", "end"),
    [
        ("daily", None, "2026-12-06T17:00:00", "2026-12-06T00:00:00", "2026-12-07T00:00:00"),
        ("weekly", None, "2026-12-06T17:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("monthly", None, "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("monthly", 15, "2026-12-06T17:00:00", "2026-11-15T00:00:00", "2026-12-15T00:00:00"),
        ("monthly", 15, "2027-01-15T00:00:00", "2027-01-15T00:00:00", "2027-02-15T00:00:00"),
    ],
)
def test_period_bounds_on_utc_calendar_boundaries(
    period: str, day: int | None, now: str, start: str, end: str
) -> None:
    assert bounds(period, day, at(now)) == (at(start), at(end))
    assert bounds("total", None, at(now)) == (0.0, None)


@pytest.mark.parametrize("kind", ["sqlite", "postgres+redis"])
def test_a_monthly_budget_resets_at_the_month_boundary(
    start_gateway: Any, upstream: FakeUpstream, kind: str, request: pytest.FixtureRequest
) -> None:
    store_url, extra = backend(request, kind)
    clock = FakeClock(at("2026-12-31T23:58:00"))
    gw: RunningGateway = start_gateway(accounts_config(upstream, store_url, **extra), clock)
    ask = {"model": "echo", "messages": HI}
    status, made = admin(gw, "POST", "/admin/keys", {"name": "dev", "budget_tokens": 10})
    per_request = gw.request("POST", "/v1/chat/completions", ask, api_key=made["key"]).json()[
        "usage"]["total_tokens"]  # fmt: skip
    status, made = admin(gw, "POST", "/admin/keys", {
        "name": "monthly", "budget_tokens": per_request * 3 // 2, "budget_period": "monthly"})  # fmt: skip
    assert status == 201, made
    assert made["budget_resets_at"] == at("2027-01-01T00:00:00")
    assert (made["used_tokens"], made["budget_period"]) == (0, "monthly")
    key = made["key"]
    assert gw.request("POST", "/v1/chat/completions", ask, api_key=key).status == 200
    wait_until(lambda: stored_key(store_url, made["id"]).used_tokens == per_request)
    assert gw.request("POST", "/v1/chat/completions", ask, api_key=key).status == 200

    def refused() -> Any:
        answer = gw.request("POST", "/v1/chat/completions", ask, api_key=key)
        return answer if answer.status == 429 else None

    wait_until(refused)
    answer = refused()
    message = answer.json()["error"]["message"]
    assert "monthly budget" in message and "resets at 2027-01-01T00:00Z" in message
    assert 0 < int(answer.headers["retry-after"]) <= 120
    # (The refusal came from what the second request holds; its record follows.)
    wait_until(lambda: stored_key(store_url, made["id"]).used_tokens == 2 * per_request)
    # Over the boundary: December's spend no longer counts.
    clock.advance(180)
    assert gw.request("POST", "/v1/chat/completions", ask, api_key=key).status == 200
    wait_until(lambda: stored_key(store_url, made["id"]).used_tokens == per_request)
    status, shown = admin(gw, "GET", f"/admin/keys/{made['id']}")
    assert shown["used_tokens"] == per_request
    assert shown["budget_resets_at"] == at("2027-02-01T00:00:00")
    stored = stored_key(store_url, made["id"])
    assert stored.period_start == at("2027-01-01T00:00:00")
    # And January's budget is spent in its turn.
    assert gw.request("POST", "/v1/chat/completions", ask, api_key=key).status == 200
    wait_until(refused)


def test_period_settings_are_checked_and_patched(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    clock = FakeClock(at("2026-12-06T12:00:00"))
    gw = start_gateway(accounts_config(upstream, sqlite_url), clock)
    status, made = admin(gw, "POST", "/admin/keys", {"name": "k", "budget_usd": 50})
    assert made["budget_period"] == "total" and made["budget_resets_at"] is None
    status, bad = admin(gw, "PATCH", f"/admin/keys/{made['id']}", {"budget_period": "yearly"})
    assert status == 400 and bad["error"]["param"] == "budget_period"
    status, bad = admin(gw, "PATCH", f"/admin/keys/{made['id']}", {"budget_reset_day": 31})
    assert status == 400 and bad["error"]["param"] == "budget_reset_day"
    status, patched = admin(gw, "PATCH", f"/admin/keys/{made['id']}",
                            {"budget_period": "monthly", "budget_reset_day": 10})  # fmt: skip
    assert status == 200, patched
    assert patched["budget_resets_at"] == at("2026-12-10T00:00:00")
    status, patched = admin(gw, "PATCH", f"/admin/keys/{made['id']}", {"budget_period": "weekly"})
    assert patched["budget_resets_at"] == at("2026-12-07T00:00:00")  # the next Monday


def test_the_cli_makes_and_shows_a_periodic_budget(tmp_path: Any) -> None:
    import orjson

    from tests.support.cli import run_cli

    path = tmp_path / "lmgate.yaml"
    path.write_text(f"store: {{url: 'sqlite:///{tmp_path}/k.db'}}\n")
    made = run_cli("keys", "create", "--config", str(path), "--name", "dev",
                   "--budget-usd", "150", "--budget-period", "monthly", "--budget-reset-day", "5")  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = run_cli("keys", "list", "--config", str(path), "--json")
    (key,) = orjson.loads(listed.stdout)
    assert (key["budget_period"], key["budget_reset_day"], key["used_usd"]) == ("monthly", 5, 0)
    assert key["budget_resets_at"] > 0 and key["state"] == "active"
    table = run_cli("keys", "list", "--config", str(path)).stdout
    assert "150/monthly" in table
    refused = run_cli("keys", "create", "--config", str(path), "--name", "x",
                      "--budget-period", "yearly")  # fmt: skip
    assert refused.returncode == 2 and "yearly" in refused.stderr
