"""Does distillation help? Every variant of `birdclef-train pipeline` over several seeds, as a table.

The competition is synthesised (`[data.synth]`) so that the unlabeled soundscapes carry what the
labelled clips lack, as in the real competitions: clean focal training recordings, and test and
unlabeled soundscapes whose calls are a "dialect" of the focal ones (pitch and length moved),
quieter, denser and over louder background (`domain_shift`). For each seed, one pipeline
directory is reused by every variant: the teachers, their pseudo-labels and the students without
pseudo-labels are trained once (their stages are up to date for the next variant), and each
variant trains its own students. Teachers: an ensemble of four folds of efficientvit_b0 trained for
12 epochs; students: one fold of efficientvit_b0, 8 epochs (both 64 mels x 161 frames). The score
is the test macro ROC-AUC (`summary.csv`) on 24 soundscapes of 30 s (144 windows, 8 species).

Variants:
  none      students without pseudo-labels (the pipeline's baseline stage)
  fraction  half of every batch pseudo-labelled windows (the pipeline's mode before mixing)
  mix       every labelled clip mixed with a pseudo-labelled window (weight 0.5, targets max,
            windows drawn by the sum of their soft targets)
  ns1..ns3  noisy-student rounds 1-3 with mixing, stochastic depth 0.15 and the 2025 winners'
            powers 1/0.65, 1/0.55, 1/0.6 (one run; rounds 1 and 2 are its -eval stages)
  kd        live knowledge distillation from the teachers (weight 0.5, temperature 2), no
            pseudo-labels
  mix+kd    mixing and knowledge distillation together

  .env/venv/bin/python bench/distill.py [--seeds 1 2 3] [--data synthetic|mini] [--out DIR]
                                       [--variants fraction mix ns kd mix+kd]

Each variant's scores are kept beside its config (OUT/seedN-VARIANT.scores.json), so a run that
was stopped continues where it stopped, and adding seeds trains only the new ones.
Prints one row per variant: mean and sample standard deviation over seeds, the mean paired
difference to `none` (same seed) with its standard deviation, and each seed's score.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = {
    "model": {"n_mels": 64, "hop_length": 1000, "n_fft": 1024},
    "optim": {
        "epochs": 8,
        "batch_size": 16,
        "repeats": 4,
        "lr": 2e-3,
        "warmup_epochs": 1.0,
        "ema_decay": 0.99,
    },
    "augment": {"background_prob": 0.3, "mixup_prob": 0.3},
    "data": {"n_folds": 4, "folds": [0], "cache_seconds": 15.0},
}

SYNTH = {
    "species": 8,
    "recordings_per_species": 6,
    "recording_seconds": 8.0,
    "unlabeled": 48,
    "unlabeled_seconds": 30.0,
    "test": 24,
    "test_seconds": 30.0,
    "seed": 2027,
    "domain_shift": 0.5,
}

MIX = {"pseudo_fraction": 0.0, "mix_prob": 1.0, "mix_weight": 0.5, "sampler": "weighted"}
KD = {"pseudo_fraction": 0.0, "kd_weight": 0.5, "kd_temperature": 2.0}

# variant -> (student [distill] keys, student [model] keys, [rounds] table or None)
VARIANTS = {
    "fraction": ({"pseudo_fraction": 0.5}, {}, None),
    "mix": (MIX, {}, None),
    "ns": (
        MIX,
        {"drop_path_rate": 0.15},
        {
            "count": 3,
            "round": [
                {"distill": {"power": round(1 / 0.65, 4)}},
                {"distill": {"power": round(1 / 0.55, 4)}},
                {"distill": {"power": round(1 / 0.6, 4)}},
            ],
        },
    ),
    "kd": (KD, {}, None),
    "mix+kd": ({**MIX, "kd_weight": 0.5, "kd_temperature": 2.0}, {}, None),
}


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def table(name, d):
    lines = [f"[{name}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + "\n"
    for k, v in d.items():
        if isinstance(v, dict):
            out += table(f"{name}.{k}", v)
    return out


def mini_config(seed, variant, mini):
    """The same variants on ../shared/data/birdclef-mini with configs/birdclef-mini.toml:
    teachers of all five folds, students of folds 0 and 1."""
    fit = os.path.join(ROOT, "configs", "birdclef-mini.toml")
    distill, model, rounds = VARIANTS.get(variant, ({}, {}, None))
    text = table("data", {"dir": mini})
    text += table(
        "teacher", {"config": fit, "set": ["data.folds=[0, 1, 2, 3, 4]", f"run.seed={seed}"]}
    )
    text += table(
        "student", {"config": fit, "set": ["data.folds=[0, 1]", f"run.seed={seed + 100}"]}
    )
    text += table("student.train", {"model": model, "distill": distill}) if model else ""
    if not model:
        text += table("student.train.distill", distill)
    text += table("report", {"teachers": True, "baseline": True})
    text += rounds_toml(rounds)
    return text


def rounds_toml(rounds):
    if not rounds:
        return ""
    text = f"[rounds]\ncount = {rounds['count']}\n"
    for r in rounds["round"]:
        text += "[[rounds.round]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in r.items())
    return text


def config(seed, variant):
    # Teachers stronger than the students, as in the competitions: an ensemble of all four
    # folds, trained longer.
    teacher = {
        **TRAIN,
        "model": {**TRAIN["model"], "arch": "efficientvit_b0"},
        "optim": {**TRAIN["optim"], "epochs": 12},
        "data": {**TRAIN["data"], "folds": [0, 1, 2, 3]},
        "run": {"seed": seed},
    }
    distill, model, rounds = VARIANTS.get(variant, ({}, {}, None))
    student = {
        **TRAIN,
        "model": {**TRAIN["model"], "arch": "efficientvit_b0", **model},
        "run": {"seed": seed + 100},
        "distill": distill,
    }
    text = table("data", {"synthetic": True}) + table("data.synth", SYNTH)
    text += table("teacher.train", teacher) + table("student.train", student)
    text += table("report", {"teachers": True, "baseline": True})
    return text + rounds_toml(rounds)


def summary(out):
    with open(os.path.join(out, "summary.csv")) as f:
        return {row["stage"]: float(row["value"]) for row in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", help="work directory [default: .dev/bench-distill(-mini)]")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "birdclef-train"))
    ap.add_argument(
        "--data",
        choices=["synthetic", "mini"],
        default="synthetic",
        help="the shifted synthetic competition, or ../shared/data/birdclef-mini",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="the variants to train (the teachers and `none` always are)",
    )
    args = ap.parse_args()
    mini = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "birdclef-mini"))
    if args.data == "mini" and not os.path.isdir(mini):
        sys.exit(f"--data mini needs {mini}")
    args.out = args.out or os.path.join(
        ROOT, ".dev", "bench-distill" + ("-mini" if args.data == "mini" else "")
    )
    scores = {}  # variant -> {seed: auc}
    t0 = time.time()
    for seed in args.seeds:
        out = os.path.join(args.out, f"seed{seed}")
        os.makedirs(out, exist_ok=True)
        for variant in args.variants:
            path = os.path.join(args.out, f"seed{seed}-{variant}.pipeline.toml")
            text = (config(seed, variant) if args.data == "synthetic" else
                    mini_config(seed, variant, mini))
            # A variant already run with this very config is not run again: its scores are kept
            # next to the config, so an interrupted benchmark continues where it stopped.
            kept = os.path.join(args.out, f"seed{seed}-{variant}.scores.json")
            t = time.time()
            got = None
            if os.path.exists(kept) and os.path.exists(path):
                with open(path) as f, open(kept) as g:
                    got = json.load(g) if f.read() == text else None
            if got is None:
                with open(path, "w") as f:
                    f.write(text)
                done = subprocess.run(
                    [args.binary, "--device", "cpu", "pipeline", "--config", path, "--out", out],
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(args.out, f"seed{seed}-{variant}.log"), "w"),
                )
                if done.returncode != 0:
                    sys.exit(f"{variant}, seed {seed}: the pipeline failed; see its .log in {args.out}")
                s = summary(out)
                got = {"teachers": s["teachers-eval"], "none": s["baseline-eval"]}
                if variant == "ns":
                    got.update(ns1=s["students-eval"], ns2=s["students-r2-eval"], ns3=s["score"])
                else:
                    got[variant] = s["score"]
                with open(kept, "w") as g:
                    json.dump(got, g)
            for k, v in got.items():
                # The teachers and the students without pseudo-labels are those of the first
                # variant (a variant that changes the student's [model], such as stochastic
                # depth, retrains its own baseline).
                scores.setdefault(k, {}).setdefault(seed, v)
            print(
                f"seed {seed} {variant}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in got.items())
                + f" ({time.time() - t:.0f} s)",
                file=sys.stderr,
            )
    order = ["teachers", "none", "fraction", "mix", "ns1", "ns2", "ns3", "kd", "mix+kd"]
    print(
        f"\ntest macro ROC-AUC over seeds {args.seeds} "
        f"({len(args.seeds)} runs each, {time.time() - t0:.0f} s in all)\n"
    )
    print(f"| variant | mean | sd | vs none (paired) | {' | '.join(f'seed {s}' for s in args.seeds)} |")
    print("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in args.seeds) + " |")
    base = scores["none"]
    for v in (v for v in order if v in scores):
        xs = [scores[v][s] for s in args.seeds]
        sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
        d = [scores[v][s] - base[s] for s in args.seeds]
        dsd = statistics.stdev(d) if len(d) > 1 else float("nan")
        paired = "" if v in ("none", "teachers") else f"{statistics.mean(d):+.4f} ± {dsd:.4f}"
        print(
            f"| {v} | {statistics.mean(xs):.4f} | {sd:.4f} | {paired} | "
            + " | ".join(f"{x:.4f}" for x in xs)
            + " |"
        )


if __name__ == "__main__":
    main()
