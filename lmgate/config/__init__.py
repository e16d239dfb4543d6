"""Configuration: YAML with ``${ENV_VAR}`` interpolation, validated with pydantic.

Every problem is reported with the dotted path of the bad key, so a typo in a
200-line file points at its line's key rather than at a stack trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmgate import __version__
from lmgate.config.problems import (
    join,
    key_lines,
    located,
    reference_problems,
    validation_problems,
)


class ConfigError(Exception):
    """A config problem, already phrased for the user (path: what is wrong)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerTimeouts(_Strict):
    """Seconds a client connection may take (lmgate/web/server.py says what each bounds)."""

    keep_alive: float = Field(5, gt=0)  # idle between two requests
    head: float = Field(10, gt=0)  # to send a request's line and headers
    body: float = Field(60, gt=0)  # to send a request's body, once its headers are in
    write: float = Field(30, gt=0)  # a client may read nothing of its reply this long


class CorsConfig(_Strict):
    # Origins of web pages that may call the gateway ("*": any); none by default.
    allow_origins: list[str] = []
    max_age: int = Field(600, ge=0)  # seconds a browser may keep a preflight's answer


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    api_keys: list[str] = []
    route_prefixes: list[str] = ["/api"]
    max_body_mb: float = Field(32, gt=0)
    # On SIGTERM/SIGINT: seconds in-flight requests get to finish before they are cut.
    shutdown_grace: float = Field(30, ge=0)
    admin_key: str | None = None  # enables /admin/; no client key reaches it
    timeouts: ServerTimeouts = ServerTimeouts()
    # Open client connections; beyond, a new one gets a 503 (and never more than the
    # open-file limit, raised to its hard limit at start, allows).
    max_connections: int = Field(10_000, gt=0)
    # Names the gateway answers to (Host, without the port; "*": any). Unset: loopback
    # names only while it listens on a loopback address, any name otherwise.
    allowed_hosts: list[str] | None = None
    cors: CorsConfig = CorsConfig()

    @field_validator("admin_key")
    @classmethod
    def _no_empty_admin_key(cls, key: str | None) -> str | None:
        return key or None

    @field_validator("api_keys")
    @classmethod
    def _drop_empty(cls, keys: list[str]) -> list[str]:
        # "${LMGATE_KEY:-}" with the variable unset must not become a valid empty key.
        return [key for key in keys if key]

    @field_validator("route_prefixes")
    @classmethod
    def _normalise_prefixes(cls, prefixes: list[str]) -> list[str]:
        out = []
        for prefix in prefixes:
            prefix = "/" + prefix.strip("/")
            if prefix != "/":
                out.append(prefix)
        return out


class StoreConfig(_Strict):
    # sqlite:///PATH or postgresql://user:pass@host/db; default: lmgate.db next to the
    # config file (or in $LMGATE_DATA_DIR, else ~/.local/share/lmgate). "none": no store.
    url: str | None = None
    queue_size: int = Field(10_000, gt=0)  # usage records waiting to be written
    # Records per write, at most. Each write has a fixed cost on both threads: measured
    # under load (bench/run.py), recording cost +9% at 100, +6% at 500, +5% at 2,000.
    batch_size: int = Field(2_000, gt=0)
    flush_interval: float = Field(0.5, gt=0)  # seconds between writes
    key_cache_seconds: float = Field(10, ge=0)  # how long a key lookup is trusted
    # Seconds a request waits for the store (to connect, or to look a key up); beyond,
    # a key already seen is served from its cached entry, a new one gets a 503.
    timeout: float = Field(3, gt=0)

    @field_validator("url")
    @classmethod
    def _known_database(cls, url: str | None) -> str | None:
        if url and url != "none" and not url.startswith(("sqlite:", "postgresql:", "postgres:")):
            scheme = url.partition(":")[0]
            raise ValueError(
                f"lmgate keeps its state in SQLite (sqlite:///PATH) or PostgreSQL "
                f"(postgresql://user:pass@host/db), not {scheme!r}"
            )
        return url

    def resolved_url(self, config_path: Path | None) -> str | None:
        if self.url == "none":
            return None
        if self.url:
            return self.url
        directory = config_path.resolve().parent if config_path is not None else data_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # for its owner only
        return f"sqlite:///{directory / 'lmgate.db'}"


