#!/usr/bin/env bash
# Kami's benchmarks: cold start, size, memory, handler instructions, warm latency, AWS
# requests and cost per order, flash sale, bulk import, a Python baseline.
#
#   infra/bench.sh            full sizes; writes docs/bench.md and docs/bench-*.png
#   infra/bench.sh --tiny     smallest sizes, proves every measurement works (CI); writes .kami/bench/tiny.md
#   infra/bench.sh --only cold,handler | --skip profiles | --render-only | --only bulk1m
#
# Installs what it needs (setup.sh's venv + infra/bench/requirements.txt, valgrind via
# apt-get when missing and running as root), builds the release bootstraps and
# bench-aws-calls, then runs infra/bench/run.py. Exits non-zero if a measurement fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
"$repo/infra/setup.sh" >&2
py="$repo/.kami/venv/bin/python"

render_only=0
for a in "$@"; do [[ "$a" == "--render-only" ]] && render_only=1; done

# The bench's own tools, constrained to the platform's pins.
stamp="$repo/.kami/venv/.kami-bench-requirements.sha256"
want="$(sha256sum "$repo/infra/bench/requirements.txt" "$repo/infra/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "bench: installing infra/bench/requirements.txt into .kami/venv" >&2
    constraints="$(mktemp)"
    grep -v '\[' "$repo/infra/requirements.txt" > "$constraints"   # pip constraints cannot carry extras
    "$py" -m pip install --quiet --disable-pip-version-check -c "$constraints" -r "$repo/infra/bench/requirements.txt"
    rm -f "$constraints"
    echo "$want" > "$stamp"
fi

if [[ $render_only -eq 0 ]]; then
    if ! command -v valgrind >/dev/null; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "bench: installing valgrind (apt-get)" >&2
            apt-get update -qq >&2 && apt-get install -y -qq valgrind >&2
        else
            echo "bench: valgrind is missing (apt-get install valgrind); the handler section will fail" >&2
        fi
    fi
    # KAMI_BENCH_PROFILE=debug (CI's --tiny run) measures the debug builds the tests
    # already made, so CI does not pay for a second, LTO release build; its figures are
    # not for recording.
    if [[ "${KAMI_BENCH_PROFILE:-release}" == "release" ]]; then
        echo "bench: building the release bootstraps and bench-aws-calls" >&2
        "$repo/infra/kami" build --release >&2
        cargo build --quiet --release -p kami-tests --bin bench-aws-calls >&2
    else
        echo "bench: building the debug bootstraps and bench-aws-calls" >&2
        "$repo/infra/kami" build >&2
        cargo build --quiet -p kami-tests --bin bench-aws-calls >&2
    fi
fi

export PYTHONPATH="$repo/infra${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/infra/bench/run.py" "$@"
