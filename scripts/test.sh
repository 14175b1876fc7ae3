#!/usr/bin/env bash
# Run lowband's tests: unit, integration and end-to-end (real Synapse, aiocoap, libcoap, QEMU),
# plus the no_std builds for the Cortex-M target. Installs what it needs first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SKIP_FUZZ=1 bash scripts/setup.sh
export LOWBAND_VENV=${LOWBAND_VENV:-$ROOT/.venv}
# The peers were installed above: a test that cannot find them must fail, not skip.
export LOWBAND_REQUIRE_PEERS=1
# End-to-end tests mostly wait on slow emulated links: run more of them at once.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}

echo "== no_std builds (thumbv7m-none-eabi, no allocator)"
cargo build -q -p lowband-codec -p lowband-device --no-default-features --target thumbv7m-none-eabi

echo "== firmware: thumbv7m build and flash/RAM budgets from the ELF"
bash scripts/firmware.sh

echo "== tests"
cargo test -q --workspace --no-fail-fast
