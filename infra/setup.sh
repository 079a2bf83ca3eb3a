#!/usr/bin/env bash
# Installs the local toolchain into .kami/venv (moto server, the Lambda Runtime Interface
# Emulator from aws-sam-cli, cargo-lambda, cfn-lint, pytest, ...), pinned by
# infra/requirements.txt. Idempotent: a stamp keyed on the requirements' hash skips the
# work when nothing changed. Usage: infra/setup.sh [--force]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.kami/venv"
requirements="$repo/infra/requirements.txt"
python="${KAMI_PYTHON:-python3}"
force="${1:-}"

# Installs requirements file $2 into the venv $1 unless its stamp (the file's hash and the
# Python version) says it is there already.
install_venv() {
    local venv="$1" requirements="$2" what="$3" stamp="$1/.kami-requirements.sha256" want
    want="$( { sha256sum "$requirements" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    if [[ "$force" != "--force" && -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "setup: ${venv#"$repo/"} is up to date"
        return
    fi
    echo "setup: installing $what into ${venv#"$repo/"}"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
}

mkdir -p "$repo/.kami/logs"
install_venv "$venv" "$requirements" "the pinned toolchain (about a minute)"
# schemathesis (the API conformance check) in a venv of its own: its pins clash with sam's.
install_venv "$repo/.kami/schemathesis" "$repo/infra/requirements-schemathesis.txt" "schemathesis"

# Checks that cost nothing and catch a broken machine early.
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
rie="$("$venv/bin/python" -c 'import samcli, pathlib; print(pathlib.Path(samcli.__file__).parent / "local/rapid/aws-lambda-rie-x86_64")')"
[[ -x "$rie" ]] || { echo "setup: Runtime Interface Emulator missing at $rie" >&2; exit 1; }
[[ -x "$venv/bin/moto_server" ]] || { echo "setup: moto_server missing from .kami/venv" >&2; exit 1; }
