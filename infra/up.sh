#!/usr/bin/env bash
# Runs the whole Kami system locally: installs the toolchain (infra/setup.sh), starts moto
# server on loopback, provisions template.yaml, builds every function with cargo lambda,
# runs each under the Lambda Runtime Interface Emulator behind a local HTTP API, SQS
# event source mapping and schedule, seeds the demo product and card keys, and prints how
# to buy one. Ctrl-C stops everything.
#   infra/up.sh [--port 3000] [--release] [--no-build] [--max-instances 4] ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/infra/setup.sh"
export PYTHONPATH="$repo/infra${PYTHONPATH:+:$PYTHONPATH}"
exec "$repo/.kami/venv/bin/python" -m kami_local up --seed "$@"
