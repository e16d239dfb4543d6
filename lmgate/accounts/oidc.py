"""The company's OpenID provider, as lmgate's sign-in uses it: discovery, the
authorization code exchange (with PKCE), the device grant, and the ID token checked by
PyJWT (signature against the provider's JWKS, issuer, audience, expiry, nonce).

Only what comes back from the provider's token endpoint over its own TLS connection is
trusted, and even that only once its ID token passes every check. Nothing here is kept
between requests but the provider's metadata and keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from lmgate.clock import SYSTEM, Clock
from lmgate.config import OidcConfig

log = logging.getLogger("lmgate")

_METADATA_SECONDS = 3600  # discovery is read again after this
_KEYS_REFRESH_SECONDS = 30  # an unknown key id fetches the JWKS at most this often
_LEEWAY = 60  # seconds of clock difference allowed with the provider
# Asymmetric algorithms only: "none" and HMAC (signed with the client secret) never.
_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
               "ES512", "EdDSA")  # fmt: skip
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ROLE_RANK = {"member": 0, "viewer": 1, "admin": 2}


class OidcError(Exception):
    """Sign-in failed: the provider refused or could not be reached, or its token did
    not pass a check. The message says which, and never holds a token."""


class ProviderDown(OidcError):
    """The provider did not answer: a sign-in may pass later (503, not 403)."""


class Pending(Exception):
    """The device grant's user has not approved (yet): the provider's error code
    (authorization_pending, slow_down, access_denied, expired_token)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed in, from a checked ID token (and the provider's userinfo)."""

    subject: str
    email: str
    name: str | None
    role: str | None  # from oidc.role_claim, when set and mapped
    team: str | None  # from oidc.team_claim


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OpenIdProvider:
    def __init__(self, config: OidcConfig, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: Any = None  # a PyJWT PyJWKSet
        self._keys_at = -float(_KEYS_REFRESH_SECONDS)
        self._algorithms: dict[Any, Any] = {}  # key id -> the algorithm its JWK names
        self._session: Any = None  # aiohttp.ClientSession, made on first use

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the flows -----------------------------------------------------------------

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, challenge: str
    ) -> str:
        metadata = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{metadata['authorization_endpoint']}?{urlencode(query)}"

    async def redeem_code(self, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}  # fmt: skip
        return await self._token(form)

    async def start_device(self) -> dict[str, Any]:
        """The device grant's first step (RFC 8628): codes for the user and the poller."""
        metadata = await self.metadata()
        endpoint = metadata.get("device_authorization_endpoint")
        if not endpoint:
            raise OidcError("the provider offers no device authorization grant")
        status, body = await self._post(endpoint, {"scope": " ".join(self.config.scopes)})
        if status != 200 or not isinstance(body, dict) or "device_code" not in body:
            raise OidcError(f"the provider refused the device authorization: {_reason(body)}")
        return body

    async def poll_device(self, device_code: str) -> dict[str, Any]:
        """The tokens once the user approved; ``Pending`` until then."""
        return await self._token({"grant_type": DEVICE_GRANT, "device_code": device_code})

    async def identity(self, tokens: dict[str, Any], nonce: str | None = None) -> Identity:
        """Who the tokens are for: the ID token checked, the userinfo endpoint asked for
        the claims that are not in it."""
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the provider sent no ID token (is 'openid' in oidc.scopes?)")
        claims = await self.check_id_token(id_token, nonce)
        wanted = [c for c in ("email", self.config.role_claim, self.config.team_claim) if c]
        access = tokens.get("access_token")
        if any(c not in claims for c in wanted) and isinstance(access, str):
            claims = {**await self._userinfo(access, claims["sub"]), **claims}
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise OidcError("the provider named no email for this user ('email' scope)")
        if claims.get("email_verified") is False:
            raise OidcError(f"the provider has not verified {email}")
        team = claims.get(self.config.team_claim) if self.config.team_claim else None
        name = claims.get("name")
        return Identity(
            subject=str(claims["sub"]),
            email=email.strip().lower(),
            name=name if isinstance(name, str) else None,
            role=self._role(claims),
            team=team if isinstance(team, str) else None,
        )

    async def check_id_token(self, token: str, nonce: str | None) -> dict[str, Any]:
        """The claims of an ID token that passes every check, else ``OidcError``."""
        import jwt

        metadata = await self.metadata()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise OidcError(f"the ID token is malformed: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in _ALGORITHMS:
            raise OidcError(f"the ID token's algorithm {algorithm!r} is not accepted")
        key = await self._signing_key(header.get("kid"), algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.config.client_id,
                issuer=metadata["issuer"],
                leeway=_LEEWAY,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise OidcError(f"the ID token was refused: {error}") from None
        audience = claims["aud"]
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != self.config.client_id:
            raise OidcError("the ID token was issued to another client (azp)")
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError("the ID token's nonce is not this sign-in's")
        return claims

    # ---- the provider's documents ---------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        if (
            self._metadata is not None
            and self.clock.monotonic() - self._metadata_at < _METADATA_SECONDS
        ):
            return self._metadata
        issuer = self.config.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        status, body = await self._get(url)
        if status != 200 or not isinstance(body, dict):
            raise OidcError(f"discovery at {url} answered {status}")
        if str(body.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            raise OidcError(f"discovery names issuer {body.get('issuer')!r}, not {issuer!r}")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(body.get(field), str):
                raise OidcError(f"discovery at {url} has no {field}")
        self._metadata, self._metadata_at = body, self.clock.monotonic()
        return body

    async def _signing_key(self, kid: Any, algorithm: str) -> Any:
        """The provider's key ``kid``; an unknown id reads the JWKS again (the provider
        rotated its keys), at most every few seconds (forged ids must not flood it)."""
        import jwt

        key = self._find(kid)
        if key is None and self.clock.monotonic() - self._keys_at >= _KEYS_REFRESH_SECONDS:
            metadata = await self.metadata()
            status, body = await self._get(metadata["jwks_uri"])
            if status != 200 or not isinstance(body, dict):
                raise OidcError(f"the provider's keys ({metadata['jwks_uri']}) answered {status}")
            try:
                keys = jwt.PyJWKSet.from_dict(body)
                algorithms = {k.get("kid"): k.get("alg") for k in body["keys"]}
            except (jwt.PyJWTError, AttributeError, KeyError, TypeError, ValueError) as error:
                # A provider's broken document is its failure, never lmgate's 500.
                raise OidcError(f"the provider's keys are unusable: {error!r}"[:300]) from None
            self._keys, self._algorithms = keys, algorithms
            self._keys_at = self.clock.monotonic()
            key = self._find(kid)
        if key is None:
            raise OidcError(f"the ID token is signed with an unknown key {kid!r}")
        if self._algorithms.get(key.key_id) not in (None, algorithm):
            raise OidcError(f"the provider's key {kid!r} is not for {algorithm}")
        return key.key

    def _find(self, kid: Any) -> Any:
        if self._keys is None:
            return None
        signing = [k for k in self._keys.keys if k.public_key_use in (None, "sig")]
        if kid is None:
            return signing[0] if len(signing) == 1 else None
        return next((k for k in signing if k.key_id == kid), None)

    def _role(self, claims: dict[str, Any]) -> str | None:
        """The highest role the role claim maps to (``oidc.roles``, else the role's
        own name); None when the claim is not configured."""
        claim = self.config.role_claim
        if not claim:
            return None
        values = claims.get(claim)
        values = [values] if isinstance(values, str) else values if isinstance(values, list) else []
        mapping = self.config.roles
        roles = [mapping.get(v) or (v if not mapping and v in ROLE_RANK else None) for v in values]
        found = [role for role in roles if role]
        return max(found, key=ROLE_RANK.__getitem__) if found else self.config.default_role

    # ---- HTTP ---------------------------------------------------------------------

    async def _token(self, form: dict[str, str]) -> dict[str, Any]:
        metadata = await self.metadata()
        status, body = await self._post(metadata["token_endpoint"], form)
        if status == 400 and isinstance(body, dict) and form["grant_type"] == DEVICE_GRANT:
            code = body.get("error")
            if code in ("authorization_pending", "slow_down", "access_denied", "expired_token"):
                raise Pending(code)
        if status >= 500:
            raise ProviderDown(f"the provider's token endpoint failed ({status})")
        if status != 200 or not isinstance(body, dict):
            raise OidcError(f"the provider's token endpoint refused: {_reason(body)}")
        return body

    async def _userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        endpoint = (await self.metadata()).get("userinfo_endpoint")
        if not endpoint:
            return {}
        headers = {"Authorization": f"Bearer {access_token}"}
        status, body = await self._get(endpoint, headers)
        if status != 200 or not isinstance(body, dict):
            raise OidcError(f"the provider's userinfo answered {status}")
        if body.get("sub") != subject:  # OpenID Connect Core 5.3.2
            raise OidcError("the provider's userinfo is for another subject")
        return body

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await self._request("GET", url, headers=headers)

    async def _post(self, url: str, form: dict[str, str]) -> tuple[int, Any]:
        """A form POST as this client: with its secret (client_secret_basic, each part
        form-encoded: RFC 6749 2.3.1), or its id alone (a public client)."""
        config, headers = self.config, None
        if config.client_secret:
            pair = f"{quote(config.client_id, safe='')}:{quote(config.client_secret, safe='')}"
            headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        else:
            form = {**form, "client_id": config.client_id}
        return await self._request("POST", url, data=form, headers=headers)

    async def _request(self, method: str, url: str, **options: Any) -> tuple[int, Any]:
        import aiohttp

        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=True)
        headers = {"Accept": "application/json", **(options.pop("headers", None) or {})}
        try:
            async with self._session.request(method, url, headers=headers, **options) as answer:
                raw = await answer.content.read(1 << 20)  # metadata, keys, tokens: small
                try:
                    return answer.status, orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return answer.status, raw[:200].decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or "timed out"
            raise ProviderDown(f"the provider is unreachable ({url}): {reason}") from None


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error_description") or body.get("error") or body)[:200]
    return str(body)[:200]
