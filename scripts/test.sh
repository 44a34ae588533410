#!/usr/bin/env bash
# Quick start, step 2: every test of the workspace against real redis-server nodes the harness
# starts on free ports, then the doc tests (nextest does not run those).
# Installs redis-server first if it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-redis.sh

status=0
if cargo nextest --version >/dev/null 2>&1; then
    # nextest runs each test in its own process, so a failing test's servers die with it.
    cargo nextest run --workspace || status=$?
else
    echo "test.sh: cargo-nextest not found, using cargo test"
    cargo test --workspace || status=$?
fi
if [ "$status" -eq 0 ]; then
    cargo test --doc --workspace || status=$?
fi

# A test killed mid-way can leave harness servers behind; their data dirs are named redlock-harness-*.
pkill -f redlock-harness || true
exit "$status"
