#!/usr/bin/env bash
# Run lowband's tests: unit, integration and end-to-end (real Synapse, aiocoap, libcoap, QEMU),
# plus the no_std builds for the Cortex-M target. Installs what it needs first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SKIP_FUZZ=1 bash scripts/setup.sh
export LOWBAND_VENV=${LOWBAND_VENV:-$ROOT/.venv}

echo "== no_std builds (thumbv7m-none-eabi, no allocator)"
cargo build -q -p lowband-codec -p lowband-device --no-default-features --target thumbv7m-none-eabi

echo "== tests"
cargo test -q --workspace --no-fail-fast