def data_dir() -> Path:
    """Where lmgate keeps state of its own: ``$LMGATE_DATA_DIR``, else
    ``~/.local/share/lmgate``."""
    default = Path.home() / ".local" / "share" / "lmgate"
    return Path(os.environ.get("LMGATE_DATA_DIR") or default)


class RedisConfig(_Strict):
    url: str | None = None  # redis://host:6379/0: limits and cooldowns shared by processes
    prefix: str = "lmgate:"
    # Seconds any Redis call may take: a frozen Redis must not hold requests.
    timeout: float = Field(0.5, gt=0)


class LimitsConfig(_Strict):
    # Redis unreachable: "open" counts limits in this process alone (a WARNING once per
    # outage); "closed" refuses the requests of keys with limits (503, Retry-After).
    on_backend_error: Literal["open", "closed"] = "open"


class CatalogInfo(_Strict):
    """The top-level fields of ``GET /v1/models``."""

    name: str = "lmgate"
    provider: str = "lmgate"
    version: str = __version__
    default_locale: str = "en-US"


class PriceConfig(_Strict):
    """USD per million tokens (see lmgate/pricing.py)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(None, ge=0)  # cached input read; default: input's
    cache_write: float | None = Field(None, ge=0)  # input written to the cache; default: input's
    currency: Literal["USD"] = "USD"


class DeploymentConfig(_Strict):
    provider: str
    model: str | None = None  # upstream model name; defaults to the entry id
    params: dict[str, Any] = {}  # merged into every upstream request body
    weight: float = Field(1.0, gt=0)
    # "think_tags": the model writes <think>…</think> in its text; split it out.
    reasoning: Literal["think_tags"] | None = None
    thinking: bool | None = None  # per deployment, overrides the entry's
    max_in_flight: int | None = Field(None, gt=0)  # concurrent requests to this deployment
    max_queued: int = Field(100, ge=0)  # requests waiting for a slot; more get 429 / 529
    price: PriceConfig | None = None  # wins over the model's and the price table's


class ModelConfig(_Strict):
    id: str = Field(min_length=1)
    # What the model does: chat (every chat API), or embedding (/v1/embeddings and
    # Gemini's embedContent); a request of the other kind is a 400 naming it.
    kind: Literal["chat", "embedding"] = "chat"
    dimensions: int | None = Field(None, gt=0)  # an embedding model's vector length
    max_input_tokens: int | None = Field(None, gt=0)  # per input, for an embedding model
    name: str | None = None
    owned_by: str = "lmgate"
    description: str = ""
    support: Literal["text", "image"] = "text"
    tip: str | None = None
    created: int | None = None
    context_window: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)  # caps what clients ask for
    aliases: list[str] = []
    # List the aliases in GET /v1/models as ids of their own (clients that pick models
    # by id pattern, such as Claude Code's /model picker, see them).
    publish_aliases: bool = False
    deployments: list[DeploymentConfig] = []
    # Shorthand for a single deployment.
    provider: str | None = None
    model: str | None = None
    params: dict[str, Any] = {}
    reasoning: Literal["think_tags"] | None = None  # default for the deployments
    # The model thinks on request: clients' reasoning_effort, and Anthropic clients'
    # thinking and output_config.effort, reach its upstream. False: they never do (a
    # model that does not reason may refuse them, and Claude Code sends thinking always).
    thinking: bool = False
    vision_fallback: str | None = None  # the model that takes requests with images
    tools: bool = True  # whether the model takes tool definitions
    balance: Literal["weighted", "least_in_flight"] = "weighted"
    price: PriceConfig | None = None  # for its deployments without a price of their own

    def all_deployments(self) -> list[DeploymentConfig]:
        deployments = list(self.deployments)
        if self.provider:
            shorthand = DeploymentConfig(
                provider=self.provider, model=self.model, params=self.params
            )
            deployments.insert(0, shorthand)
        return [
            item.model_copy(
                update={
                    "reasoning": item.reasoning or self.reasoning,
                    "thinking": self.thinking if item.thinking is None else item.thinking,
                    "price": item.price or self.price,
                }
            )
            for item in deployments
        ]


class MediaConfig(_Strict):
    max_image_mb: float = Field(20, gt=0)  # decoded size of one image
    max_images: int = Field(20, ge=0)  # per request
    # Bytes fetched for image URLs: all the images of one request, and all the fetches
    # under way in one process (beyond it, requests get a retryable 503/529).
    max_request_mb: float = Field(50, gt=0)
    max_fetching_mb: float = Field(200, gt=0)
    # http(s) image URLs fetched for upstreams that need bytes (inline_image_urls)
    fetch_timeout: float = Field(10, gt=0)
    allow_private_urls: bool = False  # also fetch from loopback, private, link-local hosts


class CooldownConfig(_Strict):
    failures: int = Field(3, gt=0)  # retryable failures in a row that take a deployment out
    seconds: float = Field(30, gt=0)  # how long it stays out before one request probes it


class AffinityConfig(_Strict):
    max_sessions: int = Field(100_000, gt=0)  # sessions remembered (least recent out)
    ttl: float = Field(3600, gt=0)  # seconds a session is kept after its last turn


class RoutingConfig(_Strict):
    auto: list[str] = []
    fallbacks: dict[str, list[str]] = {}  # model id -> models tried after its deployments
    retries: int = Field(2, ge=0)  # attempts after the first, per model
    backoff: float = Field(0.25, ge=0)  # seconds before the first retry of a deployment; doubles
    max_backoff: float = Field(8, ge=0)
    max_retry_wait: float = Field(30, ge=0)  # longest upstream Retry-After lmgate waits out
    queue_timeout: float = Field(30, gt=0)  # longest wait for a deployment's free slot
    cooldown: CooldownConfig = CooldownConfig()
    # A model name the catalog does not know: a 404 ("error"), or the routing.auto
    # models ("auto"; the built-in offline default does this).
    unknown_model: Literal["auto", "error"] = "error"
    # "session": an agent session's turns go to the deployment that served it last
    # (its prompt cache is there), while that one is usable. "none": balance each turn.
    affinity: Literal["session", "none"] = "session"
    affinity_sessions: AffinityConfig = AffinityConfig()


class ResponsesConfig(_Strict):
    """The Responses API frontend (``/v1/responses``)."""

    # Serve it over WebSocket too (Codex's first choice); false: the upgrade gets a
    # 426, and clients fall back to HTTP at once.
    websocket: bool = True
    # Tools no upstream model can be given (web_search, file_search, Codex's namespace
    # groups, …): "drop" them (named in x-lmgate-dropped-tools) or "refuse" with a 400.
    unsupported_tools: Literal["drop", "refuse"] = "drop"
    # The key that seals reasoning for stateless clients (encrypted_content); default: a
    # key file (responses.key) next to the config file, or in the data directory.
    secret: str | None = None
    # Days a stored response (store: true, the API's default) is kept for
    # previous_response_id and GET /v1/responses/{id}.
    retention_days: float = Field(30, gt=0)
    # What one key's stored responses may hold; past it, its requests with store: true
    # are refused (429) until it deletes some or they expire.
    max_stored_mb_per_key: float = Field(256, gt=0)


class MessagesConfig(_Strict):
    """The Anthropic Messages frontend (``/v1/messages``)."""

    # Server tools (web_search, code_execution, …) for a model whose upstream does not
    # run them: "drop" them (named in x-lmgate-dropped-tools) or "refuse" with a 400.
    unsupported_tools: Literal["drop", "refuse"] = "drop"


class MetricsConfig(_Strict):
    enabled: bool = True  # GET /metrics, in the Prometheus text format
    require_admin_key: bool = False  # else open, like /health (it shows no secret)
    # Requests, tokens and cost per API key (its id, never the secret): one series per
    # key, so off unless asked for.
    per_key_labels: bool = False


class OtelConfig(_Strict):
    """OpenTelemetry traces, sent as OTLP/HTTP (protobuf); needs ``lmgate[otel]``."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    headers: dict[str, str] = {}  # e.g. the collector's auth header
    service_name: str = "lmgate"
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of traces not sampled by the caller


