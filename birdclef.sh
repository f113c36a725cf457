#!/usr/bin/env bash
# The project's entry point. Every command first runs scripts/setup.sh (idempotent: a Python venv
# with torch 2.11.0 and onnxruntime 1.31.1 in ./.env, plus Debian's libhdf5-dev), so a fresh
# Debian machine needs nothing installed by hand.
#
#   ./birdclef.sh demo    the main job on the built-in example (synthesised audio)
#   ./birdclef.sh test    every test, plus rustfmt and clippy (what CI runs)
#   ./birdclef.sh bench   benchmarks that print tables (needs ../shared/data)
#   ./birdclef.sh setup   only the environment
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

bash scripts/setup.sh

case "${1:-}" in
  setup)
    ;;
  demo)
    cargo build --release --workspace --bins
    ./target/release/birdclef-train doctor
    ./target/release/birdclef-infer doctor
    ./target/release/birdclef-infer demo --out target/demo
    # Teachers -> pseudo-labels -> students -> export -> infer -> score on a synthesised
    # competition; a second run finds every stage up to date.
    ./target/release/birdclef-train pipeline --out target/demo/pipeline
    ;;
  test)
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace
    ;;
  bench)
    bench/frontend.sh
    bench/onnx.sh
    bench/infer.sh
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
    ;;
esac
