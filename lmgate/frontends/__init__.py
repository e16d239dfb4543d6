"""Client protocols: one module each, declaring its wire format and its ``ROUTES``
(see ``base.py``). The HTTP layer mounts every module listed here."""

from lmgate.frontends import (
    anthropic_messages,
    gemini,
    openai_chat,
    openai_embeddings,
    openai_responses,
    responses_create,
    responses_socket,
)

FRONTENDS = (
    openai_chat,
    openai_embeddings,
    anthropic_messages,
    openai_responses,
    responses_create,
    responses_socket,
    gemini,
)
