#!/usr/bin/env bash
# Renders the demo call's picture to PNG as a user would see it:
#   examples/render_png.sh [OUT.png]        (default out/demo/call.png)
# Runs the demo (which writes out/demo/call.svg), then rsvg-convert (Debian/Ubuntu package
# librsvg2-bin: apt-get install librsvg2-bin). The README's docs/demo-call.png was made with
#   examples/render_png.sh docs/demo-call.png
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/demo/call.png}
command -v rsvg-convert >/dev/null || { echo "render_png.sh: needs rsvg-convert (apt-get install librsvg2-bin)" >&2; exit 2; }
cargo run --quiet --example demo >/dev/null
rsvg-convert --background-color=white -o "$out" out/demo/call.svg
test -s "$out" || { echo "render_png.sh: $out is empty" >&2; exit 1; }
echo "$out ($(wc -c <"$out") bytes)"
