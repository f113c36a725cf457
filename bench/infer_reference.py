#!/usr/bin/env python3
"""The pipeline a Kaggle notebook would write, for comparison with birdclef-infer: per soundscape,
soundfile decode, librosa log-mel of its 5-s windows (the model card's frontend, including its
normalisation), onnxruntime on the batch, sigmoid; rows appended to a DataFrame-like list.
Also measures raw ONNX Runtime throughput on precomputed inputs, of one model and of an ensemble.

    infer_reference.py raw   MODEL.onnx [--threads 2] [--batch 4,8,48] [--seconds 5] [--repeats 3]
    infer_reference.py raw_openvino MODEL.onnx [--threads 2] [--batch 4,8,48] [--seconds 5] [--repeats 3]
    infer_reference.py ensemble MODEL.onnx... [--threads 2] [--batch 4] [--piece 48] [--seconds 5]
    infer_reference.py fuse MODEL.onnx... [--threads 2] [--batch 4,8] [--seconds 5] [--repeats 3]
    infer_reference.py pipeline MODEL.onnx FILE... [--threads 2] [--repeats 3]
Prints one JSON object. Every figure is the best of --repeats runs: the development machine is a
shared VM whose speed drifts by 10-20% from minute to minute, and the best run is the one least
disturbed. The pipeline first makes one untimed pass over the first file, so that even a single
timed pass is a warm one (library caches filled, like a notebook's second cell)."""
import argparse
import json
import time

import librosa
import numpy as np
import onnxruntime as ort
import soundfile as sf


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def card_of(sess):
    return json.loads(sess.get_modelmeta().custom_metadata_map["birdclef.card"])


def raw(args):
    """ONNX Runtime alone on precomputed inputs, for each batch size two ways: one session with
    `threads` intra-op threads, and `threads` single-threaded sessions running batches in
    parallel (ONNX Runtime releases the GIL while it runs)."""
    import threading

    def rate(sessions, batch):
        c, h, w = card_of(sessions[0])["input_shape"]
        x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
        name = sessions[0].get_inputs()[0].name
        for s in sessions:
            s.run(None, {name: x})
        counts = [0] * len(sessions)
        start = time.perf_counter()

        def loop(i):
            while time.perf_counter() - start < args.seconds:
                sessions[i].run(None, {name: x})
                counts[i] += 1
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * batch / (time.perf_counter() - start)

    one = [session(args.model, args.threads)]
    parallel = [session(args.model, 1) for _ in range(args.threads)]
    out = {}
    for batch in [int(b) for b in args.batch.split(",")]:
        out[f"one_session_b{batch}"] = max(rate(one, batch) for _ in range(args.repeats))
        out[f"parallel_sessions_b{batch}"] = max(rate(parallel, batch) for _ in range(args.repeats))
    best = max(out, key=out.get)
    out["best"] = best
    out["windows_per_second"] = out[best]
    return out


def raw_openvino(args):
    """OpenVINO alone (fp32, CPU plugin) on precomputed inputs, for each batch size three ways:
    throughput mode (`threads` threads, the streams OpenVINO picks, 2 requests per stream kept in
    flight by an AsyncInferQueue), and `threads` single-stream, single-threaded compiled models
    run in parallel from Python threads, with the file's dynamic batch and with the batch fixed
    (a static input shape, which is how birdclef-infer compiles it)."""
    import threading
    import openvino as ov

    core = ov.Core()
    model = core.read_model(args.model)
    card = card_of(session(args.model, 1))
    c, h, w = card["input_shape"]
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}

    def throughput(batch):
        compiled = core.compile_model(model, "CPU", {**fp32, "PERFORMANCE_HINT": "THROUGHPUT",
                                                     "INFERENCE_NUM_THREADS": args.threads})
        n = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        queue = ov.AsyncInferQueue(compiled, n)
        x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
        for _ in range(n):
            queue.start_async({0: x})
        queue.wait_all()
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            queue.start_async({0: x})
            done += 1
        queue.wait_all()
        return done * batch / (time.perf_counter() - start), n

    def parallel(batch, static=False):
        net = model
        if static:  # as birdclef-infer compiles it: the batch fixed
            net = core.read_model(args.model)
            net.reshape([batch, c, h, w])
        compiled = [core.compile_model(net, "CPU", {**fp32, "PERFORMANCE_HINT": "LATENCY",
                                                      "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1,
                                                      "ENABLE_CPU_PINNING": False})
                    for _ in range(args.threads)]
        requests = [m.create_infer_request() for m in compiled]
        x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
        for r in requests:
            r.infer({0: x})
        counts = [0] * len(requests)
        start = time.perf_counter()

        def loop(i):
            while time.perf_counter() - start < args.seconds:
                requests[i].infer({0: x})
                counts[i] += 1
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * batch / (time.perf_counter() - start)

    out = {}
    for batch in [int(b) for b in args.batch.split(",")]:
        rates = [throughput(batch) for _ in range(args.repeats)]
        out[f"throughput_b{batch}"] = max(r for r, _ in rates)
        out[f"requests_b{batch}"] = rates[0][1]
        out[f"parallel_models_b{batch}"] = max(parallel(batch) for _ in range(args.repeats))
        out[f"parallel_static_b{batch}"] = max(parallel(batch, True) for _ in range(args.repeats))
    rates = {k: v for k, v in out.items() if not k.startswith("requests")}
    best = max(rates, key=rates.get)
    out["best"] = best
    out["windows_per_second"] = out[best]
    out["version"] = ov.get_version()
    return out


