#!/usr/bin/env bash
# The peers bench/run.py --peers measures beside lmgate, pinned, into bench/.peers/:
# LiteLLM's proxy from PyPI (in a venv of its own), Portkey's gateway and
# claude-code-router from npm.
set -euo pipefail
cd "$(dirname "$0")"
LITELLM=1.109.1
PORTKEY=1.15.2
CCR=1.0.73  # claude-code-router, for bench/ccr.py (its 1.x line is the one Claude Code users run)
mkdir -p .peers
python3 -m venv .peers/venv
# litellm[proxy] pins litellm-proxy-extras and litellm-enterprise to releases PyPI may
# not carry: install the extra's requirements from the wheel, with those two unpinned.
.peers/venv/bin/pip install -q "litellm==$LITELLM"
.peers/venv/bin/python - <<'PY' > .peers/proxy-requirements.txt
import importlib.metadata as metadata
import re

for requirement in metadata.requires("litellm") or []:
    spec, _, marker = requirement.partition(";")
    marker = marker.replace("'", '"')
    if 'extra == "proxy"' not in marker or 'python_full_version >= "3.15"' in marker:
        continue
    spec = spec.strip()
    if spec.startswith(("litellm-proxy-extras", "litellm-enterprise")):
        spec = re.split(r"[=<>!]", spec)[0]
    print(spec)
PY
.peers/venv/bin/pip install -q -r .peers/proxy-requirements.txt
(cd .peers && { [ -f package.json ] || echo '{"private": true}' > package.json; } \
  && npm install --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY" \
     "@musistudio/claude-code-router@$CCR")
echo "peers installed in bench/.peers"
