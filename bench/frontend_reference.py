#!/usr/bin/env python3
"""The Python pipeline a Kaggle notebook would use, timed like bench_frontend (best of N, ms):
soundfile decode, soxr_hq 48->32 kHz resample, librosa log-mel of all 48 windows in one call
(and, as trained cards ask, standardised per window).
Run single-threaded (bench/frontend.sh sets the thread variables). Prints JSON rows."""
import json
import os
import sys
import time

import librosa
import numpy as np
import soundfile as sf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def best_ms(repeat, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, (time.perf_counter() - t) * 1e3)
    return best, out


def windows(y, fe):
    w = round(fe["windows"]["window_seconds"] * fe["sample_rate"])
    n = max(1, len(y) // w + int(len(y) % w >= fe["windows"]["min_last_window_seconds"] * fe["sample_rate"]))
    out = np.zeros((n, w), dtype=np.float32)
    for i in range(n):
        part = y[i * w:(i + 1) * w]
        out[i, :len(part)] = part
    return out


def log_mel(batch, fe):
    S = librosa.feature.melspectrogram(
        y=batch, sr=fe["sample_rate"], n_fft=fe["n_fft"], hop_length=fe["hop_length"],
        win_length=fe["win_length"], center=fe["center"], pad_mode=fe["pad_mode"], power=fe["power"],
        n_mels=fe["n_mels"], fmin=fe["fmin"], fmax=fe["fmax"], htk=fe["mel_scale"] == "htk")
    return librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0)


def standardize(S):
    """Per-window standardisation, as the cards birdclef-train writes ask for."""
    mean = S.mean(axis=(1, 2), keepdims=True)
    std = S.std(axis=(1, 2), keepdims=True)
    return (S - mean) / np.maximum(std, 1e-6)


def main():
    args = sys.argv[1:]
    repeat = 3
    if args[:1] == ["--repeat"]:
        repeat, args = int(args[1]), args[2:]
    fronts = {}
    for name in ["nvbird224", "kefir128"]:
        with open(os.path.join(ROOT, "models", "cards", f"{name}.card.json")) as f:
            fronts[name] = json.load(f)["frontend"]
    rows = []
    for path in args:
        decode_ms, (y, sr) = best_ms(repeat, lambda: sf.read(path, dtype="float32"))
        at48 = librosa.resample(y, orig_sr=sr, target_sr=48000, res_type="soxr_hq")
        resample_ms, _ = best_ms(repeat, lambda: librosa.resample(at48, orig_sr=48000, target_sr=32000, res_type="soxr_hq"))
        row = {"file": os.path.basename(path), "decode_ms": decode_ms, "resample_48k_ms": resample_ms}
        for name, fe in fronts.items():
            batch = windows(y, fe)
            row[f"mel_{name}_ms"], _ = best_ms(repeat, lambda: log_mel(batch, fe))
        batch = windows(y, fronts["nvbird224"])
        row["mel_nvbird224_std_ms"], _ = best_ms(repeat, lambda: standardize(log_mel(batch, fronts["nvbird224"])))
        row["decode_plus_mel_ms"] = decode_ms + row["mel_nvbird224_ms"]
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
