#!/usr/bin/env bash
# Install everything lowband's build, tests and demo need on a fresh machine. Idempotent.
#   LOWBAND_VENV   Python venv for Synapse, matrix-nio, aiocoap, noiseprotocol (default .venv)
#   SKIP_APT=1     do not apt-get install
#   SKIP_FUZZ=1    do not install cargo-fuzz
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${LOWBAND_VENV:-$ROOT/.venv}
log() { echo "[setup] $*" >&2; }

# Rust targets (they do not persist across machines).
rustup target list --installed | grep -q thumbv7m-none-eabi || rustup target add thumbv7m-none-eabi >&2
# The matrix firmware builds with nightly and core's source (boards/qemu-lm3s6965/matrix.toml).
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2
rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' ||
  rustup component add rust-src --toolchain nightly >&2

# Debian packages: QEMU for the Cortex-M board, libcoap for an independent CoAP peer.
if [ "${SKIP_APT:-0}" != 1 ]; then
  need=()
  command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
  command -v coap-client-notls >/dev/null || need+=(libcoap3-bin)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2
  fi
fi

# --- firmware (scripts/firmware.sh, tests/it/qemu.rs): binutils' readelf for the ELF size check.
if [ "${SKIP_APT:-0}" != 1 ] && ! command -v readelf >/dev/null; then
  log "apt-get install binutils"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q binutils >&2
fi
# --- end firmware

# Python peers: a real homeserver, a real client, an independent CoAP stack and Noise.
if ! "$VENV/bin/python" -c 'import synapse.app.homeserver, nio, aiocoap, noise.connection' 2>/dev/null; then
  log "creating $VENV (Synapse, matrix-nio, aiocoap, noiseprotocol)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$ROOT/scripts/requirements.txt" >&2
fi

# cargo-fuzz for the fuzz targets (needs the installed nightly).
if [ "${SKIP_FUZZ:-0}" != 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz"
  cargo install -q cargo-fuzz --locked >&2
fi
