"""Command line: ``lmgate serve | check | models | keys | teams | users | usage``, and a
developer's ``lmgate login | key``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from lmgate import __version__
from lmgate.config import Config, ConfigError, load_config
from lmgate.observe import logs

if TYPE_CHECKING:
    from lmgate.routing.catalog import Catalog
    from lmgate.web.server import HotRoutes

log = logging.getLogger("lmgate")
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmgate", description="A self-hosted LLM gateway.")
    parser.add_argument("--version", action="version", version=f"lmgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    _config_argument(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 7860)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="uvicorn's line per request")
    serve.add_argument(
        "--log-format", choices=["text", "json"], help="default: logging.format, text"
    )

    check = commands.add_parser("check", help="validate a config file and exit")
    _config_argument(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also ask each provider for a one-token reply (its credentials, URL and proxy)",
    )
    models = commands.add_parser("models", help="print the model catalog as a table")
    _config_argument(models)

    keys = commands.add_parser("keys", help="manage API keys (kept in the store)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; it is printed once")
    _config_argument(create)
    create.add_argument("--name", required=True)
    _limit_arguments(create)
    create.add_argument("--expires", help="ISO date or datetime (UTC unless given)")
    create.add_argument("--user", help="whose key it is: a user's email or id")
    create.add_argument("--team", help="its team (default: its user's): a name or id")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    _config_argument(listing)
    listing.add_argument("--json", action="store_true", help="print JSON, not a table")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    _config_argument(revoke)
    revoke.add_argument("key_id")

    for kind in ("team", "user"):
        group = commands.add_parser(f"{kind}s", help=f"manage {kind}s and their budgets")
        actions = group.add_subparsers(dest="people_command", required=True)
        made = actions.add_parser("create", help=f"create a {kind}")
        _config_argument(made)
        if kind == "team":
            made.add_argument("--name", required=True)
        else:
            made.add_argument("--email", required=True)
            made.add_argument("--name", help="default: the email")
            made.add_argument("--team", help="a team's name or id")
            made.add_argument("--role", choices=["admin", "viewer", "member"], default="member")
        _limit_arguments(made)
        shown = actions.add_parser("list", help=f"list {kind}s, with this period's spend")
        _config_argument(shown)
        shown.add_argument("--json", action="store_true", help="print JSON, not a table")

    usage = commands.add_parser("usage", help="requests, tokens, errors and latency")
    _config_argument(usage)
    usage.add_argument("--since", default="24h", help="e.g. 30m, 1h, 7d (default: 24h)")
    usage.add_argument(
        "--by", default="model", choices=["model", "key", "provider", "session", "user", "team"]
    )
    usage.add_argument("--json", action="store_true", help="print JSON, not a table")

    login = commands.add_parser("login", help="sign in to a gateway; keep a personal key")
    login.add_argument("--gateway", required=True, help="the gateway's address, http(s)://…")
    login.add_argument("--name", help="the key's name (default: this machine's name)")
    login.add_argument("--print", action="store_true", help="also print the key")
    key = commands.add_parser("key", help="print the personal key kept for a gateway")
    key.add_argument("--gateway", required=True)

    args = parser.parse_args(argv)
    if args.command in ("login", "key"):  # the developer's side: no config here
        return _personal(args)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config, app = _load(args.config, args.preset)
    except ConfigError as error:
        where = args.config or (args.preset and f"preset {args.preset}") or "the built-in default"
        print(f"lmgate: invalid config ({where}):\n{error}", file=sys.stderr)
        return 2
    except Exception as error:  # building the gateway failed (a store path, say): one line
        from lmgate.observe.dependencies import describe

        log.debug("start-up failed", exc_info=error)
        print(f"lmgate: cannot start: {describe(error)}", file=sys.stderr)
        return 3
    if args.command == "serve":
        form = args.log_format or config.logging.format
        logs.setup(args.log_level, form)
        # Worker processes set their logging up from these (app_from_env).
        os.environ["LMGATE_LOG_LEVEL"], os.environ["LMGATE_LOG_FORMAT"] = args.log_level, form
    if args.command == "check":
        print(f"config ok: {len(config.providers)} providers, {len(config.models)} models")
        if args.connect:
            return asyncio.run(_probe(app.state.gateway.catalog))
        return 0
    try:
        if args.command == "models":
            _print_models(app.state.gateway.catalog)
            sys.stdout.flush()  # here, where a closed pipe can still be caught
            return 0
        if args.command in ("keys", "usage", "teams", "users"):
            code = asyncio.run(_accounts_command(args, config))
            sys.stdout.flush()
            return code
    except BrokenPipeError:  # `lmgate models | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return _serve(args, config, app)


def _personal(args: argparse.Namespace) -> int:
    from lmgate.accounts.login import LoginError, login, personal_key

    try:
        if args.command == "key":
            print(personal_key(args.gateway))
        else:
            minted = login(args.gateway, args.name)
            if args.print:
                print(minted["key"])
    except LoginError as error:
        print(f"lmgate: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _probe(catalog: Catalog) -> int:
    """One line per provider: a one-token reply from its first model, or why not."""
    from lmgate.canonical import ChatRequest, Message, TextPart
    from lmgate.errors import GatewayError, redact

    first: dict[str, Any] = {}
    for entry in catalog.entries:
        for deployment in entry.deployments:
            first.setdefault(deployment.provider.name, deployment)
    failed = 0
    for name, deployment in first.items():
        provider, target = deployment.provider, deployment.target
        request = ChatRequest(target.model, [Message("user", [TextPart("Hi")])], max_tokens=1)
        started = time.monotonic()
        try:
            await provider.start()
            async with asyncio.timeout(60):
                async for _ in provider.stream(request, target):
                    pass
            print(f"{name}: ok ({target.model}, {time.monotonic() - started:.2f} s)")
        except (GatewayError, TimeoutError) as error:
            failed += 1
            reason = str(error) or "no answer within 60 s"
            print(f"{name}: failed ({target.model}): {redact(reason, provider.secrets())}")
        finally:
            await provider.close()
    return 1 if failed else 0


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The limits and budgets a key, a user or a team holds."""
    parser.add_argument("--models", help="comma-separated model ids it may use (default: all)")
    parser.add_argument("--rpm", type=_positive, help="requests per minute")
    parser.add_argument("--tpm", type=_positive, help="tokens per minute")
    parser.add_argument("--budget-tokens", type=_positive, help="tokens a budget period")
    parser.add_argument("--budget-usd", type=_money, help="cost in USD a budget period")
    parser.add_argument(
        "--budget-period", choices=["total", "daily", "weekly", "monthly"], default="total",
        help="when the budgets reset, on UTC calendar boundaries (default: total, never)",
    )  # fmt: skip
    parser.add_argument(
        "--budget-reset-day", type=int, choices=range(1, 29), metavar="1-28",
        help="monthly: the day of the month the budgets reset (default 1)",
    )  # fmt: skip


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    names = ("rpm", "tpm", "budget_tokens", "budget_usd", "budget_period", "budget_reset_day")
    return {"models": models, **{name: getattr(args, name) for name in names}}


