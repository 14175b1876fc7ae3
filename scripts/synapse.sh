#!/usr/bin/env bash
# Start real Matrix peers (Synapse) on loopback for manual testing and demos.
#
#   scripts/synapse.sh single        [--dir DIR] [--user NAME:PASSWORD]...
#   scripts/synapse.sh direct        ...   two Synapses federating over TLS (test CA)
#   scripts/synapse.sh front         ...   a pair whose federation ports are left free for tunnels
#   scripts/synapse.sh front-standin ...   front, plus TLS-terminating forwarders in those ports
#
# Prints one JSON line (client URLs, server names, federation addresses, certificate paths,
# registered users with access tokens) and keeps the peers running until Ctrl-D or Ctrl-C.
# Uses the same harness as the end-to-end tests (tests/src, crate lowband-tests).
#   LOWBAND_VENV   Python venv with Synapse and matrix-nio (default .venv; scripts/setup.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOWBAND_VENV=${LOWBAND_VENV:-$ROOT/.venv}
if [ ! -x "$LOWBAND_VENV/bin/python" ]; then
  echo "synapse.sh: no venv at $LOWBAND_VENV; run scripts/setup.sh first" >&2
  exit 1
fi
case "${1:-}" in
  single|direct|front|front-standin) ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
cd "$ROOT"
exec cargo run -q -p lowband-tests --bin lowband-peers -- "$@"
