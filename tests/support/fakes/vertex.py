"""A fake Google token endpoint and a fake Vertex AI, refusing what Google refuses.

The token endpoint takes the JWT-bearer grant a service account's key signs: it
checks the assertion's RS256 signature with the account's public key (PyJWT), its
issuer, audience, scope and times, and issues an access token. Vertex accepts only the
tokens it issued, for its project and location, and checks each publisher's body:
Gemini's ``contents``; Anthropic's ``anthropic_version: vertex-2023-10-16`` and no
``model`` (the URL names it).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fakes.upstream import Recorded, Script

PROJECT = "lmgate-test"
LOCATION = "us-east5"
TOKEN_PATH = "/token"
EMAIL = "gateway@lmgate-test.iam.gserviceaccount.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def error(status: int, state: str, message: str) -> Script:
    return Script(
        status=status, json={"error": {"code": status, "message": message, "status": state}}
    )


@dataclass
class FakeVertex:
    url: str  # the fake's own base URL (the token URI is under it)
    answer: Callable[[Recorded], Script]
    issued: list[str] = field(default_factory=list)
    assertions: int = 0
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def key_file(self, directory: Path) -> Path:
        """A service account's JSON key whose token URI is this fake's."""
        private = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = directory / "service-account.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": "key-1",
            "private_key": private, "client_email": EMAIL, "client_id": "1234567890",
            "token_uri": self.url + TOKEN_PATH,
        }))  # fmt: skip
        return path

    def __call__(self, recorded: Recorded) -> Script:
        if recorded.path == TOKEN_PATH:
            return self._token(recorded)
        return self._refusal(recorded) or self.answer(recorded)

    def _token(self, recorded: Recorded) -> Script:
        raw = recorded.body if isinstance(recorded.body, bytes) else b""
        form = {name: values[0] for name, values in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Script(status=400, json={"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_URI,  # what google-auth signs for, wherever it posts
                issuer=EMAIL,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWTError as problem:
            return Script(
                status=400, json={"error": "invalid_grant", "error_description": str(problem)}
            )
        if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope")):
            return Script(status=400, json={"error": "invalid_scope"})
        self.assertions += 1
        token = f"ya29.fake-{next(self._serial)}"
        self.issued.append(token)
        return Script(json={"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _refusal(self, recorded: Recorded) -> Script | None:
        bearer = recorded.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.issued:
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        prefix = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/"
        if not recorded.path.startswith(prefix):
            return error(404, "NOT_FOUND", f"no such project or location: {recorded.path}")
        publisher, _, rest = recorded.path.removeprefix(prefix).partition("/models/")
        model, _, method = rest.partition(":")
        body: dict[str, Any] = recorded.body if isinstance(recorded.body, dict) else {}
        if publisher == "google" and method == "predict":  # text-embedding models
            instances = body.get("instances")
            most = 1 if model.startswith("gemini-embedding") else 250
            if not isinstance(instances, list) or not 0 < len(instances) <= most:
                return error(400, "INVALID_ARGUMENT", f"instances: 1 to {most} are allowed")
            if not all(
                isinstance(i, dict) and isinstance(i.get("content"), str) for i in instances
            ):
                return error(400, "INVALID_ARGUMENT", "instances[].content is required")
            return None
        if publisher == "google" and method in ("generateContent", "streamGenerateContent"):
            return (
                None
                if body.get("contents")
                else error(400, "INVALID_ARGUMENT", "contents is required")
            )
        if publisher == "anthropic" and method in ("rawPredict", "streamRawPredict"):
            if body.get("anthropic_version") != "vertex-2023-10-16":
                return error(
                    400, "INVALID_ARGUMENT", "anthropic_version: vertex-2023-10-16 is required"
                )
            if "model" in body:
                return error(400, "INVALID_ARGUMENT", "model: Extra inputs are not permitted")
            return None
        return error(404, "NOT_FOUND", f"Publisher model {publisher}/{model}:{method} not found")
