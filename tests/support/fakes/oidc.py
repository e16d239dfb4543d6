"""A scripted OpenID provider, to send lmgate the ID tokens a real one never would
(expired, forged, for another client, unsigned…) through a real sign-in. It refuses
what a provider refuses: a wrong client secret, an unknown or reused code, a
redirect URI or PKCE verifier that does not match the authorization request."""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fakes.upstream import Recorded, Script

CLIENT_ID, CLIENT_SECRET = "lmgate", "fake-provider-client-secret-0123456789"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeProvider:
    url: str
    claims: dict[str, Any] = field(
        default_factory=lambda: {"sub": "u1", "email": "erin@example.com", "name": "Erin"}
    )
    # Turns the claims and the signing key of an honest ID token into the token sent.
    tamper: Callable[[dict[str, Any], FakeProvider], str] | None = None
    jwks_fetches: int = 0
    broken_jwks: Any = None  # a JWKS document to send instead of the keys
    keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=lambda: [("k1", _new_key())])
    _codes: dict[str, dict[str, str]] = field(default_factory=dict)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def rotate(self) -> None:
        """A new signing key; the old one leaves the JWKS."""
        self.keys = [(f"k{len(self.keys) + 1}-{next(self._serial)}", _new_key())]

    def sign(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        current_kid, current = self.keys[0]
        return jwt.encode(claims, key or current, algorithm="RS256",
                          headers={"kid": kid or current_kid})  # fmt: skip

    def __call__(self, recorded: Recorded) -> Script:
        path = recorded.target.partition("?")[0]
        if path == "/.well-known/openid-configuration":
            return Script(json={
                "issuer": self.url, "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token", "jwks_uri": self.url + "/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            })  # fmt: skip
        if path == "/jwks":
            self.jwks_fetches += 1
            if self.broken_jwks is not None:
                return Script(json=self.broken_jwks)
            found = []
            for kid, key in self.keys:
                public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                found.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
            return Script(json={"keys": found})
        if path == "/authorize":
            return self._authorize(recorded)
        if path == "/token":
            return self._token(recorded)
        return Script(status=404, json={"error": "not_found"})

    def _authorize(self, recorded: Recorded) -> Script:
        query = {k: v[0] for k, v in parse_qs(urlsplit(recorded.target).query).items()}
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return Script(status=400, json={"error": "invalid_request"})
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return Script(status=400, json={"error": "invalid_request", "error_description":
                                            "PKCE (S256) is required"})  # fmt: skip
        code = f"code-{next(self._serial)}"
        self._codes[code] = query
        back = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        return Script(status=302, headers={"Location": back}, raw=b"")

    def _token(self, recorded: Recorded) -> Script:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if recorded.headers.get("Authorization") != f"Basic {expected}":
            return Script(status=401, json={"error": "invalid_client"})
        raw = recorded.raw.decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        asked = self._codes.pop(form.get("code", ""), None)  # a code works once
        if asked is None or form.get("redirect_uri") != asked["redirect_uri"]:
            return Script(status=400, json={"error": "invalid_grant"})
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != asked["code_challenge"]:
            return Script(status=400, json={"error": "invalid_grant", "error_description":
                                            "PKCE verification failed"})  # fmt: skip
        now = int(time.time())
        claims = {**self.claims, "iss": self.url, "aud": CLIENT_ID, "iat": now,
                  "exp": now + 300, "nonce": asked["nonce"]}  # fmt: skip
        token = self.tamper(claims, self) if self.tamper else self.sign(claims)
        return Script(json={"id_token": token, "access_token": "at-1", "token_type": "Bearer"})
