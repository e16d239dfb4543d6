"""Signing in with the company's OpenID provider: the certified npm ``oidc-provider`` on
loopback, the dashboard in Chromium. Sign-in (authorization code with PKCE), roles
from the provider's claim (an admin changes things; a viewer reads and cannot make a
key; a member sees their own keys and usage only), sign-out, an expired session (the
clock is the test's), and ``lmgate login``'s device grant minting a personal key that
the OpenAI SDK then uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.accounts import ADMIN, HI, accounts_config, admin
from tests.support.clock import FakeClock
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway, wait_until
from tests.support.oidc import (
    IdentityProvider,
    approve_device,
    quiet_fonts,
    sign_in_on_provider,
)


class Site:
    """A gateway with a store, an admin key and ``oidc`` on the provider; its clock."""

    def __init__(self, gw: RunningGateway, provider: IdentityProvider, clock: FakeClock) -> None:
        self.gw, self.provider, self.clock = gw, provider, clock
        self.url = gw.url


@pytest.fixture
def site(start_gateway: Any, upstream: FakeUpstream, tmp_path: Path) -> Iterator[Site]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the callback's port is the provider's to know first
    provider = IdentityProvider(f"http://127.0.0.1:{sock.getsockname()[1]}/auth/callback")
    try:
        clock = FakeClock()
        config = accounts_config(upstream, f"sqlite:///{tmp_path / 'lmgate.db'}")
        config["oidc"] = provider.config()
        gw: RunningGateway = start_gateway(config, clock, sock=sock)
        status, team = admin(gw, "POST", "/admin/teams", {"name": "platform"})
        assert status == 201, team
        yield Site(gw, provider, clock)
    finally:
        provider.stop()


@pytest.fixture
def person(browser: Any) -> Iterator[Any]:
    """A fresh browser profile per person; a console error on lmgate's pages fails."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_page() -> Any:
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        quiet_fonts(context)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: errors.append(f"{page.url}: {m.text}")
                if m.type == "error" and "/ui/" in page.url else None)  # fmt: skip
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("dialog", lambda dialog: dialog.accept())
        return page

    open_page.expected = []  # type: ignore[attr-defined]  # errors a test causes on purpose
    yield open_page
    for context in contexts:
        context.close()
    expected = open_page.expected  # type: ignore[attr-defined]
    assert [e for e in errors if not any(text in e for text in expected)] == []


def sign_in(page: Any, site: Site, login: str) -> None:
    page.goto(site.url + "/ui/")
    page.click("[data-testid=sso]")
    sign_in_on_provider(page, login)
    page.wait_for_url(site.url + "/ui/**")
    page.wait_for_selector("#nav:not([hidden])")


