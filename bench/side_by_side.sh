#!/usr/bin/env bash
# Rounds of `host bench train` and the PyTorch reference back to back, then the median of the
# rounds' own ratios: on a shared machine whose speed swings by ±30% within minutes, only
# ratios measured in the same minutes travel.
#
#   bench/side_by_side.sh PRESET ROUNDS [OTHER_HOST_BINARY]
#
# Needs `target/release/host` (cargo build --release -p host) and PYTHON (default python3) with
# torch installed. OTHER_HOST_BINARY, when given, is another release timed in the same rounds.
set -euo pipefail
preset=${1:?preset}
rounds=${2:-4}
other=${3:-}
python=${PYTHON:-python3}
iters=${ITERS:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

tokens() { # FILE KIND -> tokens/s printed on the line starting with KIND:
  awk -v k="$2:" '$1 == k { print $2; exit }' "$1"
}

for r in $(seq 1 "$rounds"); do
  "$here/target/release/host" bench train --preset "$preset" --iters "$iters" >"$out/ours.$r"
  "$python" "$here/bench/pytorch_reference.py" --preset "$preset" --threads 2 --iters "$iters" >"$out/torch.$r"
  if [ -n "$other" ]; then
    "$other" bench train --preset "$preset" --iters "$iters" >"$out/other.$r"
  fi
  line="round $r:"
  for kind in train eval; do
    o=$(tokens "$out/ours.$r" $kind)
    t=$(tokens "$out/torch.$r" $kind)
    line+=" $kind ours $o torch $t"
    [ -n "$other" ] && line+=" other $(tokens "$out/other.$r" $kind)"
    echo "$kind $o $t $([ -n "$other" ] && tokens "$out/other.$r" $kind)" >>"$out/rows"
  done
  echo "$line"
done

python3 - "$out/rows" "$preset" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for kind in ("train", "eval"):
    r = [[float(x) for x in row[1:]] for row in rows if row[0] == kind]
    ours = [x[0] for x in r]
    torch = [x[1] for x in r]
    line = (f"{sys.argv[2]} {kind}: ours best {max(ours):,.0f} median {statistics.median(ours):,.0f}; "
            f"PyTorch best {max(torch):,.0f} median {statistics.median(torch):,.0f}; "
            f"ours/PyTorch median of rounds {statistics.median(o / t for o, t in zip(ours, torch)):.2f}x "
            f"(ours faster in {sum(o > t for o, t in zip(ours, torch))} of {len(r)})")
    if len(r[0]) > 2:
        line += f"; ours/other median {statistics.median(x[0] / x[2] for x in r):.2f}x"
    print(line)
EOF
