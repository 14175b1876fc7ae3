#!/usr/bin/env bash
# Build the QEMU firmware (release, thumbv7m-none-eabi) and check its footprint from the ELF.
#
#   flash      = .vector_table + .text + .rodata + .data (load image)   <= FLASH_LIMIT (64 KiB)
#   static RAM = .data + .bss + .uninit + stack reserve                 <= RAM_LIMIT (16 KiB)
#   heap       = none: fails if an allocator symbol (__rust_alloc, __rg_alloc, ...) is linked
#
# The stack reserve is read from the ELF (_stack_start - _stack_end, set in
# boards/qemu-lm3s6965/memory.x). Prints a table and the largest symbols; exits 1 on overflow.
# Needs only cargo and binutils' readelf (reads ARM ELFs on any host).
#   FLASH_LIMIT, RAM_LIMIT   limits in bytes
#   TOP=n                    how many of the largest symbols to list (default 12, 0 = none)
#   SKIP_BUILD=1             check an existing build
# Prints the ELF path on the last line of stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=thumbv7m-none-eabi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/firmware
ELF=$TARGET_DIR/$TARGET/release/firmware
FLASH_LIMIT=${FLASH_LIMIT:-65536}
RAM_LIMIT=${RAM_LIMIT:-16384}
TOP=${TOP:-12}

command -v readelf >/dev/null || { echo "firmware.sh: readelf missing (apt-get install binutils)" >&2; exit 2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  rustup target list --installed | grep -q "^$TARGET\$" || rustup target add "$TARGET" >&2
  cargo build -q --release --target "$TARGET" --bin firmware \
    --manifest-path "$ROOT/boards/qemu-lm3s6965/Cargo.toml" --target-dir "$TARGET_DIR" >&2
fi
[ -f "$ELF" ] || { echo "firmware.sh: no ELF at $ELF" >&2; exit 2; }

# Section sizes (hex) by name; 0 when absent.
sections=$(readelf -S -W "$ELF")
# (mawk-compatible: awk prints hex, bash converts.)
sec() {
  local hex
  hex=$(awk -v n="$1" '{ for (i = 1; i <= NF; i++) if ($i == n) { print $(i + 4); exit } }' <<<"$sections")
  echo $((16#${hex:-0}))
}
symbols=$(readelf -s -W "$ELF")
sym() {
  local hex
  hex=$(awk -v n="$1" '$8 == n { print $2; exit }' <<<"$symbols")
  [ -z "$hex" ] || echo $((16#$hex))
}

vt=$(sec .vector_table); text=$(sec .text); rodata=$(sec .rodata); data=$(sec .data)
bss=$(sec .bss); uninit=$(sec .uninit)
ss=$(sym _stack_start); se=$(sym _stack_end)
[ -n "$ss" ] && [ -n "$se" ] || { echo "firmware.sh: _stack_start/_stack_end not in the ELF" >&2; exit 2; }
stack=$((ss - se))
flash=$((vt + text + rodata + data))
ram=$((data + bss + uninit + stack))

status=0
row() { printf '  %-28s %8d B %7.1f KiB\n' "$1" "$2" "$(awk -v b="$2" 'BEGIN { print b / 1024 }')"; }
check() {
  if [ "$2" -le "$3" ]; then verdict="ok"; else verdict="OVER"; status=1; fi
  printf '  %-28s %8d B of %d B  %s\n' "$1" "$2" "$3" "$verdict"
}
echo "firmware footprint ($TARGET, release): ${ELF#"$ROOT"/}"
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
  echo "  heap                         FOUND allocator symbols: $heap OVER"
  status=1
else
  echo "  heap                         none  ok"
fi

if [ "$TOP" -gt 0 ]; then
  echo "largest symbols:"
  awk '$3 ~ /^[0-9]+$/ && $3 > 0 && ($4 == "FUNC" || $4 == "OBJECT") { print $3, $8 }' <<<"$symbols" |
    sort -rn | head -n "$TOP" | awk '{ printf "  %7d  %s\n", $1, $2 }'
fi
[ "$status" = 0 ] || echo "firmware.sh: footprint over budget" >&2
echo "$ELF"
exit "$status"
