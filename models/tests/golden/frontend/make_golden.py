#!/usr/bin/env python3
"""Golden files for models::frontend and models::audio, made with librosa 0.11 and soxr.

Run from the repository root with the project venv (scripts/setup.sh makes it):
    .env/venv/bin/python models/tests/golden/frontend/make_golden.py

Input: ../shared/data/formats (an MIT-licensed 10-s recording, opensoundscape's birds_10s.wav,
in several containers). Only derived data is written here, never the audio itself:
  * <name>.db.npy      float32 [windows, n_mels, frames]: librosa.feature.melspectrogram of each
                       5-s window, then librosa.power_to_db, for the two shipped reference cards
                       (models/cards/*.card.json) and the extra variants in variants.json.
  * resample_<name>.npy float32 [excerpts, 2048]: short excerpts of
                       librosa.resample(..., res_type="soxr_hq") to 32 kHz (about 0.6 s of 10 s),
                       with their offsets in manifest.json.
The Rust test (models/tests/frontend_golden.rs) decodes the same files itself and compares.
"""
import json
import os
import sys

import librosa
import numpy as np
import soundfile as sf
import soxr

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../../.."))
FORMATS = os.path.join(ROOT, "..", "shared", "data", "formats")
EXCERPT = 2048
N_EXCERPTS = 10


def window_count(n, fe):
    w = round(fe["windows"]["window_seconds"] * fe["sample_rate"])
    full, rest = divmod(n, w)
    min_rest = np.ceil(fe["windows"]["min_last_window_seconds"] * fe["sample_rate"])
    return max(1, full + int(rest > 0 and rest >= min_rest)), w


def log_mel(clip, fe):
    S = librosa.feature.melspectrogram(
        y=clip, sr=fe["sample_rate"], n_fft=fe["n_fft"], hop_length=fe["hop_length"],
        win_length=fe["win_length"], window="hann", center=fe["center"], pad_mode=fe["pad_mode"],
        power=fe["power"], n_mels=fe["n_mels"], fmin=fe["fmin"], fmax=fe["fmax"],
        htk=fe["mel_scale"] == "htk", norm="slaney" if fe["mel_norm"] == "slaney" else None)
    db = fe["db"]
    ref = np.max if db["reference"] == "max" else db["reference"]["value"]
    return librosa.power_to_db(S, ref=ref, amin=db["amin"], top_db=db["top_db"])


def frontends():
    out = {}
    for name in ["nvbird224", "kefir128"]:
        with open(os.path.join(ROOT, "models", "cards", f"{name}.card.json")) as f:
            out[name] = json.load(f)["frontend"]
    with open(os.path.join(HERE, "variants.json")) as f:
        for name, fe in json.load(f).items():
            fe.setdefault("windows", {"window_seconds": 5.0, "min_last_window_seconds": 1.0})
            out[name] = fe
    return out


def main():
    if not os.path.isdir(FORMATS):
        sys.exit(f"{FORMATS} not found: the golden files need ../shared/data/formats")
    manifest = {"librosa": librosa.__version__, "numpy": np.__version__,
                "soxr": soxr.__version__, "mel": {}, "resample": {}}
    audio_name = "birds_10s_32k_reference.wav"
    y, sr = sf.read(os.path.join(FORMATS, audio_name), dtype="float32")
    assert sr == 32000 and y.ndim == 1
    for name, fe in frontends().items():
        n_win, w = window_count(len(y), fe)
        images = []
        for i in range(n_win):
            clip = np.zeros(w, dtype=np.float32)
            part = y[i * w:(i + 1) * w]
            clip[:len(part)] = part
            images.append(log_mel(clip, fe))
        arr = np.stack(images).astype(np.float32)
        np.save(os.path.join(HERE, f"{name}.db.npy"), arr)
        manifest["mel"][name] = {"audio": audio_name, "shape": list(arr.shape),
                                 "min_db": float(arr.min()), "max_db": float(arr.max())}
        print(name, arr.shape, float(arr.min()), float(arr.max()))

    for audio_name in ["birds_10s_48k_f32.wav", "birds_10s_44k1_stereo_s16.wav"]:
        x, sr = sf.read(os.path.join(FORMATS, audio_name), dtype="float32", always_2d=True)
        mono = x.mean(axis=1)
        r = librosa.resample(mono, orig_sr=sr, target_sr=32000, res_type="soxr_hq")
        offsets = [0] + [int(v) for v in np.linspace(EXCERPT, len(r) - 2 * EXCERPT, N_EXCERPTS - 2)] \
            + [len(r) - EXCERPT]
        ex = np.stack([r[o:o + EXCERPT] for o in offsets]).astype(np.float32)
        key = os.path.splitext(audio_name)[0]
        np.save(os.path.join(HERE, f"resample_{key}.npy"), ex)
        manifest["resample"][key] = {"audio": audio_name, "source_rate": sr,
                                     "length": len(r), "offsets": offsets}
        print(audio_name, sr, "->", len(r))
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
