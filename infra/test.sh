#!/usr/bin/env bash
# Runs every check and test of Kami on this machine, setup included:
#   the local platform's unit tests, fmt, clippy, cargo test (against moto), cfn-lint, sam validate --lint, the build of
#   every function (cargo lambda), the sample events under the emulator, and the
#   end-to-end tests over HTTP against the local platform.
# Every step runs even if an earlier one failed; the exit code is non-zero if any failed.
#   infra/test.sh [--only NAME[,NAME...]]   (step names: see the summary)
# Set KAMI_SAM_BUILD=1 to add `sam build` (release arm64 cross build of every function: slow,
# and it needs `rustup target add aarch64-unknown-linux-gnu`, which a fresh machine lacks).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
only="${2:-}"
[[ "${1:-}" == "--only" ]] || only=""
export SAM_CLI_TELEMETRY=0 PYTHONPATH="$repo/infra${PYTHONPATH:+:$PYTHONPATH}"
py="$repo/.kami/venv/bin/python"
results=()
failed=0

step() {
    local name="$1"
    shift
    if [[ -n "$only" && ",$only," != *",$name,"* ]]; then
        return 0
    fi
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        results+=("PASS  $name ($((SECONDS - start))s)")
    else
        results+=("FAIL  $name ($((SECONDS - start))s)")
        failed=$((failed + 1))
    fi
}

if ! infra/setup.sh; then
    echo "infra/test.sh: setup failed" >&2
    exit 1
fi
step platform-unit "$py" -m pytest -q infra/tests
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step cargo-test cargo test --workspace
step cfn-lint "$repo/.kami/venv/bin/cfn-lint" template.yaml
step sam-validate "$repo/.kami/venv/bin/sam" validate --lint --region us-east-1 --template template.yaml
if [[ "${KAMI_SAM_BUILD:-}" == "1" ]]; then
    # rust-cargolambda is a SAM beta feature; cargo-lambda and zig come from the venv.
    PATH="$repo/.kami/venv/bin:$PATH" step sam-build "$repo/.kami/venv/bin/sam" build --beta-features \
        --template template.yaml --build-dir .kami/sam-build
fi
step build "$py" -m kami_local build
step events "$py" -m pytest -q events
KAMI_E2E_NO_BUILD=1 step e2e "$py" -m pytest -q tests/e2e

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
total=${#results[@]}
echo "infra/test.sh: $((total - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
