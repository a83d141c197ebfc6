#!/usr/bin/env bash
# The side-by-side load run behind the README's table: the engine (examples/twilio_server), the
# one-hop floor (benches/compare/floor.rs) and the TypeScript SDK's Twilio transport
# (benches/compare/ts/server.mjs), interleaved, REPS times at each call count, one after the
# other on this machine. Writes one JSON per run to OUT and prints the medians.
#
#   benches/compare/matrix.sh                 # REPS=2, CALLS="50 100 200", 30 s each
#   REPS=3 CALLS="100" BRIDGES="engine floor" benches/compare/matrix.sh
#
# Needs `cargo build --release --examples` and, for the TypeScript bridge,
# `npm ci --prefix benches/compare/ts` (Node 20+).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-2}
CALLS=${CALLS:-"50 100 200"}
SECONDS_MEASURED=${SECONDS_MEASURED:-30}
BRIDGES=${BRIDGES:-"engine floor ts"}
OUT=${OUT:-target/loadrun}
mkdir -p "$OUT"
cmd_of() {
  case $1 in
    engine) echo target/release/examples/twilio_server ;;
    floor) echo target/release/examples/floor ;;
    ts) echo "node benches/compare/ts/server.mjs" ;;
    *) echo "unknown bridge $1" >&2; exit 2 ;;
  esac
}
for rep in $(seq 1 "$REPS"); do
  for n in $CALLS; do
    ramp=$(( n >= 400 ? 10 : 5 ))
    for b in $BRIDGES; do
      json="$OUT/$b-$n-$rep.json"
      # Resumable: a run whose JSON exists is not repeated.
      [ -f "$json" ] && continue
      echo "== rep $rep: $b, $n calls" >&2
      # loadgen exits 1 when a frame was lost or a call failed; the run still counts.
      target/release/examples/loadgen --calls "$n" --seconds "$SECONDS_MEASURED" --ramp "$ramp" \
        --bridge "$(cmd_of "$b")" --label "$b" --json "$json" > "$OUT/$b-$n-$rep.txt" ||
        echo "   (lost frames, errors or failed calls: see $OUT/$b-$n-$rep.txt)" >&2
      tail -n 10 "$OUT/$b-$n-$rep.txt" >&2
    done
  done
done
python3 benches/compare/summarize.py "$OUT"
