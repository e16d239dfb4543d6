"""The OpenID provider of the sign-in tests: the certified npm ``oidc-provider``, run by
node on a loopback port (tests/clients/oidc_provider.mjs), and what a person does on
its pages (sign in, approve a device), in Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.support.programs import HERE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLIENT_ID, CLIENT_SECRET = "lmgate", "lmgate-test-client-secret"
# Logins on the provider, with the claims it vouches for.
ACCOUNTS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice",
              "role": "lmgate-admins", "team": "platform"},
    "bob": {"email": "bob@example.com", "email_verified": True, "name": "Bob",
            "role": "developers", "team": "platform"},
    "carol": {"email": "carol@example.com", "email_verified": True, "name": "Carol",
              "role": "auditors"},
}  # fmt: skip
ROLES = {"lmgate-admins": "admin", "auditors": "viewer", "developers": "member"}


class IdentityProvider:
    def __init__(self, redirect_uri: str) -> None:
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("oidc-provider is not installed: scripts/test.sh installs tests/clients")
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        settings = {"clients": [client], "accounts": ACCOUNTS}
        # Its warnings, read when it fails to start; closed by stop().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            ["node", str(HERE / "oidc_provider.mjs"), orjson.dumps(settings).decode()],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "NODE_ENV": "test"},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"oidc-provider did not start: {self.log.read().decode()}")
        self.issuer = f"http://127.0.0.1:{orjson.loads(line)['port']}"

    def config(self, **extra: Any) -> dict[str, Any]:
        """The gateway's ``oidc`` section for this provider."""
        return {
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email", "profile", "lmgate"],
            "role_claim": "role",
            "roles": ROLES,
            "team_claim": "team",
            **extra,
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.log.close()


def identity_provider(redirect_uri: str) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(redirect_uri)
    try:
        yield provider
    finally:
        provider.stop()


def quiet_fonts(context: Any) -> None:
    """The provider's own pages import a web font; here there is no internet."""
    context.route("https://fonts.googleapis.com/**",
                  lambda route: route.fulfill(body="", content_type="text/css"))  # fmt: skip


def sign_in_on_provider(page: Any, login: str) -> None:
    """On the provider's login page: any password signs the login in."""
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")


def approve_device(page: Any, url: str, login: str) -> None:
    """What a developer does with the address ``lmgate login`` prints."""
    page.goto(url)
    page.click("button[type=submit]")  # "Continue": the code shown is the one printed
    sign_in_on_provider(page, login)
    page.wait_for_selector("text=Sign-in Success")