def fused_graph(paths):
    """The fold ensemble as one ONNX graph: the folds' graphs side by side on the one input, each
    output through a Sigmoid, then their Mean; the first fold's metadata (the card)."""
    import onnx
    from onnx import compose, helper

    models = [onnx.load(p) for p in paths]
    input_name = models[0].graph.input[0].name
    nodes, inits, outs = [], [], []
    for i, m in enumerate(models):
        # Every name but the shared input gets the fold's prefix.
        m = compose.add_prefix(m, f"fold{i}_", rename_inputs=False)
        nodes.extend(m.graph.node)
        inits.extend(m.graph.initializer)
        out = m.graph.output[0].name
        nodes.append(helper.make_node("Sigmoid", [out], [f"fold{i}_prob"]))
        outs.append(f"fold{i}_prob")
    nodes.append(helper.make_node("Mean", outs, ["probs"]))
    first = models[0]
    out_type = first.graph.output[0].type
    graph = helper.make_graph(nodes, "fused_ensemble", [first.graph.input[0]],
                              [helper.make_value_info("probs", out_type)], inits)
    fused = helper.make_model(graph, opset_imports=first.opset_import)
    fused.ir_version = first.ir_version
    fused.metadata_props.extend(first.metadata_props)
    onnx.checker.check_model(fused, full_check=True)
    return fused.SerializeToString(), input_name


def fuse(args):
    """The fold ensemble fused into one graph (mean of sigmoids) against the folds as separate
    models run in turn on the same batch, in ONNX Runtime and OpenVINO: `threads` parallel
    single-threaded sessions (compiled models) each way, as birdclef-infer's workers run them;
    windows/s of the whole ensemble. Also checks that the fused output equals the mean of the
    separate sigmoids."""
    import threading
    import openvino as ov

    import os
    import tempfile

    paths = [args.model] + args.files
    graph, input_name = fused_graph(paths)
    tmp = tempfile.TemporaryDirectory()
    fused = os.path.join(tmp.name, "fused.onnx")
    with open(fused, "wb") as f:
        f.write(graph)
    c, h, w = card_of(session(paths[0], 1))["input_shape"]
    core = ov.Core()
    ov_cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1

    def ort_runner(models):
        sessions = [ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]) for m in models]
        return lambda x: [s.run(None, {input_name: x})[0] for s in sessions]

    def ov_runner(models):
        requests = [core.compile_model(m, "CPU", ov_cfg).create_infer_request() for m in models]
        return lambda x: [r.infer({0: x})[0] for r in requests]

    def rate(make, batch):
        runners = [make() for _ in range(args.threads)]
        x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
        for r in runners:
            r(x)
        counts = [0] * len(runners)
        start = time.perf_counter()

        def loop(i):
            while time.perf_counter() - start < args.seconds:
                runners[i](x)
                counts[i] += 1
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(runners))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * batch / (time.perf_counter() - start)

    x = np.random.default_rng(1).standard_normal((4, c, h, w)).astype(np.float32)
    sep = np.mean([1 / (1 + np.exp(-y)) for y in ort_runner(paths)(x)], axis=0)
    out = {"models": len(paths),
           "max_abs_diff_ort": float(np.abs(ort_runner([fused])(x)[0] - sep).max()),
           "max_abs_diff_openvino": float(np.abs(ov_runner([fused])(x)[0] - sep).max())}
    makers = {"ort_separate": lambda: ort_runner(paths), "ort_fused": lambda: ort_runner([fused]),
              "openvino_separate": lambda: ov_runner(paths),
              "openvino_fused": lambda: ov_runner([fused])}
    for batch in [int(b) for b in args.batch.split(",")]:
        for name, make in makers.items():
            out[f"{name}_b{batch}"] = max(rate(make, batch) for _ in range(args.repeats))
    return out


