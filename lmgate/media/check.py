"""Images in requests: data-URL decoding, type sniffing, and the configured limits.

Errors name the image by the client's own path (``messages[0].content[1]``),
which frontends record on each ``ImagePart``.
"""

from __future__ import annotations

import binascii
from base64 import b64decode

from lmgate.canonical import ChatRequest, ImagePart, ToolResultPart
from lmgate.errors import invalid

ACCEPTED = "png, jpeg, gif or webp"


def sniff(data: bytes) -> str | None:
    """The image type from the bytes' signature; the declared type is not trusted."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_data_url(url: str, where: str) -> tuple[str, bytes]:
    """``data:image/png;base64,…`` → (declared media type, bytes)."""
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        raise invalid(f"{where}: a data URL must look like data:image/png;base64,…", where)
    try:
        data = b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}: the image's base64 data is not valid", where) from None
    return header[: -len(";base64")] or "application/octet-stream", data


def images(request: ChatRequest) -> list[ImagePart]:
    found = []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, ImagePart):
                found.append(part)
            elif isinstance(part, ToolResultPart):
                found.extend(inner for inner in part.content if isinstance(inner, ImagePart))
    return found


def check(request: ChatRequest, max_images: int, max_image_bytes: int) -> bool:
    """Validate every image of a request in place (the sniffed type replaces the
    declared one); returns whether the request has images."""
    parts = images(request)
    if len(parts) > max_images:
        raise invalid(
            f"messages: {len(parts)} images; at most {max_images} are allowed (media.max_images)",
            "messages",
        )
    for part in parts:
        where = part.where or "messages"
        if part.data is None:
            if not (part.url or "").startswith(("http://", "https://")):
                raise invalid(f"{where}: an image URL must be a data:, http: or https: URL", where)
            continue
        if len(part.data) > max_image_bytes:
            size, limit = len(part.data) / 2**20, max_image_bytes / 2**20
            message = f"the image is {size:.1f} MB; the limit is {limit:g} MB (media.max_image_mb)"
            raise invalid(f"{where}: {message}", where)
        kind = sniff(part.data)
        if kind is None:
            raise invalid(f"{where}: unsupported image type; send {ACCEPTED}", where)
        part.media_type = kind
    return bool(parts)
