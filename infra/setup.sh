#!/usr/bin/env bash
# Installs the local toolchain into .kami/venv (moto server, the Lambda Runtime Interface
# Emulator from aws-sam-cli, cargo-lambda, cfn-lint, pytest, ...), pinned by
# infra/requirements.txt. Idempotent: a stamp keyed on the requirements' hash skips the
# work when nothing changed. Usage: infra/setup.sh [--force]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.kami/venv"
requirements="$repo/infra/requirements.txt"
stamp="$venv/.kami-requirements.sha256"
python="${KAMI_PYTHON:-python3}"

want="$( { sha256sum "$requirements" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ "${1:-}" != "--force" && -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: .kami/venv is up to date"
else
    echo "setup: installing the pinned toolchain into .kami/venv (about a minute)"
    mkdir -p "$repo/.kami/logs"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi

# schemathesis (the API conformance check) in a venv of its own: its pins clash with sam's.
st_venv="$repo/.kami/schemathesis"
st_requirements="$repo/infra/requirements-schemathesis.txt"
st_stamp="$st_venv/.kami-requirements.sha256"
st_want="$( { sha256sum "$st_requirements" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -x "$st_venv/bin/schemathesis" && -f "$st_stamp" && "$(cat "$st_stamp")" == "$st_want" ]]; then
    echo "setup: .kami/schemathesis is up to date"
else
    echo "setup: installing schemathesis into .kami/schemathesis"
    [[ -x "$st_venv/bin/python" ]] || "$python" -m venv "$st_venv"
    "$st_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$st_requirements"
    echo "$st_want" > "$st_stamp"
fi

# Checks that cost nothing and catch a broken machine early.
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
rie="$("$venv/bin/python" -c 'import samcli, pathlib; print(pathlib.Path(samcli.__file__).parent / "local/rapid/aws-lambda-rie-x86_64")')"
[[ -x "$rie" ]] || { echo "setup: Runtime Interface Emulator missing at $rie" >&2; exit 1; }
[[ -x "$venv/bin/moto_server" ]] || { echo "setup: moto_server missing from .kami/venv" >&2; exit 1; }
