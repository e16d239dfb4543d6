"""Command line: ``lmgate serve | check | models``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import sys

from lmgate import __version__
from lmgate.config import Config, ConfigError, load_config

log = logging.getLogger("lmgate")


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
    serve.add_argument("--access-log", action="store_true", help="log every request")

    check = commands.add_parser("check", help="validate a config file and exit")
    _config_argument(check)
    models = commands.add_parser("models", help="print the model catalog as a table")
    _config_argument(models)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _load(args.config)
    except ConfigError as error:
        where = args.config or "the built-in default config"
        print(f"lmgate: invalid config ({where}):\n{error}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"config ok: {len(config.providers)} providers, {len(config.models)} models")
        return 0
    if args.command == "models":
        _print_models(config)
        return 0
    return _serve(args, config)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("LMGATE_CONFIG") or None,
        help="YAML config file (default: $LMGATE_CONFIG, else the built-in offline default)",
    )


def _load(path: str | None) -> Config:
    config = load_config(path)
    # Building the gateway validates what config parsing alone cannot (provider options).
    from lmgate.app import Gateway

    Gateway(config)
    return config


def _print_models(config: Config) -> None:
    from lmgate.app import Gateway

    catalog = Gateway(config).catalog
    rows = [("ID", "NAME", "SUPPORT", "OWNED BY", "DEPLOYMENTS")]
    for entry in catalog.entries:
        targets = ", ".join(f"{d.provider.name}/{d.target.model}" for d in entry.deployments)
        rows.append((entry.id, entry.name, entry.support, entry.owned_by, targets))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.server.api_keys and not _is_loopback(host):
        log.warning(
            "server.api_keys is empty: anyone who can reach %s:%s can use every model", host, port
        )
    if args.config:
        # Worker processes build their app from the environment.
        os.environ["LMGATE_CONFIG"] = os.path.abspath(args.config)
    else:
        os.environ.pop("LMGATE_CONFIG", None)
    log.info("lmgate %s listening on http://%s:%s", __version__, host, port)
    uvicorn.run(
        "lmgate.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="on",
        # The app cuts what is left at shutdown_grace with a proper error (Gateway.drain);
        # uvicorn's own deadline, later, only catches what could not be cut.
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace) + 5,
    )
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