async def _people_command(args: argparse.Namespace, store: Any) -> int:
    import orjson

    from lmgate.accounts.people import People

    people = People(store)
    kind = "team" if args.command == "teams" else "user"
    if args.people_command == "create":
        settings = _limits(args)
        settings["name"] = args.name or getattr(args, "email", None)
        if kind == "user":
            settings["email"], settings["role"] = args.email.strip().lower(), args.role
            if args.team:
                team = await _find(people, "team", args.team)
                if team is None:
                    print(f"lmgate: no team {args.team!r}", file=sys.stderr)
                    return 1
                settings["team_id"] = team.id
        if await _find(people, kind, settings["email" if kind == "user" else "name"]):
            print(f"lmgate: that {kind} exists already", file=sys.stderr)
            return 1
        account = await people.create(kind, settings)  # type: ignore[arg-type]
        print(f"created {kind} {account.id} ({account.name})")
        return 0
    accounts = await people.list(kind)  # type: ignore[arg-type]
    now = time.time()
    if args.json:
        print(orjson.dumps([a.shown(now) for a in accounts]).decode())
        return 0
    rows: list[tuple[str, ...]] = [("ID", "NAME", "TEAM", "ROLE", "BUDGET USD", "USED USD",
                                    "BUDGET", "USED", "RESETS")]  # fmt: skip
    for a in accounts:
        used_tokens, used_usd = a.current(now)
        resets = a.shown(now)["budget_resets_at"]
        rows.append(
            (a.id, a.name, a.team_id or "-", a.role or "-",
             f"{a.budget_usd:g}" if a.budget_usd is not None else "-", f"{used_usd:.4f}",
             str(a.budget_tokens or "-"), str(used_tokens),
             time.strftime("%Y-%m-%d %H:%MZ", time.gmtime(resets)) if resets else "never")
        )  # fmt: skip
    _print_table(rows)
    return 0


async def _find(people: Any, kind: str, given: str) -> Any:
    """A user by email or id, a team by name or id."""
    for account in await people.list(kind):
        if given in (account.id, account.name, account.email):
            return account
    return None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive integer")
    return value


