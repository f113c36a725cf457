#!/usr/bin/env python3
"""Golden files for train::data::augment's phase vocoder, made with librosa 0.11.

Run from the repository root with the project venv (scripts/setup.sh makes it):
    .env/venv/bin/python train/tests/golden/augment/make_golden.py

The input is synthesised from a formula that the Rust test evaluates too (no audio is stored):
1 s at 32 kHz of an amplitude-modulated 440 Hz tone, a rising chirp from 1.5 kHz and a 6 kHz
tone with an onset at 0.5 s, rounded to float32 (what the Rust test feeds in).
  * time_stretch_<rate>.npy  float32: librosa.effects.time_stretch(x, rate=<rate>) computed in
    float64 (n_fft 2048, hop 512, Hann, centred frames with zero padding: librosa's defaults).
    In float32 the phases of near-silent bins are rounding noise that the vocoder carries on.
  * time_stretch_20000_0.8.npy: the same of the first 20,000 samples at rate 0.8, a length where
    librosa's frame count (ceil(frames / rate)) is one more than the output length's own.
"""
import os

import librosa
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SR = 32000
RATES = ["0.8", "1.25"]


def signal():
    t = np.arange(int(1.0 * SR), dtype=np.float64) / SR
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) * (1.0 + 0.5 * np.sin(2 * np.pi * 3.0 * t))
    x += 0.3 * np.sin(2 * np.pi * (1500.0 * t + 2000.0 * t * t))
    x += 0.2 * np.sin(2 * np.pi * 6000.0 * t + 1.0) * (t >= 0.5)
    return x.astype(np.float32)


def main():
    x = signal()
    for rate in RATES:
        y = librosa.effects.time_stretch(x.astype(np.float64), rate=float(rate))
        np.save(os.path.join(HERE, f"time_stretch_{rate}.npy"), y.astype(np.float32))
        print(rate, y.shape)
    y = librosa.effects.time_stretch(x[:20000].astype(np.float64), rate=0.8)
    np.save(os.path.join(HERE, "time_stretch_20000_0.8.npy"), y.astype(np.float32))
    print("20000 at 0.8", y.shape)
    print("librosa", librosa.__version__)


if __name__ == "__main__":
    main()
