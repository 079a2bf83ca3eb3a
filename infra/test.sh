#!/usr/bin/env bash
# Runs every check and test of Kami on this machine, setup included:
#   the local platform's unit tests, fmt, clippy, the unit tests of shared (on the ports' fakes, no moto; the summary
#   says how long they take), cargo test (against moto), cfn-lint, sam validate --lint, the build of
#   every function (cargo lambda), the sample events under the emulator, and the
#   end-to-end tests over HTTP against the local platform, and the bench at its tiny size.
# Every step runs even if an earlier one failed; the exit code is non-zero if any failed.
#   infra/test.sh [--only NAME[,NAME...]]   (step names: see the summary)
# `sam build` runs too (x86_64 here; see the step); KAMI_SKIP_SAM_BUILD=1 skips it locally.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
only="${2:-}"
[[ "${1:-}" == "--only" ]] || only=""
# One-shot builds: incremental caches would only take disk (CI machines may have little).
export CARGO_INCREMENTAL=0
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
# The rules on fakes, no moto: built first, so the step's time and the summary line are
# the tests' own (libtest's "finished in").
unit_summary=""
unit_tests() {
    cargo test -p kami-shared --lib --no-run -q || return 1
    local out rc
    out="$(cargo test -p kami-shared --lib 2>&1)"
    rc=$?
    printf '%s\n' "$out"
    unit_summary="$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*finished in ([0-9.]+s)$/unit tests (shared, on fakes, no moto): \1 passed, \2 failed in \3/p' <<<"$out")"
    return $rc
}
step unit unit_tests
step cargo-test cargo test --workspace
step cfn-lint "$repo/.kami/venv/bin/cfn-lint" template.yaml
step sam-validate "$repo/.kami/venv/bin/sam" validate --lint --region us-east-1 --template template.yaml
# `sam build` as AWS would run it (rust-cargolambda through cargo lambda), then a check that
# it produced every function's bootstrap. arm64 cannot be built on a fresh machine of this
# kind (no aarch64 Rust target), so it builds x86_64 through the template's Architecture
# parameter, with LTO off to keep CI short (docs/bench.md measures the tuned profile).
sam_build() {
    PATH="$repo/.kami/venv/bin:$PATH" CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        "$repo/.kami/venv/bin/sam" build --beta-features --template template.yaml \
        --build-dir .kami/sam-build --parameter-overrides Architecture=x86_64 || return 1
    "$py" - <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "infra")
from kami_local import template as tpl
functions = [name for name, res in tpl.load(tpl.default_template())["Resources"].items()
             if res["Type"] == "AWS::Serverless::Function"]
missing = [f for f in functions if not (Path(".kami/sam-build") / f / "bootstrap").is_file()]
print(f"sam build produced {len(functions) - len(missing)} of {len(functions)} bootstraps", missing or "")
sys.exit(1 if missing else 0)
EOF
}
if [[ "${KAMI_SKIP_SAM_BUILD:-}" != "1" ]]; then
    step sam-build sam_build
fi
step build "$py" -m kami_local build
step events "$py" -m pytest -q events
KAMI_E2E_NO_BUILD=1 step e2e "$py" -m pytest -q tests/e2e
# Benchmarks are not tests: CI runs every measurement once at its smallest size, on the
# debug builds above, only to prove the bench works (docs/bench.md holds the recording).
KAMI_BENCH_PROFILE=debug step bench-tiny bash infra/bench.sh --tiny

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
[[ -n "$unit_summary" ]] && echo "$unit_summary"
total=${#results[@]}
echo "infra/test.sh: $((total - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
