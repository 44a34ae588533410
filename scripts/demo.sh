#!/usr/bin/env bash
# Quick start, step 1: five tasks contend for one Redlock over three local redis-server nodes.
# Installs redis-server first if it is missing. Set REDLOCK_NODES to use your own nodes instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-redis.sh
cargo run -p redlock-examples --example demo
