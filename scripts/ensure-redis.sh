#!/usr/bin/env bash
# Makes sure `redis-server` is on PATH, installing Debian/Ubuntu's package if it is not.
# Idempotent: does nothing when redis-server is already there. The tests and the demo start their
# own servers on free ports; if the package also starts a system service on 6379, that is
# harmless, because nothing here uses 6379.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "ensure-redis: $(redis-server --version | head -n 1) at $(command -v redis-server)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: redis-server is not installed and apt-get is unavailable;" >&2
    echo "ensure-redis: install redis-server (or valkey-server with REDLOCK_SERVER=valkey-server) yourself" >&2
    exit 1
fi

# Root runs apt-get directly; anyone else needs sudo.
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "ensure-redis: redis-server is not installed, and installing it needs root or sudo" >&2
    exit 1
fi

echo "ensure-redis: redis-server not found, installing it with apt-get"
if ! "${sudo[@]}" apt-get update -qq \
    || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; then
    echo "ensure-redis: apt-get could not install redis-server" >&2
    exit 1
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure-redis: redis-server was installed but is not on PATH (PATH=$PATH)" >&2
    exit 1
fi
echo "ensure-redis: installed $(redis-server --version | head -n 1)"
