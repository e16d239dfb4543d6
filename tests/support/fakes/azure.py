"""A fake Azure OpenAI resource and the App Service managed-identity endpoint that
azure-identity asks for Entra ID tokens, refusing what Azure refuses: a missing or
unknown ``api-version`` on the deployments API, a wrong ``api-key``, a bearer token
the identity endpoint did not issue, a deployment it does not have."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.support.fakes.upstream import Recorded, Script

API_KEY = "azure-resource-key-0123456789abcdef"
IDENTITY_HEADER = "identity-header-secret"
VERSIONS = {"2024-10-21", "2025-04-01-preview"}
TOKEN_PATH = "/msi/token"


def error(status: int, code: str, message: str) -> Script:
    return Script(status=status, json={"error": {"code": code, "message": message}})


def content_filter_refusal() -> Script:
    return Script(status=400, json={"error": {
        "code": "content_filter", "status": 400, "param": "prompt",
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "violence": {"filtered": True, "severity": "high"}}},
    }})  # fmt: skip


@dataclass
class FakeAzure:
    deployments: set[str]
    answer: Callable[[Recorded], Script]
    issued: list[str] = field(default_factory=list)  # Entra tokens handed out
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self, recorded: Recorded) -> Script:
        if recorded.path == TOKEN_PATH:
            return self._token(recorded)
        refused = self._refusal(recorded)
        return refused or self.answer(recorded)

    def _token(self, recorded: Recorded) -> Script:
        if recorded.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return error(401, "Unauthorized", "X-IDENTITY-HEADER is missing or wrong")
        query = parse_qs(urlsplit(recorded.target).query)
        resource = query.get("resource", [""])[0]
        if resource != "https://cognitiveservices.azure.com":
            return error(400, "invalid_resource", f"no such resource {resource!r}")
        token = f"entra-token-{next(self._serial)}"
        self.issued.append(token)
        expires = str(int(time.time()) + 3600)
        return Script(json={"access_token": token, "expires_on": expires,
                            "resource": resource, "token_type": "Bearer"})  # fmt: skip

    def _refusal(self, recorded: Recorded) -> Script | None:
        headers = recorded.headers
        bearer = headers.get("Authorization", "").removeprefix("Bearer ")
        if headers.get("api-key") != API_KEY and bearer not in self.issued:
            return error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")  # fmt: skip
        parts = recorded.path.split("/")
        if recorded.path.startswith("/openai/deployments/"):
            query = parse_qs(urlsplit(recorded.target).query)
            version = query.get("api-version", [""])[0]
            if version not in VERSIONS:
                return error(404, "404", "Resource not found")  # as Azure answers it
            if parts[3] not in self.deployments:
                return error(404, "DeploymentNotFound", f"The API deployment {parts[3]} for this resource does not exist.")  # fmt: skip
        elif recorded.path.startswith("/openai/v1/"):
            model = (recorded.body or {}).get("model")
            if model not in self.deployments:
                return error(404, "DeploymentNotFound", f"The API deployment {model} for this resource does not exist.")  # fmt: skip
        else:
            return error(404, "404", "Resource not found")
        return None
