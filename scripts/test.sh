#!/usr/bin/env bash
# Runs every test. Installs what they need on a fresh machine first: the bare-metal Rust
# targets, QEMU (to run the firmware), defmt-print (to decode its log) and a TTF font (charts).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

rustup target add thumbv7em-none-eabihf thumbv6m-none-eabi >/dev/null
missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -n "${HOST_FONT:-}" ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! command -v defmt-print >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/defmt-print" ]; then
  cargo install defmt-print --locked
fi

cargo test --workspace --release "$@"
