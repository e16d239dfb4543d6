#!/usr/bin/env bash
# Install everything lmgate needs for development, then run every gate:
# lint, format, types, and the whole test suite (the real client programs included).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests run real PostgreSQL and Redis servers (private instances, started by
# the tests themselves) and drive the dashboard in the system's Chromium; aider gets a
# venv of its own (below), which Debian's python3 makes only with python3-venv. Install
# them when missing.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ! command -v redis-server >/dev/null \
    || ! command -v chromium >/dev/null || ! python3 -c "import ensurepip" 2>/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql redis-server chromium \
        python3-venv
fi
export LMGATE_REQUIRE_SERVERS=1  # here a missing server is a failure, not a skip

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev,clients]'

# The real client programs (Claude Code, opencode, the AI SDK), pinned by the lock file;
# installed again only when the lock file changed since the last install. `npm install`
# rather than `npm ci`: the registry here lacks some other platforms' optional binaries,
# which `npm ci` counts as a lock file out of sync.
clients=tests/clients
if ! cmp -s "$clients/package-lock.json" "$clients/node_modules/.lmgate-installed"; then
    (cd "$clients" && npm install --no-audit --no-fund --loglevel=error)
    cp "$clients/package-lock.json" "$clients/node_modules/.lmgate-installed"
fi
# aider pins its own litellm and openai: it gets a venv of its own, made again when its
# pin (tests/clients/aider.txt) changes.
aider=$clients/.aider
if ! cmp -s "$clients/aider.txt" "$aider/.lmgate-installed"; then
    rm -rf "$aider"
    python3 -m venv "$aider"
    "$aider/bin/pip" install --quiet --disable-pip-version-check -r "$clients/aider.txt"
    cp "$clients/aider.txt" "$aider/.lmgate-installed"
fi
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest -q "$@"
