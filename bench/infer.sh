#!/usr/bin/env bash
# birdclef-infer end to end vs raw ONNX Runtime vs a Kaggle-style Python pipeline, in one run,
# on ../shared/data/bench_soundscapes (each file linked COPIES times, default 4 -> 32 x 4 min).
# Models: 5 efficientvit_b0 "folds" (init seeds 0-4, 182 classes, default card), exported.
# birdclef-infer runs with its defaults (one worker per core, each decoding and running its own
# single-threaded ONNX Runtime sessions, batches of 4 windows); "raw" is the best of one 2-thread
# session and two parallel 1-thread sessions, at batches of 4, 8 and 48, on precomputed inputs.
# REPEATS rounds (default 3), each measuring everything once in turn, so that every figure sees
# the same drift of this shared VM (10-20% from minute to minute); each is the best of its rounds.
# Two more figures show where the 5-model run's time goes beyond raw inference: ONNX Runtime
# alone running the ensemble as birdclef-infer does (each model in turn on pieces of 48 distinct
# precomputed windows), and birdclef-infer on the same audio as 16-bit WAV, which costs next to
# nothing to decode (written to a temporary folder outside the project and removed afterwards).
#   bench/infer.sh [COPIES] [REPEATS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
copies="${1:-4}"
repeats="${2:-3}"
src="$root/../shared/data/bench_soundscapes"
[ -d "$src" ] || { echo "needs $src" >&2; exit 1; }
cargo build -q --release --workspace --bins
work="$root/.dev/bench-infer"
mkdir -p "$work/audio" "$work/models"
rm -f "$work/audio"/*
for f in "$src"/*.ogg; do
  for c in $(seq 1 "$copies"); do ln -s "$f" "$work/audio/$(basename "$f" .ogg)_c$c.ogg"; done
done
for i in 0 1 2 3 4; do
  if [ ! -f "$work/models/fold$i.onnx" ]; then
    rm -rf "$work/models/fold$i"
    ./target/release/birdclef-train --device cpu init --arch efficientvit_b0 --classes 182 \
      --seed "$i" --out "$work/models/fold$i" >/dev/null
    ./target/release/birdclef-export --checkpoint "$work/models/fold$i" \
      --out "$work/models/fold$i.onnx" >/dev/null
  fi
done
py=.env/venv/bin/python
files=("$work"/audio/*.ogg)
n=${#files[@]}
wav="$(mktemp -d)"
trap 'rm -rf "$wav"' EXIT
mkdir "$wav/audio"
for f in "$src"/*.ogg; do
  b="$(basename "$f" .ogg)"
  $py -c 'import soundfile as sf, sys; x, sr = sf.read(sys.argv[1], dtype="int16"); sf.write(sys.argv[2], x, sr, subtype="PCM_16")' \
    "$f" "$wav/$b.wav"
  for c in $(seq 1 "$copies"); do ln -s "$wav/$b.wav" "$wav/audio/${b}_c$c.wav"; done
done
timed() { # prints the wall seconds and peak RSS (KB) of one run of a command
  /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1
}
raws=(); ens=(); refs=(); t1s=(); t5s=(); twavs=()
for round in $(seq "$repeats"); do
  echo "round $round of $repeats: raw onnxruntime, birdclef-infer 1 and 5 models, python..." >&2
  raws+=("$($py bench/infer_reference.py raw "$work/models/fold0.onnx" --threads 2 --repeats 1)")
  t1s+=("$(timed ./target/release/birdclef-infer --models "$work/models/fold0.onnx" \
    --soundscapes "$work/audio" --out "$work/sub1.csv")")
  t5s+=("$(timed ./target/release/birdclef-infer --models "$work"/models/fold{0,1,2,3,4}.onnx \
    --soundscapes "$work/audio" --out "$work/sub5.csv")")
  ens+=("$($py bench/infer_reference.py ensemble "$work"/models/fold{0,1,2,3,4}.onnx --threads 2 \
    --batch 4 --piece 48 --repeats 1)")
  twavs+=("$(timed ./target/release/birdclef-infer --models "$work"/models/fold{0,1,2,3,4}.onnx \
    --soundscapes "$wav/audio" --out "$work/sub5wav.csv")")
  refs+=("$($py bench/infer_reference.py pipeline "$work/models/fold0.onnx" "${files[@]}" \
    --threads 2 --repeats 1)")
done
best_json() { # the per-key maximum of JSON objects of numbers (one per argument)
  $py -c 'import json,sys; rs=[json.loads(a) for a in sys.argv[1:]]
print(json.dumps({k: max(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}))' "$@"
}
raw=$(best_json "${raws[@]}")
ensemble=$(best_json "${ens[@]}")
ref=$($py -c 'import json,sys; print(json.dumps(min((json.loads(a) for a in sys.argv[1:]), key=lambda r: r["seconds"])))' "${refs[@]}")
read -r t1 m1 < <(printf '%s\n' "${t1s[@]}" | sort -n | head -1)
read -r t5 m5 < <(printf '%s\n' "${t5s[@]}" | sort -n | head -1)
read -r twav mwav < <(printf '%s\n' "${twavs[@]}" | sort -n | head -1)
$py - "$raw" "$ref" "$n" "$t1" "$m1" "$t5" "$m5" "$ensemble" "$twav" "$mwav" <<'PY'
import json, sys
raw, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
n, t1, m1, t5, m5 = int(sys.argv[3]), *map(float, sys.argv[4:8])
ens, twav, mwav = json.loads(sys.argv[8]), float(sys.argv[9]), float(sys.argv[10])
w = n * 48
r = max(v for k, v in raw.items() if k.startswith(("one_session_b", "parallel_sessions_b")))
e1, e5 = w / t1, w / t5
print(f"{n} soundscapes x 4 min ({w} windows), efficientvit_b0 182 classes, 2 cores, best of rounds")
print(f"{'run':<40} {'windows/s':>10} {'wall s':>8} {'peak MB':>8}")
for key, value in raw.items():
    if key.startswith(("one_session_b", "parallel_sessions_b")):
        how, batch = key.rsplit("_b", 1)
        how = "1 session x 2 threads" if how == "one_session" else "2 sessions x 1 thread"
        print(f"{'raw ORT, 1 model, ' + how + ', batch ' + batch:<40} {value:>10.1f}")
print(f"{'raw ORT, 5 models (= best raw / 5)':<40} {r / 5:>10.1f}")
print(f"{'birdclef-infer, 1 model':<40} {e1:>10.1f} {t1:>8.1f} {m1 / 1024:>8.0f}")
print(f"{'birdclef-infer, 5 models':<40} {e5:>10.1f} {t5:>8.1f} {m5 / 1024:>8.0f}")
print(f"{'raw ORT, 5 models in turn, pieces of 48':<40} {ens['windows_per_second']:>10.1f}")
print(f"{'birdclef-infer, 5 models, WAV input':<40} {w / twav:>10.1f} {twav:>8.1f} {mwav / 1024:>8.0f}")
print(f"{'python (soundfile+librosa+ORT), 1 model':<40} {ref['windows_per_second']:>10.1f} {ref['seconds']:>8.1f}")
print(f"end to end / best raw, 5 models: {e5 / (r / 5):.2f} (target >= 0.9)")
print(f"  for comparison: / raw 5 models in turn {e5 / ens['windows_per_second']:.2f}; "
      f"WAV input / best raw {w / twav / (r / 5):.2f}")
print(f"birdclef-infer / python, 1 model: {e1 / ref['windows_per_second']:.2f} (target >= 4)")
proj = 1100 * 48 / e5
print(f"projection, 1,100 x 4-min soundscapes, 5 folds, this machine: {proj / 60:.1f} min")
PY
