"""The dashboard at /ui in a real browser: the system's Chromium, headless, driven by
Playwright. The test makes requests through the SDKs, then signs in and finds them
in the charts and tables; creates a key, uses it, revokes it and sees it refused;
reads a logged request; and fails on any console error. Screenshots of each page
go to $LMGATE_SCREENSHOTS when it is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from playwright import sync_api as playwright_api

from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import API_KEY, RunningGateway, upstream_config, wait_until

ADMIN = "dashboard-admin-key"
SECRET_IN_BODY = "sk-upstream-secret-0123456789"  # the fake upstream's key: must be blanked


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.errors = []  # console errors and uncaught exceptions: each fails the test
    opened.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()
    assert opened.errors == []


def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("LMGATE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, tmp_path: Path) -> RunningGateway:
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["store"] = {
        "url": f"sqlite:///{tmp_path / 'ui.db'}",
        "flush_interval": 0.05,
        "key_cache_seconds": 0,
    }
    config["request_log"] = {"enabled": True}
    config["models"][0]["price"] = {"input": 2, "output": 8}
    config["routing"]["fallbacks"] = {"capped": ["echo"]}
    return start_gateway(config)  # type: ignore[no-any-return]


def test_the_dashboard_shows_what_the_sdks_did_and_manages_keys(
    gw: RunningGateway, upstream: FakeUpstream, page: Any
) -> None:
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
    upstream.push(
        Script(json=completion(f"ok, and the key was {SECRET_IN_BODY}", usage)),
        Script(json=completion("second", usage)),
        Script(status=500, json={"error": {"message": "upstream exploded"}}),
    )
    openai_client = gw.client()
    hi: Any = [{"role": "user", "content": "hello from the OpenAI SDK"}]
    openai_client.chat.completions.create(model="chat-model", messages=hi)
    openai_client.chat.completions.create(model="chat-model", messages=hi)
    with pytest.raises(openai.InternalServerError):
        openai_client.chat.completions.create(model="chat-model", messages=hi)
    gw.anthropic().messages.create(
        model="echo", max_tokens=50, messages=[{"role": "user", "content": "hi from Anthropic"}]
    )
    wait_until(lambda: len(gw.request("GET", "/admin/requests", api_key=ADMIN).json()["data"]) == 4)

    page.goto(f"{gw.url}/ui")
    page.fill("#admin-key", "not-the-admin-key")
    with page.expect_response(lambda r: r.url.endswith("/admin/deployments")):
        page.click("#sign-in button")
    assert "not the admin key" in page.inner_text("#sign-in-error")
    page.errors.clear()  # the browser logs the refused request itself: expected here
    page.fill("#admin-key", ADMIN)
    page.click("#sign-in button")

    # Overview: tiles, charts and the breakdown reflect the four requests.
    page.wait_for_selector("[data-testid=tile-requests] .value:text('4')")
    assert page.inner_text("[data-testid=tile-errors] .value") == "1"
    assert (
        page.inner_text("[data-testid=tile-cost] .value") == "$0.009600"
    )  # 2 × (1200×2 + 300×8)/1e6
    assert page.locator("[data-testid=chart]").count() == 4
    assert page.locator("[data-testid=chart] path[data-series=requests]").count() == 1
    breakdown = page.inner_text("[data-testid=breakdown]")
    assert "chat-model" in breakdown and "echo" in breakdown
    page.select_option("#range", "24h")
    page.wait_for_selector("[data-testid=tile-requests] .value:text('4')")
    shoot(page, "overview")

    # Recent requests: filter by model, open the failed one and a logged one.
    page.click("a[data-page=requests]")
    page.wait_for_selector("[data-testid=requests] table")
    page.fill("[data-testid=filter-model]", "chat-model")
    page.select_option("[data-testid=filter-status]", "error")
    page.click("text=Filter")
    rows = page.locator("[data-testid=requests] tbody tr")
    playwright_api.expect(rows).to_have_count(1)
    failed = page.inner_text("[data-testid=requests]")
    assert "502" in failed and "upstream exploded" in failed  # the error's message
    page.select_option("[data-testid=filter-status]", "ok")
    page.click("text=Filter")
    playwright_api.expect(rows).to_have_count(2)
    page.click("[data-testid=requests] tbody tr:last-child")
    page.wait_for_selector("[data-testid=logged-reply]")
    assert "hello from the OpenAI SDK" in page.inner_text("[data-testid=logged-request]")
    reply = page.inner_text("[data-testid=logged-reply]")
    assert "ok, and the key was" in reply and SECRET_IN_BODY not in reply  # redacted
    shoot(page, "requests")

    # Models: live health of each deployment.
    page.click("a[data-page=models]")
    page.wait_for_selector("[data-testid=model]")
    models = page.inner_text("#page")
    assert "up/up-model" in models and "closed" in models and "$2 / $8" in models
    shoot(page, "models")

    # Keys: create one with limits and a budget; its secret is shown once; use it,
    # revoke it, and see it refused.
    page.click("a[data-page=keys]")
    page.wait_for_selector("[data-testid=keys]")
    page.fill("[data-testid=key-name]", "browser-made")
    page.fill("[data-testid=key-rpm]", "60")
    page.fill("[data-testid=key-budget_usd]", "5")
    page.click("text=Create key")
    secret = page.inner_text("[data-testid=secret]")
    assert secret.startswith("lmg-")
    made = gw.client(api_key=secret).chat.completions.create(model="echo", messages=hi)
    assert made.choices[0].message.content
    row = page.locator("[data-testid=keys] tr", has_text="browser-made")
    assert "$5" in row.inner_text() and "active" in row.inner_text()
    shoot(page, "keys")
    row.locator("button", has_text="Revoke").click()
    page.wait_for_selector("[data-testid=keys] tr:has-text('browser-made') .badge:text('revoked')")
    with pytest.raises(anthropic.AuthenticationError):
        gw.anthropic(api_key=secret).messages.create(model="echo", max_tokens=5, messages=hi)
    assert API_KEY not in page.content()


def test_the_dashboard_tells_an_operator_the_truth(
    gw: RunningGateway, upstream: FakeUpstream, page: Any, browser: Any
) -> None:
    """What the first day of an operator found missing: the detail in view, a stream's
    text, fallbacks, key names, the 429s, budgets, edit and rotate, readable charts."""
    _, made = admin(gw, "POST", "/admin/keys", {"name": "night-shift", "rpm": 2})
    _, spent = admin(gw, "POST", "/admin/keys", {"name": "small-budget", "budget_tokens": 5})
    night = gw.client(made["key"])
    hi: Any = [{"role": "user", "content": "hello"}]
    upstream.push(Script(chunks=text_stream(["Streamed ", "words ", "reassembled."])))
    streamed = night.chat.completions.create(model="chat-model", messages=hi, stream=True)
    assert len(list(streamed)) == 5
    upstream.push(Script(status=500, json={"error": {"message": "capped is down"}}))
    fallback = night.chat.completions.create(model="capped", messages=hi)  # echo answers
    assert fallback.model == "echo"
    with pytest.raises(openai.RateLimitError):  # the third in a minute
        night.chat.completions.create(model="echo", messages=hi)
    gw.client(spent["key"]).chat.completions.create(model="echo", messages=hi)
    for n in range(30):  # enough rows that the first one is far down the page
        gw.client().chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"n{n}"}]
        )
    wait_until(lambda: len(admin(gw, "GET", "/admin/requests?limit=100")[1]["data"]) == 34)

    sign_in(page, gw)
    page.wait_for_selector("[data-testid=tile-requests] .value:text('34')")
    for chart in page.locator("[data-testid=chart]").all():  # readable: 4+ ticks of 11+ px
        for axis in ("y-ticks", "x-ticks"):
            ticks = chart.locator(f".{axis} .tick")
            assert ticks.count() >= 4
            sizes = ticks.evaluate_all(
                "(ts) => ts.map((t) => parseFloat(getComputedStyle(t).fontSize))"
            )
            assert min(sizes) >= 11, sizes

    page.click("a[data-page=requests]")
    page.wait_for_selector("[data-testid=requests] table")
    listing = page.inner_text("[data-testid=requests]")
    assert "night-shift" in listing and made["id"] not in listing  # key names, not ids
    assert page.locator("[data-testid=fallback]").count() == 1
    assert "capped → echo" in listing
    page.select_option("[data-testid=filter-status]", "429")
    page.click("text=Filter")
    rows = page.locator("[data-testid=requests] tbody tr")
    playwright_api.expect(rows).to_have_count(1)
    assert "night-shift" in rows.inner_text()
    page.select_option("[data-testid=filter-status]", "")
    page.fill("[data-testid=filter-q]", "capped")
    page.click("text=Filter")
    playwright_api.expect(rows).to_have_count(1)
    page.fill("[data-testid=filter-q]", "")
    page.click("text=Filter")
    playwright_api.expect(rows).to_have_count(34)
    page.mouse.wheel(0, 5000)
    page.locator("[data-testid=requests] tbody tr", has_text="stream").click()  # far down
    drawer = page.locator("[data-testid=drawer]")
    playwright_api.expect(drawer).to_be_in_viewport()
    playwright_api.expect(page.locator("[data-testid=reassembled]")).to_have_text(
        "Streamed words reassembled."
    )
    assert "night-shift" in drawer.inner_text() and "up/up-model" in drawer.inner_text()
    shoot(page, "request-detail")
    page.keyboard.press("Escape")
    playwright_api.expect(drawer).to_have_count(0)

    page.click("a[data-page=keys]")
    row = page.locator("[data-testid=keys] tr", has_text="small-budget")
    playwright_api.expect(row.locator(".badge")).to_have_text("exhausted")
    night_row = page.locator("[data-testid=keys] tr", has_text="night-shift")
    night_row.locator("button", has_text="Edit").click()
    page.fill("[data-testid=edit-models]", "chat-modle")
    page.click("[data-testid=edit-key] button")
    playwright_api.expect(page.locator("[data-testid=edit-error]")).to_contain_text(
        "did you mean 'chat-model'"
    )
    page.errors.clear()  # the browser logs the refused request itself: expected here
    page.fill("[data-testid=edit-models]", "")
    page.fill("[data-testid=edit-rpm]", "600")
    page.click("[data-testid=edit-key] button")
    playwright_api.expect(night_row).to_contain_text("600")
    night_row.locator("button", has_text="Rotate").click()
    secret = page.inner_text("[data-testid=secret]")
    assert secret.startswith("lmg-") and secret != made["key"]
    with pytest.raises(openai.AuthenticationError):
        night.models.list()
    assert gw.client(secret).chat.completions.create(model="echo", messages=hi).choices

    phone = browser.new_context(viewport={"width": 390, "height": 844})
    small = phone.new_page()
    try:
        sign_in(small, gw)
        for name in ("overview", "models", "keys", "requests"):
            small.click(f"a[data-page={name}]")
            small.wait_for_selector("#page h1")
            small.wait_for_load_state("networkidle")
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (name, width)  # no sideways scrolling of the page
            shoot(small, f"phone-{name}")
        small.locator("[data-testid=requests] tbody tr").first.click()
        box = small.locator("[data-testid=drawer]").bounding_box()
        assert box is not None and box["x"] >= 0 and box["width"] <= 390
    finally:
        phone.close()


def sign_in(page: Any, gw: RunningGateway) -> None:
    page.goto(f"{gw.url}/ui")
    page.fill("#admin-key", ADMIN)
    page.click("#sign-in button")
    page.wait_for_selector("#nav:not([hidden])")


def admin(gw: RunningGateway, method: str, path: str, body: Any = None) -> Any:
    raw = gw.request(method, path, body, api_key=ADMIN)
    return raw.status, raw.json()


def test_the_dashboard_files_need_no_network(gw: RunningGateway) -> None:
    for name in ("", "app.js", "app.css"):
        served = gw.request("GET", f"/ui/{name}", api_key=None)
        assert served.status == 200
        body = served.body.replace(b"http://www.w3.org/2000/svg", b"")  # a name, not a fetch
        assert b"http://" not in body and b"https://" not in body  # no CDN
        assert "script-src 'self'" in served.headers["content-security-policy"]
    assert gw.request("GET", "/ui/../app.py", api_key=None).status == 404
    assert gw.request("GET", "/ui", api_key=None).status == 308


def test_the_admin_reads_refuse_bad_parameters_clearly(gw: RunningGateway) -> None:
    for path, param in (
        ("/admin/requests?limit=0", "limit"),
        ("/admin/requests?limit=many", "limit"),
        ("/admin/requests?status=fine", "status"),
        ("/admin/requests?before=x", "before"),
        ("/admin/requests?before=99999999999999999999", "before"),
        ("/admin/usage/series?since=forever", "since"),
        ("/admin/usage?since=1y", "since"),
    ):
        refused = gw.request("GET", path, api_key=ADMIN)
        assert refused.status == 400, (path, refused.body)
        assert refused.json()["error"]["param"] == param
    missing = gw.request("GET", "/admin/requests/no-such-request", api_key=ADMIN)
    assert missing.status == 404 and "no-such-request" in missing.json()["error"]["message"]
    for path in ("/admin/requests", "/admin/usage/series", "/admin/deployments"):
        assert gw.request("GET", path, api_key=API_KEY).status == 403  # a client key
        assert gw.request("GET", path, api_key=None).status == 401
    series = gw.request("GET", "/admin/usage/series?since=15m", api_key=ADMIN).json()
    assert len(series["points"]) == 60 and series["overall"]["requests"] == 0


def test_a_reused_request_id_keeps_each_request_s_own_bodies(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    """Clients choose x-request-id: two requests sending the same one each keep their
    own logged bodies, shown with their own record."""
    recorder = gw.app.state.gateway.accounts.recorder
    for words in ("the first secret plan", "the second, another key's"):
        upstream.push(Script(json=completion(f"reply to {words}")))
        sent = gw.request(
            "POST",
            "/v1/chat/completions",
            {"model": "chat-model", "messages": [{"role": "user", "content": words}]},
            headers={"x-request-id": "same-id"},
        )
        assert sent.status == 200
    wait_until(lambda: recorder.written >= 2)

    def detail() -> Any:
        return gw.request("GET", "/admin/requests/same-id", api_key=ADMIN).json()

    wait_until(lambda: all(record["log"] for record in detail()["records"]))
    records = detail()["records"]
    assert len(records) == 2
    assert "the first secret plan" in records[0]["log"]["request"]
    assert "the second" in records[1]["log"]["request"]
    assert "the first" not in records[1]["log"]["request"]
    listed = gw.request("GET", "/admin/requests", api_key=ADMIN).json()["data"]
    assert [row["logged"] for row in listed if row["request_id"] == "same-id"] == [True, True]


def test_the_teams_page_shows_budgets_spend_and_changes(
    page: Any, gw: RunningGateway, upstream: FakeUpstream
) -> None:
    import orjson

    def post(path: str, body: dict[str, Any]) -> Any:
        answer = gw.request("POST", path, body, api_key=ADMIN)
        assert answer.status == 201, answer.body
        return orjson.loads(answer.body)

    team = post(
        "/admin/teams", {"name": "platform", "budget_usd": 2000, "budget_period": "monthly"}
    )
    user = post("/admin/users", {"email": "grace@example.com", "team_id": team["id"],
                                 "budget_tokens": 5000000, "rpm": 60})  # fmt: skip
    key = post("/admin/keys", {"name": "grace laptop", "user_id": user["id"]})
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    assert gw.request("POST", "/v1/chat/completions", chat, api_key=key["key"]).status == 200
    sign_in(page, gw)
    page.click("#nav a[data-page=teams]")
    teams = page.locator("[data-testid=teams]")
    teams.get_by_text("platform").wait_for()
    assert "monthly" in teams.inner_text() and "$2000.00" in teams.inner_text()
    users = page.locator("[data-testid=users]").inner_text()
    assert "grace@example.com" in users and "platform" in users and "60 rpm" in users
    changes = page.locator("[data-testid=audit]")
    assert "team.create" in changes.inner_text() and "key.create" in changes.inner_text()
    changes.get_by_text("user.create").click()
    drawer = page.locator("[data-testid=drawer]")
    drawer.get_by_text("grace@example.com").first.wait_for()
    assert key["key"] not in page.content()  # no secret on the page
    page.keyboard.press("Escape")
    # Made from the page: a team, then a person in it.
    page.fill("[data-testid=team-name]", "design")
    page.fill("[data-testid=team-budget_usd]", "300")
    page.select_option("[data-testid=team-budget_period]", "weekly")
    page.click("[data-testid=create-team] button")
    page.locator("[data-testid=teams]").get_by_text("design").wait_for()
    page.fill("[data-testid=user-email]", "lin@example.com")
    page.select_option("[data-testid=user-team_id]", label="design")
    page.select_option("[data-testid=user-role]", "viewer")
    page.click("[data-testid=create-user] button")
    page.locator("[data-testid=users]").get_by_text("lin@example.com").wait_for()
    people = gw.request("GET", "/admin/users", api_key=ADMIN).json()["data"]
    lin = next(u for u in people if u["email"] == "lin@example.com")
    assert lin["role"] == "viewer" and lin["team_id"].startswith("t-")
    shoot(page, "teams")
