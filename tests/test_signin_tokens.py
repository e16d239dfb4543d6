"""What a sign-in refuses, through the real flow (the gateway's /auth/login and
/auth/callback, a scripted provider): ID tokens that are expired, forged, for another
client or issuer, for another sign-in (nonce), unsigned or signed with the client
secret; a callback this browser did not start, or one used twice; an unknown user
when only pre-created ones may sign in. And what it survives: the provider rotating
its keys (read again, but not at every unknown key id), the provider being down (a
503 page, Retry-After)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lmgate.accounts import sessions
from tests.support.accounts import accounts_config, admin
from tests.support.clock import FakeClock
from tests.support.fakes.oidc import CLIENT_ID, CLIENT_SECRET, FakeProvider
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway


@pytest.fixture
def provider() -> Iterator[tuple[FakeUpstream, FakeProvider]]:
    server = FakeUpstream().start()
    fake = FakeProvider(server.url)
    server.route = fake
    yield server, fake
    if not server._loop.is_closed():  # a test may have stopped it (an outage)
        server.stop()


def gateway(start_gateway: Any, upstream: FakeUpstream, fake: FakeProvider, tmp_path: Path,
            clock: FakeClock | None = None, **oidc: Any) -> RunningGateway:  # fmt: skip
    config = accounts_config(upstream, f"sqlite:///{tmp_path / 'lmgate.db'}")
    config["oidc"] = {"issuer": fake.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                      **oidc}  # fmt: skip
    return start_gateway(config, clock or FakeClock())  # type: ignore[no-any-return]


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def browser() -> httpx.Client:
    """A browser as far as cookies and redirects go (each one followed by hand)."""
    _OPEN.append(httpx.Client(timeout=20))
    return _OPEN[-1]


def sign_in(gw: RunningGateway) -> tuple[httpx.Response, httpx.Client]:
    """A browser's sign-in, redirect by redirect: the callback's answer."""
    web = browser()
    leave = web.get(gw.url + "/auth/login?next=/ui/")
    assert leave.status_code == 302, leave.text
    back = web.get(leave.headers["location"])
    assert back.status_code == 302, back.text
    return web.get(back.headers["location"]), web


def signed_in(web: httpx.Client, gw: RunningGateway) -> bool:
    return bool(web.get(gw.url + "/auth/me").json()["signed_in"])


def metrics(gw: RunningGateway) -> str:
    return gw.request("GET", "/metrics").body.decode()


def _expired(claims: dict[str, Any], fake: FakeProvider) -> str:
    return fake.sign({**claims, "iat": claims["iat"] - 7200, "exp": claims["iat"] - 3600})


def _forged(claims: dict[str, Any], fake: FakeProvider) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return fake.sign({**claims, "email": "admin@example.com"}, key=other)  # the provider's kid


def _unsigned(claims: dict[str, Any], fake: FakeProvider) -> str:
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


def _hmac(claims: dict[str, Any], fake: FakeProvider) -> str:
    return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256", headers={"kid": fake.keys[0][0]})


REFUSED = {
    "expired": (_expired, "Signature has expired"),
    "forged": (_forged, "Signature verification failed"),
    "another client": (lambda c, f: f.sign({**c, "aud": "someone-else"}), "Audience"),
    "another issuer": (lambda c, f: f.sign({**c, "iss": "https://evil.example"}), "issuer"),
    "another sign-in": (lambda c, f: f.sign({**c, "nonce": "stolen"}), "nonce"),
    "unsigned": (_unsigned, "algorithm 'none' is not accepted"),
    "signed with the client secret": (_hmac, "algorithm 'HS256' is not accepted"),
    "unverified email": (lambda c, f: f.sign({**c, "email_verified": False}), "not verified"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_an_id_token_that_fails_a_check_opens_no_session(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path, case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _, fake = provider
    gw = gateway(start_gateway, upstream, fake, tmp_path)
    fake.tamper, reason = REFUSED[case]
    answer, web = sign_in(gw)
    assert answer.status_code == 403 and reason in html.unescape(answer.text), answer.text
    assert "lmgate_session" not in answer.headers.get("set-cookie", "")
    assert not signed_in(web, gw)
    assert admin(gw, "GET", "/admin/users")[1]["data"] == []  # nobody was made
    assert any("sign-in refused" in r.message and reason in r.message for r in caplog.records)
    assert 'lmgate_sign_ins_total{outcome="refused"} 1.0' in metrics(gw)


def test_an_honest_sign_in_survives_key_rotation_without_a_jwks_fetch_per_unknown_key(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path
) -> None:
    _, fake = provider
    clock = FakeClock()
    gw = gateway(start_gateway, upstream, fake, tmp_path, clock)
    answer, web = sign_in(gw)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    assert signed_in(web, gw) and fake.jwks_fetches == 1
    fake.rotate()  # the next token's key id is new: the keys are read again, once
    clock.advance(31)  # at most every 30 s: forged key ids must not flood the provider
    answer, web = sign_in(gw)
    assert answer.status_code == 303 and signed_in(web, gw) and fake.jwks_fetches == 2
    # Tokens naming keys nobody has: refused, and the JWKS is not read for each.
    fake.tamper = lambda claims, f: f.sign(claims, kid=f"made-up-{time.monotonic()}")
    for _ in range(3):
        answer, _web = sign_in(gw)
        assert answer.status_code == 403 and "unknown key" in answer.text
    assert fake.jwks_fetches == 2


@pytest.mark.parametrize("document", [{"keys": "x"}, {"keys": [1, {"kty": "RSA"}]}, [1]])
def test_a_provider_whose_keys_are_broken_signs_nobody_in(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path, document: Any
) -> None:
    _, fake = provider
    fake.broken_jwks = document
    gw = gateway(start_gateway, upstream, fake, tmp_path)
    answer, web = sign_in(gw)
    assert answer.status_code == 403, answer.text
    assert "keys" in answer.text and not signed_in(web, gw)


def test_a_callback_not_started_in_this_browser_or_used_twice_is_refused(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path
) -> None:
    _, fake = provider
    gw = gateway(start_gateway, upstream, fake, tmp_path)
    web = browser()
    leave = web.get(gw.url + "/auth/login")
    back = web.get(leave.headers["location"]).headers["location"]
    # Another browser (no login cookie) given this callback: login CSRF.
    stranger = browser().get(back)
    assert stranger.status_code == 403 and "not started in this browser" in stranger.text
    assert web.get(back).status_code == 303  # the browser that started it
    # Used again, even with the (by then deleted) login cookie put back: refused.
    state = parse_qs(urlsplit(back).query)["state"][0]
    web.cookies.set("lmgate_login", state, domain="127.0.0.1", path="/auth")
    again = web.get(back)
    assert again.status_code == 403 and "used already" in again.text
    # Where to go afterwards: a path here, never another site.
    web = browser()
    leave = web.get(gw.url + "/auth/login?next=//evil.example/x")
    back = web.get(leave.headers["location"]).headers["location"]
    assert web.get(back).headers["location"] == "/ui/"


def test_only_pre_created_users_sign_in_without_auto_create(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path
) -> None:
    _, fake = provider
    gw = gateway(start_gateway, upstream, fake, tmp_path, auto_create=False)
    answer, _ = sign_in(gw)
    assert answer.status_code == 403 and "erin@example.com has no account here" in answer.text
    status, made = admin(gw, "POST", "/admin/users", {"email": "Erin@example.com",
                                                      "role": "viewer"})  # fmt: skip
    assert status == 201
    answer, web = sign_in(gw)
    assert answer.status_code == 303
    me = web.get(gw.url + "/auth/me").json()
    assert me["role"] == "viewer" and me["user_id"] == made["id"]


def test_a_provider_that_is_down_gets_a_503_page_with_retry_after(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path
) -> None:
    server, fake = provider
    gw = gateway(start_gateway, upstream, fake, tmp_path)
    server.stop()
    answer = httpx.get(gw.url + "/auth/login", timeout=20)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "cannot be reached" in answer.text and "<script" not in answer.text
    device = httpx.post(gw.url + "/auth/device", timeout=20)
    assert device.status_code == 503 and device.json()["error"]["code"] == "oidc_unavailable"
    assert 'lmgate_sign_ins_total{outcome="provider_down"} 1.0' in metrics(gw)


def test_sign_ins_under_way_are_bounded(
    start_gateway: Any, upstream: FakeUpstream, provider: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Anyone may start a sign-in, and each is kept until it returns or expires: a
    flood of them is refused (503) rather than grow the store without bound."""
    monkeypatch.setattr(sessions, "MAX_LOGINS", 3)
    _, fake = provider
    gw = gateway(start_gateway, upstream, fake, tmp_path)
    for _ in range(3):
        assert browser().get(gw.url + "/auth/login").status_code == 302
    flooded = browser().get(gw.url + "/auth/login")
    assert flooded.status_code == 503 and flooded.headers["retry-after"] == "60"
    assert "too many sign-ins under way" in flooded.text
