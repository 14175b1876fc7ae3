#!/usr/bin/env bash
# lowband's main job on the embedded default: installs what it needs (scripts/setup.sh), then
# runs a local Synapse, `lowband serve`, the link emulator at 100 bit/s and `lowband tunnel`,
# and sends a Matrix message from a matrix-nio client across the slow link, printing the bytes
# and airtime each step cost. Extra arguments go to the demo: --rate BPS --loss P --message TEXT
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SKIP_FUZZ=1 bash scripts/setup.sh
export LOWBAND_VENV=${LOWBAND_VENV:-$ROOT/.venv}
cargo build -q --release -p lowband-gateway -p lowband-linksim -p lowband-tests --bins
export LOWBAND_BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
exec "$LOWBAND_BIN_DIR/lowband-demo" "$@"
