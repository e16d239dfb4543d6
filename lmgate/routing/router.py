"""Runs a request against the models it may go to: picks deployments (by weight or
fewest in flight), retries retryable failures with backoff and ``Retry-After``,
moves on to fallback models, honours per-deployment concurrency caps and circuit
breakers (``health.py``), and meters usage.

Nothing is retried once the first event reached the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from lmgate.canonical import (
    ChatRequest,
    Event,
    ReasoningDelta,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from lmgate.clock import SYSTEM, Clock
from lmgate.config import RoutingConfig
from lmgate.errors import GatewayError, Redactor
from lmgate.media.fetch import ImageFetcher
from lmgate.observe import tokens
from lmgate.routing.adapt import Adapter
from lmgate.routing.affinity import Affinity
from lmgate.routing.catalog import Deployment, ModelEntry
from lmgate.routing.reasoning import Keeper, ReasoningMemory

log = logging.getLogger("lmgate")
_CUT = "lmgate: cut at shutdown"
# Failures mid-reply that say something about the deployment, not the request.
_UNHEALTHY_KINDS = frozenset({"upstream", "timeout", "overloaded", "rate_limit"})
# Characters of a reply kept for counting its tokens (when the upstream reports none)
# before they are counted and let go.
_HELD_TEXT = 65_536


class Tally(Protocol):
    """Told what happens to one request upstream (``usage.Meter`` is one)."""

    def attempt_began(self, deployment: Deployment) -> None: ...
    def attempt_failed(self, deployment: Deployment, error: GatewayError) -> None: ...
    def answered(self, deployment: Deployment) -> None: ...
    def upstream_ended(self) -> None: ...
    def cut_short(self, usage: Usage) -> None:
        """The tokens of a reply that ended before the upstream reported its usage."""


class Router:
    def __init__(
        self,
        routing: RoutingConfig | None = None,
        fetcher: ImageFetcher | None = None,
        rng: random.Random | None = None,
        redactor: Redactor | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.routing = routing or RoutingConfig()
        self._clock = clock
        self._fetcher = fetcher
        # Upstream text in errors, before the first byte or mid-stream, loses every secret.
        self._redactor = redactor or Redactor(tuple)
        self._rng = rng or random.Random()
        self._live: set[asyncio.Task[object]] = set()  # tasks reading a reply
        # For the metrics, read when scraped: (what, deployment or model) -> count, what
        # being "retry" (an attempt failed and another followed), "fallback" (a model
        # gave up and the next one was tried; keyed by the model given up), or
        # "cooldown" (a circuit opened).
        self.counts: dict[tuple[str, str], int] = {}
        # Failed upstream attempts by (deployment, error kind), for the metrics.
        self.errors: dict[tuple[str, str], int] = {}
        # The last few failures of each deployment (unix time, kind, message), for the
        # dashboard; kept only when something fails.
        self.recent_errors: dict[str, deque[tuple[float, str, str]]] = {}
        # Where each agent session was served (routing.affinity: session), else None.
        self.affinity: Affinity | None = None
        if self.routing.affinity == "session":
            affinity = self.routing.affinity_sessions
            self.affinity = Affinity(affinity.max_sessions, affinity.ttl, clock)
        self.reasoning = ReasoningMemory(clock=clock)  # for clients that drop it
        # Told when a deployment's circuit opens (to share it with other processes).
        self.on_cooldown: Callable[[Deployment], None] | None = None

    async def stream(
        self, request: ChatRequest, chain: list[ModelEntry], tally: Tally | None = None
    ) -> AsyncGenerator[Event, None]:
        """The reply's events from the first model of ``chain`` that answers, starting
        with ``Start`` (which names the model, deployment and attempts) and always
        ending with ``Usage`` (counted offline when the upstream reported none).
        ``tally`` is told of every attempt; a reply cut short before its usage (the
        client left, even before ``Start`` reached it) is counted offline too, and told
        to ``tally.cut_short``: the upstream was sent the prompt and may have produced
        the answer.

        ``cut()`` ends it early with an error, wherever it is waiting.

        One generator from the answering attempt to the caller: every layer of
        generators costs each event about a microsecond."""
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        try:
            answer = await self._answer(request, chain, tally)
            deployment, events = answer.deployment, answer.events
            count = _Count(answer.sent, answer.keeper)
            try:
                try:
                    yield answer.start
                    # A streamed reply may be read on by another task than the one that
                    # waited for its start (asked once: per event it cost a sixth of a
                    # 200-chunk stream's CPU).
                    reader = asyncio.current_task()
                    if reader is not task and reader is not None:
                        self._live.discard(task)
                        self._live.add(task := reader)
                    if not isinstance(answer.first, Start):
                        count.note(answer.first)
                        yield answer.first
                    async for event in events:
                        count.note(event)
                        yield event
                        if count.held > _HELD_TEXT and not count.usage_seen:
                            await count.let_go()  # a long reply is counted as it goes
                except (asyncio.CancelledError, GeneratorExit):
                    if not count.usage_seen and tally is not None:
                        tally.cut_short(await count.estimate())
                    raise
                if answer.keeper is not None:
                    answer.keeper.done()
                if not count.usage_seen:
                    yield await count.estimate()
            except GatewayError as error:
                if error.kind in _UNHEALTHY_KINDS:
                    self._failed(deployment)
                    self._note(deployment, error)
                raise
            finally:
                deployment.health.release()
                await events.aclose()
                if tally is not None:
                    tally.upstream_ended()
        except GatewayError as error:
            raise self._redactor.error(error) from None
        except asyncio.CancelledError as cancel:
            if cancel.args != (_CUT,):
                raise
            task.uncancel()
            raise GatewayError(
                "overloaded", "the gateway is shutting down; send the request again", retry_after=1
            ) from None
        finally:
            self._live.discard(task)

    def cut(self) -> None:
        """End every request still being answered (at shutdown, after the grace period)."""
        for task in self._live:
            task.cancel(_CUT)

    def _count(self, what: str, name: str) -> None:
        key = (what, name)
        self.counts[key] = self.counts.get(key, 0) + 1

    async def _answer(
        self, request: ChatRequest, chain: list[ModelEntry], tally: Tally | None
    ) -> _Answer:
        """The first attempt along ``chain`` whose reply began, holding its
        deployment's slot (released by ``stream``); failed attempts are retried,
        and their models fallen back from, as the routing config says."""
        attempts = 0
        failure: GatewayError | None = None
        adapter = Adapter(request, self._fetcher)
        for position, entry in enumerate(chain):
            if position:
                given_up = chain[position - 1].id
                self._count("fallback", given_up)
                log.warning("model %s did not answer: falling back to %s", given_up, entry.id)
            # Deployments tried for this model, with when each may be retried (Retry-After).
            tried: dict[Deployment, float] = {}
            for number in range(self.routing.retries + 1):
                deployment = await self._pick(entry, tried, number, request.session)
                if deployment is None:
                    break
                tried[deployment] = 0.0
                dropped = _unrun_server_tools(request, deployment)
                attempts += 1
                if number:
                    self._count("retry", deployment.name)
                health = deployment.health
                if tally is not None:
                    tally.attempt_began(deployment)
                try:
                    await health.acquire(self.routing.queue_timeout, deployment.name)
                except GatewayError as error:
                    health.abandoned()
                    if tally is not None:
                        tally.attempt_failed(deployment, error)
                    failure = error
                    continue
                events: AsyncGenerator[Event, None] | None = None
                keeper = None
                if deployment.provider.takes_reasoning_back(deployment.target):
                    self.reasoning.restore(request)  # for clients that dropped it
                    keeper = self.reasoning.keeper(request)
                try:
                    sent = await adapter.request_for(entry, deployment)
                    events = adapter.reply(deployment, sent)
                    first = await anext(events)
                except (GatewayError, StopAsyncIteration) as error:
                    health.release()
                    if events is not None:
                        await events.aclose()
                    if isinstance(error, StopAsyncIteration):
                        error = GatewayError(
                            "upstream",
                            f"upstream {deployment.name} sent an empty reply",
                            retryable=True,
                        )
                    if tally is not None:
                        tally.attempt_failed(deployment, error)
                    self._note(deployment, error)
                    if not error.retryable:
                        health.abandoned()
                        error.attempts = attempts
                        raise error from None
                    self._failed(deployment)
                    if error.retry_after:
                        tried[deployment] = self._clock.monotonic() + error.retry_after
                    failure = error
                    continue
                except BaseException:
                    health.abandoned()
                    health.release()
                    if events is not None:
                        await events.aclose()
                    raise
                health.succeeded()
                if request.session and self.affinity is not None:
                    self.affinity.served(entry.id, request.session, deployment.key)
                if tally is not None:
                    tally.answered(deployment)
                start = Start(entry.id, deployment.name, attempts, dropped)
                return _Answer(deployment, sent, start, first, events, keeper)
            failure = failure or _cooling(entry, self._clock.monotonic())
        assert failure is not None
        failure.attempts = attempts
        raise failure

    def _note(self, deployment: Deployment, error: GatewayError) -> None:
        failed = (deployment.name, str(error.kind))
        self.errors[failed] = self.errors.get(failed, 0) + 1
        message = self._redactor(error.message)[:300]
        retry = " (retryable)" if error.retryable else ""
        log.warning("deployment %s failed%s: %s: %s", deployment.name, retry, error.kind, message)
        errors = self.recent_errors.get(deployment.name)
        if errors is None:
            errors = self.recent_errors[deployment.name] = deque(maxlen=5)
        errors.append((self._clock.time(), error.kind, message))

    def _failed(self, deployment: Deployment) -> None:
        health = deployment.health
        if health.failed():
            self._count("cooldown", deployment.name)
            log.warning(
                "deployment %s: circuit open for %gs after %d failures",
                deployment.name,
                health.cooldown_seconds,
                health.failures,
            )
            if self.on_cooldown is not None:
                self.on_cooldown(deployment)

    async def _pick(
        self,
        entry: ModelEntry,
        tried: dict[Deployment, float],
        number: int,
        session: str | None = None,
    ) -> Deployment | None:
        """The deployment for attempt ``number`` (from 0) at ``entry``: one not yet
        tried that is usable now (the session's own, when it has one), else a tried one
        again after backoff and its ``Retry-After`` (when within
        ``routing.max_retry_wait``). None when nothing is left: every deployment is
        cooling down or asked for too long a wait."""
        now = self._clock.monotonic()
        fresh = [d for d in entry.deployments if d not in tried and d.health.usable(now)]
        if fresh:
            pick = fresh[0] if len(fresh) == 1 else None
            if pick is None and session and self.affinity is not None:
                key = await self.affinity.deployment(entry.id, session)
                pick = next((d for d in fresh if d.key == key), None)
            if pick is None:
                pick = self._balance(entry, fresh)
            pick.health.claim(now)
            return pick
        backoff = self._backoff(number)
        waits = [
            (max(backoff, retry_at - now), deployment)
            for deployment, retry_at in tried.items()
            if deployment.health.usable(now) and retry_at - now <= self.routing.max_retry_wait
        ]
        if not waits:
            return None
        wait, pick = min(waits, key=lambda item: item[0])
        await asyncio.sleep(wait)
        return pick if pick.health.claim(self._clock.monotonic()) else None

    def _balance(self, entry: ModelEntry, deployments: list[Deployment]) -> Deployment:
        if entry.balance == "least_in_flight":
            return min(
                deployments, key=lambda d: (d.health.in_flight / d.weight, self._rng.random())
            )
        # Weighted, preferring deployments with a free slot over queueing at a full one.
        roomy = [d for d in deployments if d.health.has_room()] or deployments
        return self._rng.choices(roomy, weights=[d.weight for d in roomy])[0]

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter before attempt ``attempt`` (from 1)."""
        base = min(self.routing.max_backoff, self.routing.backoff * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)


def _cooling(entry: ModelEntry, now: float) -> GatewayError:
    soonest = min(d.health.open_until for d in entry.deployments) - now
    return GatewayError(
        "overloaded",
        f"model {entry.id}: every deployment is cooling down after repeated failures",
        retryable=True,
        retry_after=max(1.0, soonest),
    )


@dataclass(slots=True)
class _Answer:
    """An attempt whose reply began: its ``first`` event is read from ``events``."""

    deployment: Deployment
    sent: ChatRequest  # the request as this deployment was sent it
    start: Start
    first: Event
    events: AsyncGenerator[Event, None]
    keeper: Keeper | None


class _Count:
    """A reply's text held for an offline count of its tokens, for when the upstream
    reports none (or the reply is cut short before it does)."""

    __slots__ = ("_counted", "_keeper", "_output", "_request", "held", "usage_seen")

    def __init__(self, request: ChatRequest, keeper: Keeper | None) -> None:
        self._request, self._keeper = request, keeper
        self._output: list[str] = []  # the reply's text not counted yet
        self.held = self._counted = 0  # its characters; the tokens counted already
        self.usage_seen = False

    def note(self, event: Event) -> None:
        if self._keeper is not None:
            self._keeper.see(event)
        if isinstance(event, TextDelta | ReasoningDelta):
            self._output.append(event.text)
            self.held += len(event.text)
        elif isinstance(event, ToolCallDelta):
            self._output.append(event.arguments)
            self.held += len(event.arguments)
        elif isinstance(event, ToolCallStart):
            self._output.append(event.name)
        elif isinstance(event, Usage):
            self.usage_seen = True

    async def let_go(self) -> None:
        """Count the text held so far, and let it go."""
        self._counted += await tokens.count_text_async("".join(self._output))
        self._output.clear()
        self.held = 0

    async def estimate(self) -> Usage:
        prompt = await tokens.count_request_async(self._request)
        output = self._counted + await tokens.count_text_async("".join(self._output))
        return Usage(prompt, output, estimated=True)


def _unrun_server_tools(request: ChatRequest, deployment: Deployment) -> tuple[str, ...]:
    """The request's server tools this deployment's upstream does not run (it never
    gets them); a 400 when the client's frontend is set to refuse them."""
    if not request.server_tools or deployment.provider.runs_server_tools(request):
        return ()
    names = tuple(str(tool.get("name") or tool.get("type")) for tool in request.server_tools)
    if request.server_tools_policy == "refuse":
        raise GatewayError(
            "invalid_request",
            f"tools: server tools ({', '.join(names)}) run only on Anthropic upstreams, and "
            f"{deployment.name} is not one (messages.unsupported_tools is refuse)",
            param="tools",
            code="unsupported_tool",
        )
    return names