def ensemble(args):
    """ONNX Runtime alone running an ensemble as a streaming scorer must: `threads` threads, each
    with its own single-threaded session of every model, take pieces of `piece` distinct
    precomputed windows (rounded up to whole batches, like birdclef-infer's PIECE_WINDOWS; a pool
    of 256, larger than the CPU cache) and run each model on the piece's batches in turn. Windows/s counts a window once, however many models saw it."""
    import threading

    models = [args.model] + args.files
    per_thread = [[session(m, 1) for m in models] for _ in range(args.threads)]
    c, h, w = card_of(per_thread[0][0])["input_shape"]
    name = per_thread[0][0].get_inputs()[0].name
    pool = np.random.default_rng(0).standard_normal((256, c, h, w)).astype(np.float32)
    batch = int(args.batch.split(",")[0])
    batches = -(-args.piece // batch)
    for sessions in per_thread:
        for s in sessions:
            s.run(None, {name: pool[:batch]})

    def rate():
        counts = [0] * args.threads
        start = time.perf_counter()

        def loop(t):
            i = t * 128
            while time.perf_counter() - start < args.seconds:
                xs = []
                for _ in range(batches):
                    j = i % (len(pool) - batch + 1)
                    xs.append(pool[j:j + batch])
                    i += batch
                for s in per_thread[t]:
                    for x in xs:
                        s.run(None, {name: x})
                counts[t] += batch * batches
        threads = [threading.Thread(target=loop, args=(t,)) for t in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start)

    return {"models": len(models), "batch": batch, "piece": batch * batches,
            "windows_per_second": max(rate() for _ in range(args.repeats))}


def one_pass(args, sess):
    """Every file once, as a notebook's loop over the test soundscapes would."""
    card = card_of(sess)
    fe = card["frontend"]
    name = sess.get_inputs()[0].name
    w = round(fe["windows"]["window_seconds"] * fe["sample_rate"])
    rows, windows, start = [], 0, time.perf_counter()
    for path in args.files:
        y, sr = sf.read(path, dtype="float32")
        if y.ndim > 1:
            y = y.mean(axis=1)
        n = max(1, len(y) // w + int(len(y) % w >= fe["windows"]["min_last_window_seconds"] * sr))
        clips = np.zeros((n, w), dtype=np.float32)
        for i in range(n):
            part = y[i * w:(i + 1) * w]
            clips[i, :len(part)] = part
        S = librosa.feature.melspectrogram(
            y=clips, sr=sr, n_fft=fe["n_fft"], hop_length=fe["hop_length"], win_length=fe["win_length"],
            center=fe["center"], pad_mode=fe["pad_mode"], power=fe["power"], n_mels=fe["n_mels"],
            fmin=fe["fmin"], fmax=fe["fmax"], htk=fe["mel_scale"] == "htk")
        x = librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0)
        if fe["normalize"] == "image_standard":
            mean = x.mean(axis=(1, 2), keepdims=True)
            std = x.std(axis=(1, 2), keepdims=True)
            x = (x - mean) / np.maximum(std, 1e-6)
        x = x[:, None].astype(np.float32)
        logits = sess.run(None, {name: x})[0]
        probs = 1 / (1 + np.exp(-logits))
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        rows.extend((f"{stem}_{(i + 1) * 5}", p) for i, p in enumerate(probs))
        windows += n
    elapsed = time.perf_counter() - start
    return {"windows": windows, "seconds": elapsed, "windows_per_second": windows / elapsed}


def pipeline(args):
    sess = session(args.model, args.threads)
    one_pass(argparse.Namespace(**{**vars(args), "files": args.files[:1]}), sess)
    return min((one_pass(args, sess) for _ in range(args.repeats)), key=lambda r: r["seconds"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["raw", "raw_openvino", "ensemble", "fuse", "pipeline"])
    ap.add_argument("model")
    ap.add_argument("files", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="4,8,48",
                    help="batch sizes to try, comma-separated (ensemble: the first only)")
    ap.add_argument("--piece", type=int, default=48, help="ensemble: windows per piece")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    modes = {"raw": raw, "raw_openvino": raw_openvino, "ensemble": ensemble, "fuse": fuse,
             "pipeline": pipeline}
    print(json.dumps(modes[args.mode](args)))


if __name__ == "__main__":
    main()
