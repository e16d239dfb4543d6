"""The endpoints around chat, each in its client's protocol: model lists (OpenAI's,
Anthropic's and Google's shapes), token counts (Anthropic's and Gemini's), and the
Responses API's stored responses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts.usage import CLIENT_LEFT
from lmgate.canonical import ChatRequest
from lmgate.errors import GatewayError
from lmgate.frontends import anthropic_messages, gemini, openai_chat
from lmgate.frontends import base as replies
from lmgate.observe import tokens

if TYPE_CHECKING:
    from lmgate.web.app import Gateway


class Endpoints:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self, prefix: str) -> list[BaseRoute]:
        return [
            Route(f"{prefix}/v1/models", self.list_models, methods=["GET"]),
            Route(f"{prefix}/v1/models/{{model_id:path}}", self.get_model, methods=["GET"]),
            Route(f"{prefix}/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route(
                f"{prefix}/v1/responses/{{response_id}}",
                self.stored_response,
                methods=["GET", "DELETE"],
            ),
            Route(
                f"{prefix}/v1/responses/{{response_id}}/input_items",
                self.stored_response,
                methods=["GET"],
            ),
            Route(f"{prefix}/v1beta/models", self.gemini_models, methods=["GET"]),
            Route(f"{prefix}/v1beta/models/{{model_id:path}}", self.gemini_models, methods=["GET"]),
        ]

    async def gemini_count_tokens(self, request: Request, call: gemini.GeminiCall) -> Response:
        """POST models/{model}:countTokens."""
        return await self._count(request, call, call.parse_request, "totalTokens")

    async def gemini_models(self, request: Request) -> Response:
        """GET models and models/{model}, in Google's shape."""
        request_id = replies.request_id(request)
        call = gemini.GeminiCall("", False, False)
        try:
            await self.gateway.authenticate(request)
            model_id = request.path_params.get("model_id")
            if model_id is None:
                body = gemini.models_body(self.gateway.catalog)
            else:
                entry = self.gateway.catalog.get(model_id.removeprefix("models/"))
                if entry is None:
                    raise GatewayError("not_found", f"models/{model_id} is not found")
                body = orjson.dumps(gemini.model_object(entry))
        except GatewayError as error:
            return replies.error_reply(call, error, request_id)
        return Response(body, media_type="application/json", headers=replies.ids(request_id))

    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens."""

        def parse(body: bytes, headers: Mapping[str, str]) -> ChatRequest:
            return anthropic_messages.parse_request(body, headers, for_counting=True)

        return await self._count(request, anthropic_messages, parse, "input_tokens")

    async def _count(
        self,
        request: Request,
        frontend: replies.Frontend,
        parse: Callable[[bytes, Mapping[str, str]], ChatRequest],
        field: str,
    ) -> Response:
        """A request's prompt tokens, counted offline, as ``{field: n}``."""
        request_id = replies.request_id(request)
        try:
            await self.gateway.authenticate(request)
            chat = parse(await self.gateway.read_body(request), request.headers)
            self.gateway.catalog.resolve(chat.model)
            counted = await tokens.count_request_async(chat)
        except GatewayError as error:
            return replies.error_reply(frontend, error, request_id)
        except ClientDisconnect:
            return Response(status_code=CLIENT_LEFT)
        body = orjson.dumps({field: counted})
        return Response(body, media_type="application/json", headers=replies.ids(request_id))

    async def list_models(self, request: Request) -> Response:
        if replies.from_google(request):  # google-genai lists models at /v1/models too
            return await self.gemini_models(request)
        request_id = replies.request_id(request)
        # Anthropic's SDK asks for the same path; it sends anthropic-version, OpenAI's does not.
        anthropic = "anthropic-version" in request.headers
        frontend = anthropic_messages if anthropic else openai_chat
        try:
            await self.gateway.authenticate(request)
        except GatewayError as error:
            return replies.error_reply(frontend, error, request_id)
        body = frontend.models_body(self.gateway.catalog)
        return Response(body, media_type="application/json", headers=replies.ids(request_id))

    async def get_model(self, request: Request) -> Response:
        if replies.from_google(request):
            return await self.gemini_models(request)
        request_id = replies.request_id(request)
        try:
            await self.gateway.authenticate(request)
            model_id = request.path_params["model_id"]
            entry = self.gateway.catalog.get(model_id)
            if entry is None:
                raise GatewayError(
                    "not_found",
                    f"The model {model_id!r} does not exist",
                    param="model",
                    code="model_not_found",
                )
        except GatewayError as error:
            return replies.error_reply(openai_chat, error, request_id)
        body = orjson.dumps(openai_chat.model_object(entry))
        return Response(body, media_type="application/json", headers=replies.ids(request_id))

    async def stored_response(self, request: Request) -> Response:
        """GET / DELETE /v1/responses/{id}, GET …/{id}/input_items: the key's own only."""
        request_id = replies.request_id(request)
        response_id = request.path_params["response_id"]
        try:
            caller = await self.gateway.authenticate(request)
            if request.url.path.endswith("/input_items"):
                query = request.query_params
                limit = query.get("limit", "20")
                if not limit.isdigit() or not 1 <= int(limit) <= 100:
                    raise GatewayError("invalid_request", "limit: expected 1 to 100", param="limit")
                order = query.get("order", "desc")
                if order not in ("asc", "desc"):
                    raise GatewayError("invalid_request", "order: asc or desc", param="order")
                page = await self.gateway.conversations.input_items(
                    response_id, caller.key_id, int(limit), order, query.get("after")
                )
                body = orjson.dumps(page)
            elif request.method == "DELETE":
                await self.gateway.conversations.delete(response_id, caller.key_id)
                body = orjson.dumps({"id": response_id, "object": "response", "deleted": True})
            else:
                body = await self.gateway.conversations.get(response_id, caller.key_id)
        except GatewayError as error:
            return replies.error_reply(openai_chat, error, request_id)
        return Response(body, media_type="application/json", headers=replies.ids(request_id))
