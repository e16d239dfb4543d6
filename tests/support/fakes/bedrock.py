"""A fake Bedrock runtime: the Converse API, refusing what AWS refuses.

Every request's SigV4 signature is recomputed with botocore (the library the AWS SDKs
sign with) from the fake's own credentials, over what actually arrived: a wrong
secret, a signature older than five minutes (by the fake's clock), or a credential
scoped to another region or service is a 403 with AWS's error type. A Bedrock API key
(bearer) is checked instead when the fake has one. Streams are real event-stream
frames (``application/vnd.amazon.eventstream``) with their CRCs.
"""

from __future__ import annotations

import datetime
import struct
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.fakes.upstream import Recorded, Script

ACCESS_KEY = "AKIDEXAMPLELMGATE0001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY01"
REGION = "us-east-1"
SKEW_LIMIT = datetime.timedelta(minutes=5)
EVENT_STREAM = "application/vnd.amazon.eventstream"


def _header(name: str, value: str) -> bytes:
    encoded = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(encoded)) + encoded


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths and their CRC), headers, payload, CRC."""
    head = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, orjson.dumps(data))


def exception(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json",
               ":message-type": "exception"}  # fmt: skip
    return frame(headers, orjson.dumps({"message": message}))


def reply(
    content: list[dict[str, Any]] | None = None,
    stop: str = "end_turn",
    usage: dict[str, Any] | None = None,
) -> Script:
    """A Converse reply."""
    return Script(
        json={
            "output": {
                "message": {"role": "assistant", "content": content or [{"text": "Hello!"}]}
            },
            "stopReason": stop,
            "usage": usage or {"inputTokens": 11, "outputTokens": 2, "totalTokens": 13},
            "metrics": {"latencyMs": 12},
        }
    )


def stream(*frames: bytes) -> Script:
    return Script(chunks=list(frames), done=False, headers={"Content-Type": EVENT_STREAM})


def text_stream(
    pieces: list[str], stop: str = "end_turn", usage: dict[str, Any] | None = None
) -> Script:
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
        for piece in pieces
    ]
    frames += [
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": stop}),
        event(
            "metadata",
            {
                "usage": usage or {"inputTokens": 11, "outputTokens": 2, "totalTokens": 13},
                "metrics": {"latencyMs": 12},
            },
        ),
    ]
    return stream(*frames)


def error(status: int, kind: str, message: str) -> Script:
    return Script(status=status, json={"message": message}, headers={"x-amzn-ErrorType": kind})


def refusal(
    recorded: Recorded,
    now: datetime.datetime | None = None,
    region: str = REGION,
    secret: str = SECRET_KEY,
    bearer: str | None = None,
) -> Script | None:
    """The 403 AWS would answer for this request's credentials, or None."""
    headers = {name.lower(): value for name, value in recorded.headers.items()}
    authorization = headers.get("authorization", "")
    if bearer is not None and authorization == f"Bearer {bearer}":
        return None
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return error(403, "AccessDeniedException", "Authorization header requires a signature")
    fields = dict(
        item.strip().split("=", 1)
        for item in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
    )
    access_key, _, scope_region, service, _ = fields["Credential"].split("/")
    if access_key != ACCESS_KEY:
        return error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    if scope_region != region or service != "bedrock":
        return error(
            403, "InvalidSignatureException",
            f"Credential should be scoped to a valid region and service ({region}/bedrock).",
        )  # fmt: skip
    stamp = headers.get("x-amz-date", "")
    signed_at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    current = now or datetime.datetime.now(datetime.UTC)
    if abs(current - signed_at) > SKEW_LIMIT:
        return error(403, "InvalidSignatureException", f"Signature expired: {stamp} is now earlier than the allowed window")  # fmt: skip
    # Recompute over what arrived: the signed headers, the path as sent, the body.
    signed = fields["SignedHeaders"].split(";")
    host = headers["host"]
    request = AWSRequest(
        recorded.method,
        f"http://{host}{recorded.target}",
        data=recorded.raw,
        headers={name: headers[name] for name in signed if name in headers},
    )
    request.context["timestamp"] = stamp
    token = headers.get("x-amz-security-token")
    auth = SigV4Auth(Credentials(access_key, secret, token), service, scope_region)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if expected != fields["Signature"]:
        return error(
            403, "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )  # fmt: skip
    return None


def checking(answer: Callable[[Recorded], Script], **expected: Any) -> Callable[[Recorded], Script]:
    """A FakeUpstream route: 403 for what AWS would refuse, else ``answer``'s (requests
    to other paths than Bedrock's ``/model/…`` go to ``answer`` unchecked)."""

    def route(recorded: Recorded) -> Script:
        if not recorded.path.startswith("/model/"):
            return answer(recorded)
        return refusal(recorded, **expected) or answer(recorded)

    return route