class RequestLogConfig(_Strict):
    """Request and reply bodies, kept for the dashboard's recent requests (redacted:
    no header is kept, and the config's secrets are blanked)."""

    enabled: bool = False
    retention_days: float = Field(7, gt=0)
    max_body_kb: int = Field(256, gt=0)  # longer bodies are cut


class LoggingConfig(_Strict):
    format: Literal["text", "json"] = "text"  # or --log-format
    request_lines: bool = True  # a line per finished request, at INFO


class UiConfig(_Strict):
    enabled: bool = True  # the dashboard at /ui, signed in with server.admin_key or oidc


class OidcConfig(_Strict):
    """Sign-in with the company's OpenID provider: the dashboard (authorization code
    with PKCE) and ``lmgate login`` (the device grant, through the gateway)."""

    issuer: str  # discovery: {issuer}/.well-known/openid-configuration
    client_id: str
    client_secret: str | None = None  # none: a public client
    scopes: list[str] = ["openid", "email", "profile"]
    # The gateway's address as the provider redirects browsers to it (the callback is
    # {public_url}/auth/callback); unset: the address the browser used.
    public_url: str | None = None
    auto_create: bool = True  # a first sign-in creates the user; else only pre-created ones
    role_claim: str | None = None  # a claim (a string or a list) that decides the role
    roles: dict[str, Literal["admin", "viewer", "member"]] = {}  # claim value -> role
    default_role: Literal["admin", "viewer", "member"] = "member"
    team_claim: str | None = None  # a claim naming the user's team (its name or id)
    session_hours: float = Field(12, gt=0, le=24 * 90)
    key_days: float | None = Field(90, gt=0)  # a personal key's lifetime (lmgate login)
    timeout: float = Field(10, gt=0)  # each request to the provider

    @field_validator("issuer", "public_url")
    @classmethod
    def _an_address(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError("expected an https:// address")
        return url


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    catalog: CatalogInfo = CatalogInfo()
    providers: dict[str, dict[str, Any]] = {}
    models: list[ModelConfig] = []
    routing: RoutingConfig = RoutingConfig()
    media: MediaConfig = MediaConfig()
    store: StoreConfig = StoreConfig()
    redis: RedisConfig = RedisConfig()
    limits: LimitsConfig = LimitsConfig()
    responses: ResponsesConfig = ResponsesConfig()
    messages: MessagesConfig = MessagesConfig()
    metrics: MetricsConfig = MetricsConfig()
    otel: OtelConfig = OtelConfig()
    ui: UiConfig = UiConfig()
    oidc: OidcConfig | None = None
    logging: LoggingConfig = LoggingConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    prices: dict[str, PriceConfig] = {}  # by upstream model name: over the shipped table
    path: Path | None = Field(None, exclude=True)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, path: str = "", problems: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.
    A variable that is not set is a problem: raised, or added to ``problems``."""
    if isinstance(node, str):

        def lookup(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is None:
                if default is None:
                    problem = (
                        f"{path or '<root>'}: environment variable {name} is not set "
                        f"(write ${{{name}:-}} to allow it to be empty)"
                    )
                    if problems is None:
                        raise ConfigError(problem)
                    problems.append(problem)
                    return ""
                return default
            return value

        return _ENV.sub(lookup, node)
    if isinstance(node, dict):
        return {key: interpolate(value, join(path, key), problems) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, join(path, index), problems) for index, value in enumerate(node)]
    return node


# A further check of the interpolated data: its problems, as ``dotted.path: message``.
Check = Callable[[dict[str, Any]], list[str]]


def parse_config(raw: Any, path: Path | None = None, checks: Iterable[Check] = ()) -> Config:
    """The config of ``raw`` (a parsed file); a ``ConfigError`` with every problem of it
    (schema, environment variables, references, and ``checks``') at once."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>: the config file must be a mapping of sections")
    problems: list[str] = []
    data = interpolate(raw, problems=problems)
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems += validation_problems(error, model=Config)
    problems += reference_problems(data)
    for check in checks:
        problems += check(data)
    if problems or config is None:
        raise ConfigError("\n".join(problems))
    config.path = path
    return config


def load_config(
    path: str | os.PathLike[str] | None, preset: str | None = None, checks: Iterable[Check] = ()
) -> Config:
    """Load ``path``, or the named preset, or the built-in default when neither. A
    file's problems name their line (``file:line: dotted.path: message``)."""
    if path is not None and preset:
        raise ConfigError("give a config file or a preset, not both")
    if preset:
        file = PRESETS / f"{preset}.yaml"
        if not preset.isidentifier() or not file.is_file():
            known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
            raise ConfigError(f"unknown preset {preset!r} (known: {known})")
        # No path: a preset's state goes to the data directory, not beside the package.
        return parse_config(_read_yaml(file)[0], checks=checks)
    if path is None:
        return parse_config(default_config_dict(), checks=checks)
    raw, lines = _read_yaml(Path(path))
    try:
        return parse_config(raw, Path(path), checks)
    except ConfigError as error:
        raise ConfigError(located(str(error), Path(path), lines)) from None


PRESETS = Path(__file__).parent.parent / "data" / "presets"


def _read_yaml(file: Path) -> tuple[Any, dict[str, int]]:
    """The parsed file, and the line of each key and list item by dotted path."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the config file ({error.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    lines: dict[str, int] = {}
    key_lines(node, "", lines)
    return raw, lines


def default_config_dict() -> dict[str, Any]:
    """The offline default: the echo model, plus DeepSeek when a key is in the environment."""
    config: dict[str, Any] = {
        "providers": {"echo": {"type": "echo"}},
        "models": [
            {
                "id": "echo",
                "name": "Echo (offline)",
                "owned_by": "lmgate",
                "description": "Repeats the conversation back, word by word; needs no network",
                "support": "image",
                "tip": "Echo (offline)",
                "provider": "echo",
            },
            {
                "id": "echo-embed",
                "name": "Echo embeddings (offline)",
                "owned_by": "lmgate",
                "description": "Deterministic text embeddings (hashed words); needs no network",
                "kind": "embedding",
                "dimensions": 256,
                "provider": "echo",
            },
        ],
        # Any model name reaches echo: the reference documents' examples run as written.
        "routing": {"auto": ["echo"], "unknown_model": "auto"},
    }
    if os.environ.get("DEEPSEEK_API_KEY"):
        config["providers"]["deepseek"] = {
            "type": "openai",
            "base_url": "https://api.deepseek.com",
            "api_key": "${DEEPSEEK_API_KEY}",
        }
        config["models"] = [
            {
                "id": "deepseek-chat",
                "name": "DeepSeek V3.1",
                "owned_by": "deepseek",
                "description": "Suitable for reasoning and writing",
                "tip": "DeepSeek V3.1",
                "context_window": 128000,
                "max_output_tokens": 8192,
                "provider": "deepseek",
            },
            {
                "id": "deepseek-reasoner",
                "name": "DeepSeek R1",
                "owned_by": "deepseek",
                "description": "Strong writing and coding skills",
                "tip": "DeepSeek R1",
                "context_window": 128000,
                "max_output_tokens": 65536,
                "thinking": True,
                "provider": "deepseek",
            },
            *config["models"],
        ]
        config["routing"]["auto"] = ["deepseek-chat", "echo"]
    return config
