#!/usr/bin/env bash
# Build every cargo-fuzz target and run each for SECONDS (default 20).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-20}
cd "$ROOT/fuzz"
[ -f Cargo.toml ] || { echo "no fuzz targets yet"; exit 0; }
cargo +nightly fuzz build -O
for t in $(cargo +nightly fuzz list); do
  echo "-- fuzz $t (${SECS}s)"
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1 | tail -n 3
done
