#!/usr/bin/env bash
# Raw ONNX Runtime throughput of our exported efficientvit_b0 student (182 classes, nvbird224
# input, via birdclef-train init + birdclef-export) next to timm's own torch.onnx export of the
# same architecture, batch 48, 2 threads, interleaved in one run. Prints a table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo build -q --release -p birdclef-train -p birdclef-export
work="$root/.dev/bench-onnx"
rm -rf "$work" && mkdir -p "$work"
./target/release/birdclef-train --device cpu init --arch efficientvit_b0 --classes 182 \
  --out "$work/efficientvit_b0" >/dev/null
./target/release/birdclef-export --checkpoint "$work/efficientvit_b0" --out "$work/efficientvit_b0.onnx"
.env/venv/bin/python bench/onnx_throughput.py --ours "$work/efficientvit_b0.onnx" "$@"
