#!/usr/bin/env bash
# The web page of `semla serve` in a real headless browser: starts the server
# on the committed tiny world, runs check_page.mjs (Chromium over the DevTools
# protocol) and leaves the screenshot in OUT/page.png. Installs Chromium from
# the Debian packages when it is missing and it can; skips with a message when
# it cannot (no Chromium, no Node >= 20).
#
# usage: tools/web/check-page.sh [SEMLA_BIN] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/semla}
out=${2:-target/web-check}
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "check-page: installing chromium from the Debian packages"
        apt-get install -y -q chromium >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || true
    fi
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "check-page: SKIPPED: no chromium (apt-get install chromium)"
    exit 0
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
    echo "check-page: SKIPPED: needs Node >= 20 (found ${node_major})"
    exit 0
fi
fixtures=crates/semla-py/tests/fixtures
mkdir -p "$out"
log="$out/serve.log"
"$bin" serve --model "$fixtures/model" --library "$fixtures/library" --bind 127.0.0.1:0 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
address=""
for _ in $(seq 1 300); do
    address=$(sed -n 's|.*listening on \(http://[0-9.:]*\).*|\1|p' "$log" | head -n 1)
    if [ -n "$address" ] && curl -fsS "$address/health/ready" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
if [ -z "$address" ]; then
    echo "check-page: the server did not start:" >&2
    cat "$log" >&2
    exit 1
fi
node --experimental-websocket --no-warnings tools/web/check_page.mjs \
    "$address/" "$fixtures/images/night.png" "$out/page.png"
# SIGTERM drains and stops the server with status 0.
kill -TERM "$server"
wait "$server"
trap - EXIT
echo "check-page: passed; screenshot in $out/page.png"
