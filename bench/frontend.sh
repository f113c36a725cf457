#!/usr/bin/env bash
# Decode, resample and log-mel time per 4-min soundscape, one core: birdclef-models next to
# soundfile + librosa (+ soxr) on the same files in the same run. Prints a table.
#   bench/frontend.sh [FILES...]   (default: ../shared/data/bench_soundscapes/*.ogg)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  shopt -s nullglob
  files=("$root"/../shared/data/bench_soundscapes/*.ogg)
fi
[ ${#files[@]} -gt 0 ] || { echo "no soundscapes: pass files or provide ../shared/data/bench_soundscapes" >&2; exit 1; }
cargo build -q --release -p birdclef-models --example bench_frontend
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 RAYON_NUM_THREADS=1
rust_json="$(mktemp)"; py_json="$(mktemp)"
trap 'rm -f "$rust_json" "$py_json"' EXIT
./target/release/examples/bench_frontend --json "${files[@]}" > "$rust_json"
.env/venv/bin/python bench/frontend_reference.py "${files[@]}" > "$py_json"
.env/venv/bin/python - "$rust_json" "$py_json" <<'PY'
import json, sys, statistics as st
rust = json.load(open(sys.argv[1])); py = json.load(open(sys.argv[2]))
cols = [("decode_ms", "decode"), ("resample_48k_ms", "resample 48k->32k"),
        ("mel_nvbird224_ms", "log-mel nvbird224"),
        ("mel_nvbird224_std_ms", "... + standardised"), ("mel_kefir128_ms", "log-mel kefir128"),
        ("decode_plus_mel_ms", "decode + mel (nvbird)")]
print(f"{len(rust)} soundscapes of {st.mean(r['seconds'] for r in rust):.0f} s ({rust[0]['windows']} windows); "
      "single thread; ms per soundscape, mean (min-max)")
print(f"{'stage':<24} {'birdclef-models':>24} {'soundfile+librosa':>24} {'speed-up':>9}")
def cell(rows, k):
    v = [r[k] for r in rows]
    return st.mean(v), f"{st.mean(v):8.1f} ({min(v):6.1f}-{max(v):6.1f})"
sym = [r["symphonia_ms"] for r in rust]
print(f"{'symphonia alone':<24} {st.mean(sym):8.1f} ({min(sym):6.1f}-{max(sym):6.1f}) {'':>24}")
for k, name in cols:
    (a, ta), (b, tb) = cell(rust, k), cell(py, k)
    print(f"{name:<24} {ta:>24} {tb:>24} {b / a:8.1f}x")
m = st.mean(r["decode_plus_mel_ms"] for r in rust)
print(f"target decode + mel <= 100 ms: {'met' if m <= 100 else 'NOT met'} ({m:.1f} ms)")
PY