def call(page: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A request as the dashboard's page makes it: its session cookie, its Origin.
    (Through Playwright's request API, sharing the page's cookies: a 4xx fetched by
    the page itself would be logged as a console error.)"""
    origin = page.url.split("/ui/")[0]
    answer = page.context.request.fetch(
        origin + path, method=method, data=orjson.dumps(body) if body is not None else None,
        headers={"Origin": origin, "Content-Type": "application/json"},
    )  # fmt: skip
    return answer.status, answer.json()


def session_cookie(page: Any) -> dict[str, Any]:
    return next(c for c in page.context.cookies() if c["name"] == "lmgate_session")


def test_an_admin_signs_in_with_the_provider_and_their_changes_are_audited_as_theirs(
    site: Site, person: Any
) -> None:
    page = person()
    sign_in(page, site, "alice")
    assert page.text_content("[data-testid=whoami]") == "alice@example.com (admin)"
    cookie = session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    # Made on first sign-in, with the role and team of the provider's claims.
    users = admin(site.gw, "GET", "/admin/users")[1]
    alice = next(u for u in users["data"] if u["email"] == "alice@example.com")
    teams = admin(site.gw, "GET", "/admin/teams")[1]["data"]
    assert alice["role"] == "admin" and alice["team_id"] == teams[0]["id"]
    # An admin changes things from the dashboard; the audit log names them.
    page.click("a[data-page=keys]")
    page.fill("[data-testid=key-name]", "made by alice")
    page.click("[data-testid=create-key] button[type=submit]")
    page.wait_for_selector("[data-testid=secret]")
    log = admin(site.gw, "GET", "/admin/audit")[1]["data"]
    made = next(e for e in log if e["action"] == "key.create")
    assert made["actor"] == "alice@example.com" and made["after"]["name"] == "made by alice"
    assert any(e["action"] == "session.sign_in" and e["actor"] == "alice@example.com" for e in log)
    assert any(e["action"] == "user.create" and e["target"] == alice["id"] for e in log)
    # The session cookie outside the dashboard's page changes nothing (no Origin: not
    # the page's own request) and the admin key is not needed to read.
    jar = {"Cookie": f"lmgate_session={cookie['value']}"}
    raw = site.gw.request("POST", "/admin/keys", {"name": "x"}, api_key=None, headers=jar)
    assert raw.status == 403 and b"dashboard's own page" in raw.body
    foreign = {**jar, "Origin": "http://127.0.0.1:1"}
    assert site.gw.request("POST", "/admin/keys", {"name": "x"}, api_key=None,
                           headers=foreign).status == 403  # fmt: skip
    assert site.gw.request("GET", "/admin/keys", api_key=None, headers=jar).status == 200


def test_roles_a_member_sees_only_their_own_and_a_viewer_changes_nothing(
    site: Site, person: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    bob_page = person()
    sign_in(bob_page, site, "bob")
    assert bob_page.text_content("[data-testid=whoami]") == "bob@example.com (member)"
    users = admin(site.gw, "GET", "/admin/users")[1]["data"]
    bob = next(u for u in users if u["email"] == "bob@example.com")
    dave = admin(site.gw, "POST", "/admin/users", {"email": "dave@example.com"})[1]
    bobs_key = admin(site.gw, "POST", "/admin/keys", {"name": "bob ci", "user_id": bob["id"]})[1]
    daves_key = admin(site.gw, "POST", "/admin/keys", {"name": "dave", "user_id": dave["id"]})[1]
    for secret in (bobs_key["key"], daves_key["key"], daves_key["key"]):
        assert site.gw.request("POST", "/v1/chat/completions", {"model": "echo", "messages": HI},
                               api_key=secret).status == 200  # fmt: skip
    wait_until(lambda: len(admin(site.gw, "GET", "/admin/usage?by=user")[1]["data"]) == 2)

    # Bob, a member: his keys and his usage, nothing of Dave's, no other page.
    bob_page.reload()
    bob_page.wait_for_selector("[data-testid=keys] tbody tr")
    assert bob_page.locator("a[data-page=requests]").is_hidden()
    rows = bob_page.locator("[data-testid=keys] tbody tr")
    assert rows.count() == 1 and "bob ci" in rows.first.text_content()
    assert call(bob_page, "GET", "/admin/usage?by=user")[1]["data"] == [
        pytest.approx({**call(bob_page, "GET", "/admin/usage?by=user")[1]["data"][0],
                       "group": bob["id"], "requests": 1})
    ]  # fmt: skip
    assert call(bob_page, "GET", f"/admin/keys/{daves_key['id']}")[0] == 404
    assert call(bob_page, "DELETE", f"/admin/keys/{daves_key['id']}")[0] == 404
    assert call(bob_page, "GET", "/admin/requests")[0] == 403
    assert call(bob_page, "GET", "/admin/users")[0] == 403
    assert call(bob_page, "PATCH", f"/admin/keys/{bobs_key['id']}", {"rpm": 10**6})[0] == 403
    status, refused = call(bob_page, "POST", "/admin/keys", {"name": "x", "user_id": dave["id"]})
    assert status == 403 and refused["error"]["param"] == "user_id"
    # He makes his own key, in his team, from the page; it works.
    bob_page.fill("[data-testid=key-name]", "bob laptop")
    bob_page.click("[data-testid=create-key] button[type=submit]")
    secret = bob_page.text_content("[data-testid=secret]")
    made = next(k for k in admin(site.gw, "GET", "/admin/keys")[1]["data"]
                if k["name"] == "bob laptop")  # fmt: skip
    assert made["user_id"] == bob["id"] and made["team_id"] == bob["team_id"]
    reply = openai.OpenAI(base_url=site.url + "/v1", api_key=secret).chat.completions.create(
        model="echo", messages=HI
    )
    assert reply.choices[0].message.content

    # Carol, a viewer: every page, no change.
    carol_page = person()
    sign_in(carol_page, site, "carol")
    assert carol_page.text_content("[data-testid=whoami]") == "carol@example.com (viewer)"
    carol_page.click("a[data-page=keys]")
    carol_page.wait_for_selector("[data-testid=keys] tbody tr")
    assert carol_page.locator("[data-testid=create-key]").count() == 0
    assert carol_page.locator("[data-testid^=revoke-]").count() == 0
    assert call(carol_page, "GET", "/admin/requests")[0] == 200
    status, refused = call(carol_page, "POST", "/admin/keys", {"name": "carol's"})
    assert status == 403 and refused["error"]["code"] == "role_not_allowed"
    assert call(carol_page, "POST", "/admin/teams", {"name": "new"})[0] == 403


def test_sign_out_and_an_expired_session_end_access(site: Site, person: Any) -> None:
    page = person()
    sign_in(page, site, "alice")
    cookie = session_cookie(page)["value"]
    jar = {"Cookie": f"lmgate_session={cookie}"}
    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    assert site.gw.request("GET", "/admin/keys", api_key=None, headers=jar).status == 401
    assert call(page, "GET", "/auth/me")[1]["signed_in"] is False

    # Signed in again; twelve hours on (oidc.session_hours), the session is over.
    page.click("[data-testid=sso]")
    page.wait_for_url(site.url + "/ui/**")  # the provider still knows this browser
    page.wait_for_selector("#nav:not([hidden])")
    site.clock.advance(12 * 3600 + 1)
    # The open page's refresh may be refused first: Chromium logs that 401.
    person.expected.append("status of 401 (Unauthorized)")
    page.reload()
    page.wait_for_selector("#sign-in:not([hidden])")
    assert call(page, "GET", "/admin/keys")[0] == 401


def test_lmgate_login_mints_a_personal_key_through_the_device_grant(
    site: Site, person: Any, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials.json"
    env = {**os.environ, "LMGATE_CREDENTIALS": str(credentials), "NO_PROXY": "127.0.0.1"}
    login = subprocess.Popen(
        [sys.executable, "-m", "lmgate", "login", "--gateway", site.url, "--name", "bob-laptop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert login.stderr is not None
    line = login.stderr.readline()
    assert line.startswith("To sign in, open "), line
    approve_device(person(), line.removeprefix("To sign in, open ").strip(), "bob")
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    assert "Signed in as bob@example.com" in err and out == ""
    assert credentials.stat().st_mode & 0o077 == 0  # the user's only
    kept = orjson.loads(credentials.read_bytes())["gateways"][site.url]
    printed = subprocess.run(
        [sys.executable, "-m", "lmgate", "key", "--gateway", site.url + "/"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert printed.returncode == 0 and printed.stdout.strip() == kept["key"]

    reply = openai.OpenAI(base_url=site.url + "/v1", api_key=kept["key"]).chat.completions.create(
        model="echo", messages=HI
    )
    assert reply.choices[0].message.content
    users = admin(site.gw, "GET", "/admin/users")[1]["data"]
    bob = next(u for u in users if u["email"] == "bob@example.com")
    key = admin(site.gw, "GET", f"/admin/keys/{kept['id']}")[1]
    assert key["name"] == "bob-laptop" and key["user_id"] == bob["id"]
    assert key["team_id"] == bob["team_id"] is not None and key["expires_at"] is not None
    # Its usage is bob's. (The admin API: Playwright's loop holds this thread.)
    by_user = lambda: admin(site.gw, "GET", "/admin/usage?by=user")[1]["data"]  # noqa: E731
    wait_until(lambda: [row["group"] for row in by_user()] == [bob["id"]])
    # Without a login, `lmgate key` says what to do, on stderr, and fails.
    other = {**env, "LMGATE_CREDENTIALS": str(tmp_path / "none.json")}
    missing = subprocess.run([sys.executable, "-m", "lmgate", "key", "--gateway", site.url],
                             capture_output=True, text=True, env=other, timeout=30)  # fmt: skip
    assert missing.returncode == 1 and missing.stdout == ""
    assert f"run lmgate login --gateway {site.url}" in missing.stderr
    assert ADMIN not in missing.stderr
