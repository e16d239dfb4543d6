"""Usage records: one per request, written off the request path.

A ``Meter`` follows one request (its events, how it ended) and hands a finished
record to the ``UsageRecorder``, which queues it (bounded: overflow is counted and
logged, never waited on) and writes batches to the store in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from lmgate.accounts.store import Spent, Store
from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    ReasoningDelta,
    Reply,
    Start,
    TextDelta,
    ToolCallStart,
    Usage,
)
from lmgate.errors import GatewayError
from lmgate.observe import logs

if TYPE_CHECKING:
    from lmgate.observe.pricing import Price
    from lmgate.observe.tracing import RequestSpan
    from lmgate.routing.catalog import Deployment

log = logging.getLogger("lmgate")
CLIENT_LEFT = 499  # nginx's status for a client that closed the connection
_NAME = 200  # the model columns' length
_COUNT = 2**31 - 1  # the token columns are 32-bit integers
_MESSAGE = 500  # the error message column's length


def _cost(price: Price, usage: Usage) -> float:
    return price.cost(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens or 0,
        usage.cache_write_tokens or 0,
    )


def _fit(name: str) -> str:
    return name.replace("\0", "")[:_NAME]


def _clamp(count: int) -> int:
    return min(max(count, 0), _COUNT)


class Settles(Protocol):
    """A request's hold of budgets: settled with what it spent."""

    def settle(self, tokens: int, usd: float) -> None: ...


class RowSink(Protocol):
    """Takes a finished request's usage row (``UsageRecorder``, or the metrics too)."""

    def submit(self, row: tuple[Any, ...]) -> None: ...