def _money(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e12:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive amount such as 25 or 2.50")
    return value


async def _accounts_command(args: argparse.Namespace, config: Config) -> int:
    import orjson

    from lmgate.accounts.accounts import parse_since
    from lmgate.accounts.limits import key_state
    from lmgate.accounts.store import Store
    from lmgate.errors import GatewayError
    from lmgate.web.admin import parse_expiry

    url = config.store.resolved_url(config.path)
    if url is None:
        print("lmgate: there is no store (store.url is none)", file=sys.stderr)
        return 2
    # On stderr, so that what is printed stays a table or JSON: which store this is.
    print(f"lmgate: config {_config_name(args)}, store {_store_name(config)}", file=sys.stderr)
    store = Store(url)
    try:
        await store.migrate()
        if args.command in ("teams", "users"):
            return await _people_command(args, store)
        if args.command == "usage":
            try:
                since = parse_since(args.since)
            except ValueError as error:
                print(f"lmgate: --since {error}", file=sys.stderr)
                return 2
            summary = await store.usage_summary(since, args.by)
            named = args.by in ("key", "user", "team")
            if named:
                if args.by == "key":
                    names = {key.id: key.name for key in await store.list_keys()}
                else:
                    from lmgate.accounts.people import People

                    listed = await People(store).list(args.by)
                    names = {account.id: account.name for account in listed}
                for row in summary:
                    row["name"] = names.get(row["group"], "-")
            if args.json:
                print(orjson.dumps(summary).decode())
                return 0
            header = (
                args.by.upper(), *(["NAME"] if named else []), "REQUESTS", "ERRORS", "INPUT",
                "OUTPUT", "COST USD", "P50 MS", "P95 MS",
            )  # fmt: skip
            cells = [
                (r["group"], *([r["name"]] if named else []), r["requests"], r["errors"],
                 r["input_tokens"], r["output_tokens"], _usd(r["cost"], r["unpriced"]),
                 _ms(r["p50_ms"]), _ms(r["p95_ms"]))
                for r in summary
            ]  # fmt: skip
            _print_table([header, *[tuple(str(cell) for cell in row) for row in cells]])
        elif args.keys_command == "create":
            try:
                expires = parse_expiry(args.expires) if args.expires else None
            except GatewayError as error:
                print(f"lmgate: --{error.message}", file=sys.stderr)
                return 2
            owners: dict[str, str | None] = {"user_id": None, "team_id": None}
            from lmgate.accounts.people import People

            for kind, given in (("user", args.user), ("team", args.team)):
                if given:
                    found = await _find(People(store), kind, given)
                    if found is None:
                        print(f"lmgate: no {kind} {given!r}", file=sys.stderr)
                        return 1
                    owners[f"{kind}_id"] = found.id
            limits = _limits(args)
            secret, key = await store.create_key(
                args.name, limits["models"], args.rpm, args.tpm, args.budget_tokens, expires,
                args.budget_usd, args.budget_period, args.budget_reset_day, **owners,
            )  # fmt: skip
            print(f"created key {key.id} ({key.name}); it is shown only once:\n{secret}")
        elif args.keys_command == "list":
            keys = await store.list_keys()
            now = time.time()
            if args.json:
                shown = [{**k.shown(now), "state": key_state(k, now)} for k in keys]
                print(orjson.dumps(shown).decode())
                return 0
            rows: list[tuple[str, ...]] = [
                ("ID", "NAME", "PREFIX", "MODELS", "RPM", "TPM", "BUDGET", "USED", "BUDGET USD",
                 "USED USD", "STATE")
            ]  # fmt: skip
            for key in keys:
                used_tokens, used_usd = key.current(now)
                period = "" if key.budget_period == "total" else f"/{key.budget_period}"
                rows.append(
                    (key.id, key.name, key.prefix + "…", ",".join(key.models or ["*"]),
                     str(key.rpm or "-"), str(key.tpm or "-"),
                     f"{key.budget_tokens}{period}" if key.budget_tokens else "-",
                     str(used_tokens),
                     f"{key.budget_usd:g}{period}" if key.budget_usd is not None else "-",
                     f"{used_usd:.4f}", key_state(key, now))
                )  # fmt: skip
            _print_table(rows)
        elif not await store.revoke_key(args.key_id):
            print(f"lmgate: no active key {args.key_id!r}", file=sys.stderr)
            return 1
        else:
            print(f"revoked key {args.key_id}")
    finally:
        await store.close()
    return 0


def _ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def _usd(cost: float | None, unpriced: int) -> str:
    """A cost, with how many of its requests had no price (their cost is not in it)."""
    shown = f"{cost or 0:.4f}"
    return f"{shown} ({unpriced} unpriced)" if unpriced else shown


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("LMGATE_CONFIG") or None,
        help="YAML config file (default: $LMGATE_CONFIG, else the built-in offline default)",
    )
    parser.add_argument(
        "--preset",
        default=os.environ.get("LMGATE_PRESET") or None,
        help="a config that ships with lmgate, by name: degpt (default: $LMGATE_PRESET)",
    )


