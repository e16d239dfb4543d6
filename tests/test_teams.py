"""Users and teams: each holds limits and budgets as a key does, and a request must
pass its key's, its user's and its team's (the tightest refuses, and the 429 names
it); models allowed are the intersection; usage by user and by team adds up to the
total. On SQLite alone, and on PostgreSQL with Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support.accounts import HI, accounts_config, admin, backend, wait_for_records
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, wait_until

ASK = {"model": "echo", "messages": HI}


def made(gw: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, created = admin(gw, "POST", path, body)
    assert status == 201, created
    return created  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["sqlite", "postgres+redis"])
def test_a_team_budget_shared_by_two_users_keys_refuses_at_the_teams_cap(
    start_gateway: Any, upstream: FakeUpstream, kind: str, request: pytest.FixtureRequest
) -> None:
    store_url, extra = backend(request, kind)
    gw: RunningGateway = start_gateway(accounts_config(upstream, store_url, **extra))
    probe = made(gw, "/admin/keys", {"name": "probe"})["key"]
    per_request = gw.request("POST", "/v1/chat/completions", ASK, api_key=probe).json()[
        "usage"]["total_tokens"]  # fmt: skip
    team = made(gw, "/admin/teams", {"name": "web", "budget_tokens": per_request * 5 // 2,
                                     "budget_period": "monthly"})  # fmt: skip
    assert team["id"].startswith("t-") and team["budget_resets_at"] is not None
    ada = made(gw, "/admin/users", {"email": "Ada@Example.com", "team_id": team["id"]})
    bob = made(gw, "/admin/users", {"email": "bob@example.com", "team_id": team["id"],
                                    "role": "viewer"})  # fmt: skip
    assert (ada["email"], ada["role"], bob["role"]) == ("ada@example.com", "member", "viewer")
    keys = [made(gw, "/admin/keys", {"name": f"{u['email']} laptop", "user_id": u["id"]})["key"]
            for u in (ada, bob)]  # fmt: skip
    statuses = []
    for turn in range(4):
        answer = gw.request("POST", "/v1/chat/completions", ASK, api_key=keys[turn % 2])
        statuses.append(answer.status)
        if answer.status == 429:
            assert "team 'web' has used its monthly budget" in answer.json()["error"]["message"]
        else:
            wait_for_records(store_url, turn + 2)  # the probe's, then each of these
    assert statuses == [200, 200, 200, 429]
    wait_until(lambda: admin(gw, "GET", f"/admin/teams/{team['id']}")[1]["used_tokens"]
               == 3 * per_request)  # fmt: skip
    _status, shown = admin(gw, "GET", f"/admin/users/{ada['id']}")
    assert shown["used_tokens"] == 2 * per_request  # hers: turns 0 and 2
    # Usage by user and by team adds up to the total.
    wait_for_records(store_url, 5)
    _, by_user = admin(gw, "GET", "/admin/usage?by=user&since=1h")
    users = {row["group"]: row["requests"] for row in by_user["data"]}
    assert users == {ada["id"]: 2, bob["id"]: 2, "-": 1}  # bob's refusal is recorded too
    _, by_team = admin(gw, "GET", "/admin/usage?by=team&since=1h")
    assert {row["group"]: row["requests"] for row in by_team["data"]} == {team["id"]: 4, "-": 1}


def test_the_tightest_limit_and_the_models_all_three_allow(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    gw: RunningGateway = start_gateway(accounts_config(upstream, sqlite_url))
    team = made(gw, "/admin/teams", {"name": "research", "models": ["echo", "chat-model"]})
    user = made(gw, "/admin/users", {"email": "cy@example.com", "team_id": team["id"], "rpm": 2})
    key = made(gw, "/admin/keys", {"name": "cy", "user_id": user["id"],
                                   "models": ["echo", "claude-model"], "rpm": 100})["key"]  # fmt: skip
    refused = gw.request(
        "POST", "/v1/chat/completions", {**ASK, "model": "chat-model"}, api_key=key
    )
    assert (
        refused.status == 403 and "API key 'cy' may not use" in refused.json()["error"]["message"]
    )
    claude = gw.request(
        "POST", "/v1/chat/completions", {**ASK, "model": "claude-model"}, api_key=key
    )
    assert claude.status == 403 and "team 'research'" in claude.json()["error"]["message"]
    statuses = [
        gw.request("POST", "/v1/chat/completions", ASK, api_key=key).status for _ in range(3)
    ]
    assert statuses == [200, 200, 429]  # the user's rpm, not the key's
    answer = gw.request("POST", "/v1/chat/completions", ASK, api_key=key)
    assert (
        "user 'cy@example.com' is over its limit of 2 requests" in answer.json()["error"]["message"]
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres+redis"])
def test_a_request_a_later_holder_refuses_spends_no_earlier_holders_rpm(
    start_gateway: Any, upstream: FakeUpstream, kind: str, request: pytest.FixtureRequest
) -> None:
    """The key admits a request, its user refuses it: the key's rpm window does not
    keep it (the refused request would otherwise count against the key's minute)."""
    store_url, extra = backend(request, kind)
    gw: RunningGateway = start_gateway(accounts_config(upstream, store_url, **extra))
    user = made(gw, "/admin/users", {"email": "dee@example.com", "rpm": 1})
    key = made(gw, "/admin/keys", {"name": "dee", "user_id": user["id"], "rpm": 2})
    statuses = [gw.request("POST", "/v1/chat/completions", ASK, api_key=key["key"]).status
                for _ in range(4)]  # fmt: skip
    assert statuses == [200, 429, 429, 429]  # the user's limit of 1
    assert admin(gw, "PATCH", f"/admin/users/{user['id']}", {"rpm": None})[0] == 200
    wait_until(lambda: gw.request("POST", "/v1/chat/completions", ASK,
                                  api_key=key["key"]).status == 200)  # fmt: skip
    # The key's 2 a minute: the first request and this one; the three refused are not in.
    refused = gw.request("POST", "/v1/chat/completions", ASK, api_key=key["key"])
    assert refused.status == 429 and "API key 'dee'" in refused.json()["error"]["message"]


def test_users_and_teams_are_managed_and_checked(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    gw: RunningGateway = start_gateway(accounts_config(upstream, sqlite_url))
    team = made(gw, "/admin/teams", {"name": "ops"})
    assert admin(gw, "POST", "/admin/teams", {"name": "ops"})[0] == 400  # taken
    assert (
        admin(gw, "POST", "/admin/users", {"email": "not-an-email"})[1]["error"]["param"] == "email"
    )
    assert admin(gw, "POST", "/admin/users", {"email": "a@b.c", "role": "owner"})[0] == 400
    assert admin(gw, "POST", "/admin/users", {"email": "a@b.c", "team_id": "t-none"})[0] == 400
    assert admin(gw, "POST", "/admin/keys", {"name": "k", "user_id": "u-none"})[0] == 400
    user = made(gw, "/admin/users", {"email": "dee@example.com", "team_id": team["id"]})
    status, patched = admin(gw, "PATCH", f"/admin/users/{user['id']}",
                            {"budget_usd": 150, "budget_period": "monthly", "role": "admin"})  # fmt: skip
    assert status == 200 and (patched["budget_usd"], patched["role"]) == (150, "admin")
    key = made(gw, "/admin/keys", {"name": "dee", "user_id": user["id"]})
    # A team with users is not removed; a removed user's keys stop working.
    status, refused = admin(gw, "DELETE", f"/admin/teams/{team['id']}")
    assert status == 409 and refused["error"]["code"] == "team_not_empty"
    assert gw.request("POST", "/v1/chat/completions", ASK, api_key=key["key"]).status == 200
    assert admin(gw, "DELETE", f"/admin/users/{user['id']}")[0] == 200
    assert gw.request("POST", "/v1/chat/completions", ASK, api_key=key["key"]).status == 401
    assert admin(gw, "DELETE", f"/admin/teams/{team['id']}")[0] == 200
    assert admin(gw, "GET", "/admin/teams")[1]["data"] == []


def test_every_admin_change_is_in_the_audit_log_without_secrets(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    gw: RunningGateway = start_gateway(accounts_config(upstream, sqlite_url))
    team = made(gw, "/admin/teams", {"name": "audit-team"})
    user = made(gw, "/admin/users", {"email": "eve@example.com", "team_id": team["id"]})
    key = made(gw, "/admin/keys", {"name": "eve", "user_id": user["id"]})
    admin(gw, "PATCH", f"/admin/keys/{key['id']}", {"rpm": 30})
    status, rotated = admin(gw, "POST", f"/admin/keys/{key['id']}/rotate")
    admin(gw, "DELETE", f"/admin/keys/{key['id']}")
    admin(gw, "PATCH", f"/admin/teams/{team['id']}", {"budget_usd": 500})
    status, log = admin(gw, "GET", "/admin/audit?limit=10")
    assert status == 200
    entries = log["data"]
    assert [e["action"] for e in entries] == [
        "team.update", "key.revoke", "key.rotate", "key.update", "key.create", "user.create",
        "team.create"]  # fmt: skip
    assert {e["actor"] for e in entries} == {"admin key"}
    update = entries[3]
    assert (update["target"], update["before"]["rpm"], update["after"]["rpm"]) == (
        key["id"], None, 30)  # fmt: skip
    assert entries[0]["after"]["budget_usd"] == 500 and entries[0]["before"]["budget_usd"] is None
    text = orjson.dumps(log).decode()
    assert key["key"] not in text and rotated["key"] not in text  # secrets never
    status, older = admin(gw, "GET", f"/admin/audit?limit=2&before={entries[4]['id']}")
    assert [e["action"] for e in older["data"]] == ["user.create", "team.create"]
    assert admin(gw, "GET", "/admin/audit?limit=0")[0] == 400


def test_a_rotated_key_keeps_its_old_secret_for_the_grace_period(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    from tests.support.clock import FakeClock

    clock = FakeClock()
    config = accounts_config(upstream, sqlite_url)
    config["store"]["key_cache_seconds"] = 0
    gw: RunningGateway = start_gateway(config, clock)
    key = made(gw, "/admin/keys", {"name": "agent"})
    status, rotated = admin(gw, "POST", f"/admin/keys/{key['id']}/rotate", {"grace_seconds": 3600})
    assert status == 200 and rotated["previous_until"] == pytest.approx(clock.time() + 3600)
    for secret in (key["key"], rotated["key"]):  # both, during the grace period
        assert gw.request("POST", "/v1/chat/completions", ASK, api_key=secret).status == 200
    clock.advance(3601)
    assert gw.request("POST", "/v1/chat/completions", ASK, api_key=key["key"]).status == 401
    assert gw.request("POST", "/v1/chat/completions", ASK, api_key=rotated["key"]).status == 200
    # Without a grace period the old secret stops at once; a bad one is refused.
    status, again = admin(gw, "POST", f"/admin/keys/{key['id']}/rotate")
    assert status == 200 and again["previous_until"] is None
    assert gw.request("POST", "/v1/chat/completions", ASK, api_key=rotated["key"]).status == 401
    status, bad = admin(gw, "POST", f"/admin/keys/{key['id']}/rotate", {"grace_seconds": -5})
    assert status == 400 and "grace_seconds" in bad["error"]["message"]


def test_the_cli_manages_teams_people_and_their_keys(tmp_path: Any) -> None:
    from tests.support.cli import run_cli

    path = tmp_path / "lmgate.yaml"
    path.write_text(f"store: {{url: 'sqlite:///{tmp_path}/p.db'}}\n")
    config = ("--config", str(path))
    team = run_cli("teams", "create", *config, "--name", "web", "--budget-usd", "2000",
                   "--budget-period", "monthly")  # fmt: skip
    assert team.returncode == 0 and "created team t-" in team.stdout, team.stderr
    user = run_cli("users", "create", *config, "--email", "Ada@Example.com", "--team", "web",
                   "--budget-usd", "200", "--budget-period", "monthly")  # fmt: skip
    assert user.returncode == 0 and "created user u-" in user.stdout, user.stderr
    again = run_cli("users", "create", *config, "--email", "ada@example.com")
    assert again.returncode == 1 and "exists" in again.stderr
    lost = run_cli("users", "create", *config, "--email", "x@example.com", "--team", "nope")
    assert lost.returncode == 1 and "no team 'nope'" in lost.stderr
    key = run_cli("keys", "create", *config, "--name", "ada laptop", "--user", "ada@example.com")
    assert key.returncode == 0, key.stderr
    users = orjson.loads(run_cli("users", "list", *config, "--json").stdout)
    (ada,) = users
    assert (ada["email"], ada["budget_usd"], ada["budget_period"]) == (
        "ada@example.com",
        200,
        "monthly",
    )
    keys = orjson.loads(run_cli("keys", "list", *config, "--json").stdout)
    assert keys[0]["user_id"] == ada["id"]
    table = run_cli("teams", "list", *config).stdout
    assert "web" in table and "2000" in table


async def test_holds_are_given_back_when_a_budget_refuses_or_the_client_leaves() -> None:
    """A request holds its estimate on its key's, user's and team's budgets in turn. If
    the team refuses, or the request is cancelled while the team's hold is being taken
    (its client left), the key's hold is given back: else it would count for good."""
    import asyncio

    from lmgate.accounts.limits import LocalLimiter, reserve_all
    from lmgate.accounts.people import Account
    from lmgate.accounts.store import KeyInfo
    from lmgate.errors import GatewayError

    class Slow(LocalLimiter):
        async def reserve(self, key: Any, tokens: int, usd: float) -> Any:
            if key.id.startswith("t-slow"):
                await asyncio.sleep(3600)  # cancelled in there
            return await super().reserve(key, tokens, usd)

    limiter = Slow()
    key = KeyInfo(id="k1", name="k", prefix="lmg-", budget_tokens=100)
    full = Account("team", "t-full", "full", budget_tokens=100, used_tokens=100)
    slow = Account("team", "t-slow", "slow", budget_tokens=100)
    with pytest.raises(GatewayError, match="team 'full' has used its budget"):
        await reserve_all(limiter, [key, full], 100, 0.0)
    task = asyncio.create_task(reserve_all(limiter, [key, slow], 100, 0.0))
    await asyncio.sleep(0)  # the key's hold is taken; the team's is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing of either request is held: the key's whole budget is there to reserve.
    hold = await reserve_all(limiter, [key], 100, 0.0)
    hold.settle(0, 0.0)
