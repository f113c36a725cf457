#!/usr/bin/env python3
"""Raw ONNX Runtime throughput (windows/s) of our exported student next to timm's own
torch.onnx export of the same architecture, measured in the same run on the same inputs.

    .env/venv/bin/python bench/onnx_throughput.py --ours MODEL.onnx [--batch 48] [--threads 2]

timm's model is created with the same input channels, class count and input size as ours (read
from our file's input shape and output size) and exported with opset 17 and a dynamic batch.
Prints a table; the last line is `ratio_ours_over_timm=<value>`."""
import argparse
import os
import tempfile
import time

import warnings

import numpy as np
import onnxruntime as ort

warnings.filterwarnings("ignore")


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def windows_per_second(sess, x, seconds):
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        sess.run(None, {name: x})
        runs += 1
    return runs * x.shape[0] / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--arch", default="efficientvit_b0")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="total measuring time")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()

    ours = session(args.ours, args.threads)
    shape = ours.get_inputs()[0].shape  # [batch, C, H, W]
    classes = ours.get_outputs()[0].shape[-1]
    c, h, w = (int(v) for v in shape[1:])

    import timm
    import torch
    model = timm.create_model(args.arch, pretrained=False, in_chans=c, num_classes=int(classes)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        timm_path = os.path.join(tmp, "timm.onnx")
        torch.onnx.export(model, torch.randn(1, c, h, w), timm_path, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        theirs = session(timm_path, args.threads)
        x = np.random.default_rng(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
        # Many short interleaved rounds (ours, timm, ours, timm, ...) so that a noisy neighbour
        # on a shared machine hits both alike; the medians are reported.
        rates = {"birdclef-export": [], "timm torch.onnx": []}
        per_round = max(args.seconds / (2 * args.rounds), 0.5)
        for _ in range(args.rounds):
            rates["birdclef-export"].append(windows_per_second(ours, x, per_round))
            rates["timm torch.onnx"].append(windows_per_second(theirs, x, per_round))
    print(f"{args.arch}, input {c}x{h}x{w}, {classes} classes, batch {args.batch}, "
          f"{args.threads} threads, onnxruntime {ort.__version__}")
    med = {k: float(np.median(v)) for k, v in rates.items()}
    print(f"{'model':<18} {'median':>10} {'min':>8} {'max':>8}  windows/s over {args.rounds} rounds")
    for k, v in rates.items():
        print(f"{k:<18} {med[k]:>10.1f} {min(v):>8.1f} {max(v):>8.1f}")
    ratio = med["birdclef-export"] / med["timm torch.onnx"]
    print(f"ratio_ours_over_timm={ratio:.3f}")


if __name__ == "__main__":
    main()