class Meter:
    """Builds the usage record of one request; ``finish`` may be called many times,
    the first call wins. Runs on every request: plain slots, and the record built
    once, as the tuple the store writes (``UsageRecord``'s field order)."""

    __slots__ = (
        "_attempt_at",
        "_deployment",
        "_key_id",
        "_key_name",
        "_lines",
        "_model",
        "_price",
        "_protocol",
        "_recorder",
        "_request_id",
        "_requested",
        "_session",
        "_started",
        "_stream",
        "_team_id",
        "_ttft_ms",
        "_upstream_began",
        "_upstream_last",
        "_upstream_ms",
        "_usage",
        "_user_id",
        "at",
        "done",
        "hold",
        "reply",
        "span",
    )

    def __init__(
        self, recorder: RowSink, request_id: str, protocol: str, lines: bool = False
    ) -> None:
        self._recorder = recorder
        self._lines = lines  # a log line when it finishes (logging.request_lines)
        self._key_name: str | None = None
        self.at = time.time()  # when the request arrived
        self._started = time.perf_counter()
        self._request_id = request_id
        self._protocol = protocol
        self._stream = False
        self._requested: str | None = None
        self._session: str | None = None
        self._user_id: str | None = None
        self._team_id: str | None = None
        self._key_id: str | None = None
        self._model: str | None = None
        self._deployment: str | None = None
        self._usage: Usage | None = None
        self._ttft_ms: float | None = None
        self._price: Price | None = None
        # perf_counter() times: the first upstream attempt, the current one, and the
        # upstream's last word (its first byte, then the end of its reply).
        self._upstream_began: float | None = None
        self._attempt_at = 0.0
        self._upstream_last = 0.0
        self._upstream_ms: float | None = None  # the answering upstream's first byte
        self.done = False
        # A non-stream request's reply as it is folded; read once at the end, where
        # watching each event would cost a generator layer per request.
        self.reply: Reply | None = None
        self.span: RequestSpan | None = None  # with otel.enabled
        # Of its key's (user's, team's) budgets: settled at the end.
        self.hold: Settles | None = None

    def request(self, chat: ChatRequest, key_id: str | None, key_name: str | None = None) -> None:
        self._requested, self._stream, self._key_id = chat.model, chat.stream, key_id
        self._key_name, self._session = key_name, chat.session

    def owners(self, user_id: str | None, team_id: str | None) -> None:
        """Whose key it came with: the record is theirs too (usage by user and team)."""
        self._user_id, self._team_id = user_id, team_id

    def see(self, event: Event) -> None:
        if isinstance(event, Start):
            self._model, self._deployment = event.model, event.deployment
        elif isinstance(event, Usage):
            self._usage = event
        elif self._ttft_ms is None and isinstance(
            event, TextDelta | ReasoningDelta | ToolCallStart
        ):
            self._ttft_ms = (time.perf_counter() - self._started) * 1000
        elif self.span is not None and isinstance(event, Finish):  # only traces need it
            self.span.finish_reason = event.reason

    # ---- told by the router (``router.Tally``) ---------------------------------------

    def attempt_began(self, deployment: Deployment) -> None:
        self._attempt_at = now = time.perf_counter()
        if self._upstream_began is None:
            self._upstream_began = now
        if self.span is not None:
            self.span.attempt_began(deployment)

    def attempt_failed(self, deployment: Deployment, error: GatewayError) -> None:
        self._upstream_last = time.perf_counter()
        # A request no deployment answered is recorded against the last one it tried.
        self._model = deployment.key.rpartition("#")[0] or self._model
        self._deployment = deployment.name
        if self.span is not None:
            self.span.attempt_failed(error)

    def answered(self, deployment: Deployment) -> None:
        self._upstream_last = now = time.perf_counter()
        self._upstream_ms = (now - self._attempt_at) * 1000
        self._price = deployment.price

    def upstream_ended(self) -> None:
        self._upstream_last = time.perf_counter()
        if self.span is not None:
            self.span.upstream_ended()

    def overhead_ms(self) -> float | None:
        """The request's time so far minus the upstream's (attempts, waits between
        them, and the answering one up to its last word so far)."""
        began = self._upstream_began
        if began is None:
            return None
        now = time.perf_counter()
        return max((now - self._started) - (max(self._upstream_last, began) - began), 0.0) * 1000

    def reply_headers(self, usage: Usage | None) -> dict[str, str]:
        """The gateway's overhead and, once the usage is known, the request's cost."""
        headers = {}
        if (overhead := self.overhead_ms()) is not None:
            headers["x-lmgate-overhead-ms"] = f"{overhead:.3f}"
        if usage is not None and self._price is not None:
            headers["x-lmgate-cost-usd"] = f"{_cost(self._price, usage):.8f}"
        return headers

    def cut_short(self, usage: Usage) -> None:
        """The tokens of a reply that ended before the upstream reported its usage."""
        if self._usage is None:
            self._usage = usage

    def finish(
        self, status: int, error_type: str | None = None, message: str | None = None
    ) -> None:
        if self.done:
            return
        self.done = True
        model, deployment, usage = self._model, self._deployment, self._usage
        reply = self.reply
        if reply is not None:
            if reply.deployment:
                model, deployment = reply.model, reply.deployment
            usage = reply.usage or usage
        cost = None
        if usage is None:
            input_tokens = output_tokens = cached_tokens = written = reasoning = 0
        else:
            input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
            cached_tokens = usage.cache_read_tokens or 0
            written, reasoning = usage.cache_write_tokens or 0, usage.reasoning_tokens or 0
            if self._price is not None:
                cost = _cost(self._price, usage)
        # What a client or an upstream chose (a model name, token counts) is made to
        # fit its column here: a record the store refuses would be lost.
        requested = self._requested
        if requested is not None and (len(requested) > _NAME or "\0" in requested):
            requested = _fit(requested)
        if model is not None and (len(model) > _NAME or "\0" in model):
            model = _fit(model)
        input_tokens = input_tokens if 0 <= input_tokens <= _COUNT else _clamp(input_tokens)
        output_tokens = output_tokens if 0 <= output_tokens <= _COUNT else _clamp(output_tokens)
        latency_ms = (time.perf_counter() - self._started) * 1000
        row = (
            self.at,
            self._request_id,
            self._protocol,
            self._stream,
            self._key_id,
            requested,
            model,
            deployment,
            deployment.partition("/")[0] if deployment else None,
            status,
            error_type,
            input_tokens,
            output_tokens,
            cached_tokens if 0 <= cached_tokens <= _COUNT else _clamp(cached_tokens),
            latency_ms,
            self._ttft_ms,
            written if 0 <= written <= _COUNT else _clamp(written),
            reasoning if 0 <= reasoning <= _COUNT else _clamp(reasoning),
            cost,
            self._upstream_ms,
            self.overhead_ms(),
            message[:_MESSAGE] if message is not None else None,
            self._session,
            self._user_id,
            self._team_id,
        )
        if self.hold is not None:  # what spent_by_key will count once the row is written
            self.hold.settle(input_tokens + output_tokens, cost or 0.0)
        self._recorder.submit(row)
        if self._lines and logs.REQUESTS.isEnabledFor(logging.INFO):
            logs.request_line(
                {
                    "request_id": self._request_id,
                    "key": self._key_name or self._key_id,
                    "requested_model": requested,
                    "model": model,
                    "deployment": deployment,
                    "status": status,
                    "duration_ms": round(latency_ms, 1),
                    "ttfb_ms": self._ttft_ms,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cost_usd": cost,
                    "error": error_type,
                }
            )
        if self.span is not None:
            if reply is not None and reply.finish is not None:
                self.span.finish_reason = reply.finish.reason
            self.span.end(row)

    async def watch(self, events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
        """Pass a stream's ``events`` on, noting what the record needs and how they
        ended. A failure before the stream started is the caller's to record: only it
        knows the status the client gets."""
        started = False
        try:
            async for event in events:
                self.see(event)
                started = True
                yield event
        except GatewayError as error:
            if started:
                self.finish(200, error.kind, error.message)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            await events.aclose()  # first, so that the router tells what was spent (cut_short)
            self.finish(CLIENT_LEFT, "client_disconnected")
            raise
        finally:
            await events.aclose()
        self.finish(200)


class UsageRecorder:
    def __init__(
        self,
        store: Store,
        queue_size: int = 10_000,
        batch_size: int = 2_000,
        flush_interval: float = 0.5,
        on_tokens: Callable[[dict[str, Spent]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_tokens = on_tokens  # after each batch: what each key spent, its new totals
        self.dropped = 0  # queue full
        self.bad = 0  # refused by the store
        self.written = 0
        self._queue: list[tuple[Any, ...]] = []  # record_row tuples
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def submit(self, row: tuple[Any, ...]) -> None:
        """Queue a record (a ``record_row`` tuple); never blocks. A full queue drops
        it, counted and logged."""
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "usage queue full (store.queue_size %d): %d records dropped so far",
                    self.queue_size,
                    self.dropped,
                )
            return
        self._queue.append(row)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, grace: float = 10.0) -> None:
        """Write everything still queued (graceful shutdown), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, grace)
        if self._queue:
            log.error("usage records not written at shutdown: %d", len(self._queue))

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while self._queue:
                    if not await self._flush_batch():
                        break
                    if len(self._queue) < self.batch_size and not self._stopping:
                        break  # what arrived meanwhile waits for the next round: big batches
            except Exception:  # a bug here must not stop recording (and so the limits)
                log.exception("usage writer failed; it goes on")
            if self._stopping and not self._queue:
                return

    async def _flush_batch(self) -> bool:
        """Write the next batch; False when the store is unreachable (the batch is
        queued again, for the next round). A batch the store refuses is split until
        the records it refuses are found: those are dropped (counted and logged), the
        rest is written."""
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        spent: dict[str, Spent] = {}
        parts = [batch]
        reachable = True
        while parts:
            rows = parts.pop()
            try:
                written = await self.store.record_rows(rows)
            except Exception as error:
                if not await self.store.reachable():  # an outage (logged once): retry later
                    self._queue[:0] = [*rows, *(row for part in parts for row in part)]
                    reachable = False
                    break
                if len(rows) > 1:
                    half = len(rows) // 2
                    parts += [rows[half:], rows[:half]]
                    continue
                self.bad += 1
                log.error(
                    "dropped a usage record the store refused (%d so far): %s; the record: %.1000r",
                    self.bad,
                    error,
                    rows[0],
                )
                continue
            self.written += len(rows)
            self.store.health.answered()
            for key_id, now in written.items():
                before = spent.get(key_id)
                if before is not None:
                    now = now._replace(
                        tokens=now.tokens + before.tokens, cost=now.cost + before.cost
                    )
                spent[key_id] = now
        if spent and self.on_tokens is not None:
            try:
                await self.on_tokens(spent)  # written, and counted against the keys' limits
            except Exception as error:
                log.warning("could not count tokens for key limits: %s", error)
        return reachable
