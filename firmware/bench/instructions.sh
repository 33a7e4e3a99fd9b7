#!/usr/bin/env bash
# Executed instructions per predicted token on the Cortex-M4F, counted exactly under QEMU.
#
# Builds the counting plugin (bench/insn_count.c) and the firmware for mps2-an386 with the
# model given (default: the bundled `embedded` model), runs it with the plugin watching the
# `bench_start`/`bench_stop` markers around each greedy step (feed one word + rank the whole
# vocabulary), and reports instructions per token, MACs per token (V·D + Σ 4H(D+H)) and
# instructions per MAC.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:-../models/embedded.lmq8}")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

gcc -O2 -shared -fPIC -fvisibility=hidden -o "$out/libinsn_count.so" bench/insn_count.c
FIRMWARE_MODEL="$model" cargo build --release --no-default-features --features qemu --quiet
elf=target/thumbv7em-none-eabihf/release/predict
sym() { nm "$elf" | awk -v s="$1" '$3==s {print $1}'; }
start=$(( 0x$(sym bench_start) & ~1 ))
stop=$(( 0x$(sym bench_stop) & ~1 ))

report=$(timeout 600 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
  -semihosting-config enable=on,target=native -d plugin \
  -plugin "$out/libinsn_count.so,start=$start,stop=$stop" -kernel "$elf" 2>&1 >"$out/frames" | grep insn_count)
log=$(defmt-print -e "$elf" < "$out/frames")
dims=$(grep -o 'V=[0-9]* D=H=[0-9]* layers=[0-9]*' <<<"$log")
v=$(sed -E 's/V=([0-9]+).*/\1/' <<<"$dims"); d=$(sed -E 's/.*D=H=([0-9]+).*/\1/' <<<"$dims"); l=$(sed -E 's/.*layers=([0-9]+)/\1/' <<<"$dims")
measured=$(sed -E 's/.*measured=([0-9]+).*/\1/' <<<"$report")
tokens=$(sed -E 's/.*intervals=([0-9]+).*/\1/' <<<"$report")
python3 - "$v" "$d" "$l" "$measured" "$tokens" <<'PY'
import sys
v, d, l, measured, tokens = map(int, sys.argv[1:])
macs = v * d + l * 4 * d * (d + d)
per_token = measured / tokens
print(f"model V={v} D=H={d} layers={l}")
print(f"tokens measured           {tokens}")
print(f"instructions per token    {per_token:,.0f}")
print(f"MACs per token            {macs:,}  (V·D = {v*d:,} + LSTM {l*4*d*2*d:,})")
print(f"instructions per MAC      {per_token / macs:.2f}")
PY
grep -E 'memory flash' <<<"$log" | sed 's/^INFO *//'
