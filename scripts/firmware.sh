#!/usr/bin/env bash
# Build the firmware for every Cortex-M board (release, thumbv7m-none-eabi) and check each
# binary's footprint from its ELF:
#
#   flash      = .vector_table + .text + .rodata + .data (load image)   <= FLASH_LIMIT (64 KiB)
#   static RAM = .data + .bss + .uninit + stack reserve                 <= RAM_LIMIT (16 KiB)
#   heap       = none: fails if an allocator symbol (__rust_alloc, __rg_alloc, ...) is linked
#
# The stack reserve is read from the ELF (_stack_start - _stack_end, set in each board's
# memory-*.x). Prints a table per binary and the largest symbols; exits 1 on any overflow.
# Boards and binaries: qemu-lm3s6965 `firmware` (the platform loopback) and `matrix` (the Matrix
# application, MatrixApp over the device Runner; tests/it/qemu.rs runs both), stm32f103
# `firmware` (loopback, STM32F103C8) and `matrix` (the same application on an STM32F103CB; build
# only, no hardware here).
# Needs cargo, the nightly toolchain with rust-src for `matrix` (boards/<board>/matrix.toml:
# core rebuilt with panic=immediate-abort), and binutils' readelf (reads ARM ELFs on any host).
#   BOARDS="qemu-lm3s6965 stm32f103"   which boards
#   FLASH_LIMIT, RAM_LIMIT             limits in bytes
#   TOP=n                              largest symbols to list (default 10, 0 = none)
#   SKIP_BUILD=1                       check existing builds
#   LINT=1                             also cargo fmt --check and clippy -D warnings on the
#                                      board crates (they are outside the root workspace)
# ELFs: ${CARGO_TARGET_DIR:-target}/firmware[-<board>]/thumbv7m-none-eabi/release/<bin>
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=thumbv7m-none-eabi
BASE=${CARGO_TARGET_DIR:-$ROOT/target}
BOARDS=${BOARDS:-qemu-lm3s6965 stm32f103}
FLASH_LIMIT=${FLASH_LIMIT:-65536}
RAM_LIMIT=${RAM_LIMIT:-16384}
TOP=${TOP:-10}

command -v readelf >/dev/null || { echo "firmware.sh: readelf missing (apt-get install binutils)" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  rustup target list --installed | grep -q "^$TARGET\$" || rustup target add "$TARGET" >&2
  # Every board's `matrix` is built with nightly and core's source.
  rustup component list --toolchain nightly --installed | grep -q '^rust-src' ||
    rustup component add rust-src --toolchain nightly >&2
fi

status=0

# The QEMU board builds into <target>/firmware, shared with tests/it/qemu.rs.
target_dir() { if [ "$1" = qemu-lm3s6965 ]; then echo "$BASE/firmware"; else echo "$BASE/firmware-$1"; fi; }

bins_of() { case "$1" in qemu-lm3s6965 | stm32f103) echo "firmware matrix" ;; *) echo firmware ;; esac; }

check_board() {
  local board=$1 dir bin
  dir=$(target_dir "$board")
  if [ "${LINT:-0}" = 1 ]; then
    (cd "$ROOT/boards/$board" && cargo fmt -- --check) >&2 || { echo "firmware.sh: $board: cargo fmt" >&2; status=1; }
    cargo clippy -q --release --target "$TARGET" --bins --manifest-path "$ROOT/boards/$board/Cargo.toml" \
      --target-dir "$dir" -- -D warnings >&2 || { echo "firmware.sh: $board: clippy" >&2; status=1; }
  fi
  for bin in $(bins_of "$board"); do
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
      if [ "$bin" = matrix ]; then
        # Nightly: core rebuilt with panic=immediate-abort (boards/<board>/matrix.toml).
        rustup run nightly cargo build -q --release --target "$TARGET" --bin "$bin" \
          --manifest-path "$ROOT/boards/$board/Cargo.toml" --target-dir "$dir" \
          --config "$ROOT/boards/$board/matrix.toml" >&2
      else
        cargo build -q --release --target "$TARGET" --bin "$bin" \
          --manifest-path "$ROOT/boards/$board/Cargo.toml" --target-dir "$dir" >&2
      fi
    fi
    check_elf "$board" "$bin" "$dir/$TARGET/release/$bin"
  done
}

check_elf() {
  local board=$1 bin=$2 elf=$3 sections symbols
  [ -f "$elf" ] || { echo "firmware.sh: no ELF at $elf" >&2; status=2; return; }

  sections=$(readelf -S -W "$elf")
  symbols=$(readelf -s -W "$elf")
  # mawk-compatible: awk prints hex, bash converts.
  sec() {
    local hex
    hex=$(awk -v n="$1" '{ for (i = 1; i <= NF; i++) if ($i == n) { print $(i + 4); exit } }' <<<"$sections")
    echo $((16#${hex:-0}))
  }
  sym() {
    local hex
    hex=$(awk -v n="$1" '$8 == n { print $2; exit }' <<<"$symbols")
    [ -z "$hex" ] || echo $((16#$hex))
  }
  local vt text rodata data bss uninit ss se stack flash ram heap
  vt=$(sec .vector_table); text=$(sec .text); rodata=$(sec .rodata); data=$(sec .data)
  bss=$(sec .bss); uninit=$(sec .uninit)
  ss=$(sym _stack_start); se=$(sym _stack_end)
  [ -n "$ss" ] && [ -n "$se" ] || { echo "firmware.sh: $board: no _stack_start/_stack_end" >&2; status=2; return; }
  stack=$((ss - se))
  flash=$((vt + text + rodata + data))
  ram=$((data + bss + uninit + stack))

  row() { printf '  %-28s %8d B %7.1f KiB\n' "$1" "$2" "$(awk -v b="$2" 'BEGIN { print b / 1024 }')"; }
  check() {
    local verdict=ok
    if [ "$2" -gt "$3" ]; then
      verdict=OVER
      status=1
    fi
    printf '  %-28s %8d B of %d B  %s\n' "$1" "$2" "$3" "$verdict"
  }
  echo "== $board $bin ($TARGET, release): ${elf#"$ROOT"/}"
  row .vector_table "$vt"
  row .text "$text"
  row .rodata "$rodata"
  row .data "$data"
  row .bss "$bss"
  row .uninit "$uninit"
  row "stack reserve" "$stack"
  check "flash (vt+text+rodata+data)" "$flash" "$FLASH_LIMIT"
  check "RAM (data+bss+uninit+stack)" "$ram" "$RAM_LIMIT"
  heap=$(awk '$8 ~ /^(__rust_alloc|__rust_alloc_zeroed|__rust_realloc|__rg_alloc|__rdl_alloc|__rust_alloc_error_handler)$/ { print $8 }' <<<"$symbols" | sort -u | tr '\n' ' ')
  if [ -n "$heap" ]; then
    echo "  heap                         allocator linked: $heap OVER"
    status=1
  else
    echo "  heap                         none ok"
  fi
  if [ "$TOP" -gt 0 ]; then
    echo "  largest symbols:"
    awk '$3 ~ /^[0-9]+$/ && $3 > 0 && ($4 == "FUNC" || $4 == "OBJECT") { print $3, $8 }' <<<"$symbols" |
      sort -rn | awk -v n="$TOP" 'NR <= n { printf "    %7d  %s\n", $1, $2 }'
  fi
}

for board in $BOARDS; do
  check_board "$board"
done
[ "$status" = 0 ] || echo "firmware.sh: footprint over budget or build missing" >&2
exit "$status"