def _load(path: str | None, preset: str | None) -> tuple[Config, HotRoutes]:
    from lmgate.providers import provider_problems

    config = load_config(path, preset, (provider_problems,))
    # Building the app validates what config parsing alone cannot (provider options);
    # one worker serves this very app (more build their own).
    from lmgate.web.app import build_app

    return config, build_app(config)


def _print_models(catalog: Catalog) -> None:
    rows: list[tuple[str, ...]] = [("ID", "NAME", "SUPPORT", "OWNED BY", "DEPLOYMENTS")]
    for entry in catalog.entries:
        targets = ", ".join(f"{d.provider.name}/{d.target.model}" for d in entry.deployments)
        rows.append((entry.id, entry.name, entry.support, entry.owned_by, targets))
    _print_table(rows)


def _serve(args: argparse.Namespace, config: Config, app: HotRoutes) -> int:
    from lmgate.web.gateway import WORKERS

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.server.api_keys and not _is_loopback(host):
        log.warning(
            "server.api_keys is empty: anyone who can reach %s:%s can use every model", host, port
        )
    # Worker processes build their app from the environment.
    os.environ.pop("LMGATE_CONFIG", None)
    os.environ.pop("LMGATE_PRESET", None)
    if args.config:
        os.environ["LMGATE_CONFIG"] = os.path.abspath(args.config)
    elif args.preset:
        os.environ["LMGATE_PRESET"] = args.preset
    os.environ[WORKERS] = str(args.workers)
    try:
        sock = _bind(host, port)
    except OSError as error:
        print(f"lmgate: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return 1
    log.info(
        "lmgate %s listening on http://%s:%s (config: %s, store: %s)",
        __version__,
        host,
        sock.getsockname()[1],
        _config_name(args),
        _store_name(config),
    )
    shared = None
    if args.workers > 1 and config.metrics.enabled and not os.environ.get(MULTIPROCESS_DIR):
        # Each worker keeps its metrics in files here; a scrape adds them all up.
        shared = tempfile.mkdtemp(prefix="lmgate-metrics-")
        os.environ[MULTIPROCESS_DIR] = shared
    try:
        return _run(args, config, app, sock)
    finally:
        sock.close()
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


def _config_name(args: argparse.Namespace) -> str:
    if args.config:
        return os.path.abspath(args.config)
    return f"preset {args.preset}" if args.preset else "the built-in default"


def _store_name(config: Config) -> str:
    from lmgate.accounts.accounts import shown_url

    url = config.store.resolved_url(config.path)
    return shown_url(url) if url else "none"


def _run(args: argparse.Namespace, config: Config, app: HotRoutes, sock: socket.socket) -> int:
    import uvicorn

    several = args.workers > 1
    settings = uvicorn.Config(
        "lmgate.web.app:app_from_env" if several else app,
        factory=several,
        ws="websockets-sansio",  # the Responses API over WebSocket (frontends/responses_socket.py)
        ws_max_size=int(config.server.max_body_mb * 2**20),
        workers=args.workers,
        loop="uvloop",
        http="lmgate.web.server:GuardedProtocol",  # httptools, with client timeouts and a cap
        log_level=args.log_level,
        log_config=None,  # uvicorn's records go to lmgate's handler (lmgate.observe.logs)
        access_log=args.access_log,
        lifespan="on",
        # The app cuts what is left at shutdown_grace with a proper error (Gateway.drain);
        # uvicorn's own deadline, later, only catches what could not be cut.
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace) + 5,
    )
    if several:
        _supervisor(settings, sock, args.config).run()
        return 0
    server = uvicorn.Server(settings)
    server.run(sockets=[sock])
    return 0 if server.started else 3  # the app did not start (its reason is logged)


def _supervisor(settings: Any, sock: socket.socket, path: str | None) -> Any:
    """uvicorn's supervisor of worker processes (it restarts one that dies), except
    that on SIGHUP it checks the config file and has each worker reload it in place,
    rather than restarting them all (a broken file would leave none)."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            if path is None:
                log.error("SIGHUP: no config file to read again (a preset or the default)")
                return
            from lmgate.providers import provider_problems

            try:
                load_config(path, checks=(provider_problems,))
            except ConfigError as error:
                log.error("config reload refused (the running config stays):\n%s", error)
                return
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

    return Supervisor(settings, sockets=[sock])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
