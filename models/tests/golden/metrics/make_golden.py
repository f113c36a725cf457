#!/usr/bin/env python3
"""Regenerate cases.json: golden values for models/src/metrics.rs, computed with scikit-learn.

Run from the repository root:

    .env/venv/bin/python models/tests/golden/metrics/make_golden.py

The reference computations follow the Kaggle metric code:

* BirdCLEF 2024/2025 macro ROC-AUC: keep the solution columns with at least one positive,
  then sklearn.metrics.roc_auc_score(solution[:, kept], submission[:, kept], average="macro").
* BirdCLEF 2023 padded cmAP: append `padding_factor` rows of ones to solution and submission,
  then sklearn.metrics.average_precision_score(..., average="macro").
* F1 over the classes with a positive (`kept`): sklearn.metrics.f1_score(solution, predicted,
  labels=kept, average="macro" / "weighted" / None, zero_division=0), the predictions being
  `submission >= threshold` or the one-hot argmax of each row.
* Confusion matrix: sklearn.metrics.confusion_matrix(first positive of each row with one,
  argmax of its scores, labels=range(classes)).

Scores are rounded to a few decimals (or built from small grids) so that every value is
written and re-read exactly, and so that ties are plentiful; the expected values are computed
from the very numbers that are written out.
"""

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import sklearn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

OUT = Path(__file__).resolve().parent / "cases.json"
PADDINGS = [0, 1, 5]
F1_THRESHOLDS = ["0.5", "0.3"]


def f1(sol, pred):
    """F1 over the classes with a positive; None when there are none. With one column, sklearn
    reads an (n, 1) indicator matrix as binary labels and `labels=[0]` as the negative class, so
    a single-class case takes f1_score of the column itself (its positive class)."""
    kept = [c for c in range(sol.shape[1]) if sol[:, c].sum() > 0]
    if not kept:
        return None
    per_class = [None] * sol.shape[1]
    if sol.shape[1] == 1:
        v = float(f1_score(sol[:, 0], pred[:, 0], zero_division=0))
        per_class[0] = v
        return {"macro": v, "weighted": v, "per_class": per_class}
    per = np.atleast_1d(f1_score(sol, pred, labels=kept, average=None, zero_division=0))
    for c, v in zip(kept, per):
        per_class[c] = float(v)
    return {
        "macro": float(f1_score(sol, pred, labels=kept, average="macro", zero_division=0)),
        "weighted": float(f1_score(sol, pred, labels=kept, average="weighted", zero_division=0)),
        "per_class": per_class,
    }


def f1_cases(sol, sub):
    out = {t: f1(sol, (sub >= float(t)).astype(int)) for t in F1_THRESHOLDS}
    onehot = np.zeros_like(sol, dtype=int)
    onehot[np.arange(sol.shape[0]), np.argmax(sub, axis=1)] = 1
    out["argmax"] = f1(sol, onehot)
    return out


def confusion(sol, sub):
    rows = [r for r in range(sol.shape[0]) if sol[r].sum() > 0]
    truth = [int(np.argmax(sol[r])) for r in rows]
    pred = [int(np.argmax(sub[r])) for r in rows]
    if not rows:
        return np.zeros((sol.shape[1], sol.shape[1]), dtype=int).tolist()
    return confusion_matrix(truth, pred, labels=list(range(sol.shape[1]))).tolist()


def kaggle_roc_auc(sol, sub):
    """Macro ROC-AUC as in the BirdCLEF 2024/2025 metric; returns (result, error)."""
    n_classes = sol.shape[1]
    scored = [c for c in range(n_classes) if sol[:, c].sum() > 0]
    per_class = [None] * n_classes
    if not scored:
        # The Kaggle code asserts len(scored_columns) > 0.
        return None, per_class, {"kind": "no_scored_classes"}, "assertion"
    no_neg = [c for c in scored if (sol[:, c] == 0).sum() == 0]
    sklearn_said = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(roc_auc_score(sol[:, scored], sub[:, scored], average="macro"))
        except ValueError as e:  # scikit-learn <= 1.5
            value = None
            sklearn_said = f"ValueError: {e}"
    if value is not None and (
        math.isnan(value) or any(issubclass(w.category, UndefinedMetricWarning) for w in caught)
    ):
        sklearn_said = f"nan with UndefinedMetricWarning (returned {value})"
        value = None
    if value is None:
        assert no_neg, "sklearn refused a case without a class lacking negatives"
        return None, per_class, {"kind": "no_negatives", "class": no_neg[0]}, sklearn_said
    assert not no_neg
    for c in scored:
        per_class[c] = float(roc_auc_score(sol[:, c], sub[:, c]))
    return value, per_class, None, None


def padded_cmap(sol, sub, padding_factor):
    """Padded cmAP as in the BirdCLEF 2023 metric; returns (macro, per-class)."""
    n_classes = sol.shape[1]
    pad = np.ones((padding_factor, n_classes))
    psol = np.concatenate([sol, pad])
    psub = np.concatenate([sub, pad])
    with warnings.catch_warnings():
        # padding 0 with a positive-free class: "No positive class found in y_true" and AP 0.
        warnings.simplefilter("ignore")
        macro = float(average_precision_score(psol, psub, average="macro"))
        per = np.atleast_1d(average_precision_score(psol, psub, average=None))
    return macro, [float(x) for x in per]


def case(name, description, sol, sub, labels=None):
    sol = np.asarray(sol, dtype=np.float64)
    sub = np.asarray(sub, dtype=np.float64)
    assert sol.shape == sub.shape and sol.ndim == 2
    assert set(np.unique(sol)) <= {0.0, 1.0}
    if labels is None:
        labels = [f"sp{c:03d}" for c in range(sol.shape[1])]
    auc, per_auc, err, sklearn_said = kaggle_roc_auc(sol, sub)
    if err is not None and err.get("kind") == "no_negatives":
        err["name"] = labels[err["class"]]
    out = {
        "name": name,
        "description": description,
        "rows": sol.shape[0],
        "classes": sol.shape[1],
        "labels": labels,
        "solution": sol.astype(int).tolist(),
        "submission": sub.tolist(),
        "roc_auc": {
            "macro": auc,
            "per_class": per_auc,
            "error": err,
            "sklearn_behaviour": sklearn_said,
        },
        "padded_cmap": {},
        "f1": f1_cases(sol, sub),
        "confusion": confusion(sol, sub),
    }
    for p in PADDINGS:
        macro, per = padded_cmap(sol, sub, p)
        out["padded_cmap"][str(p)] = {"macro": macro, "per_class": per}
    return out


def main():
    rng = np.random.default_rng(20240521)
    cases = []

    cases.append(case(
        "tiny_2rows_perfect", "2 rows x 2 classes, each class ranked perfectly",
        [[1, 0], [0, 1]], [[0.9, 0.2], [0.1, 0.8]]))
    cases.append(case(
        "tiny_2rows_reversed", "2 rows x 2 classes, each class ranked backwards",
        [[1, 0], [0, 1]], [[0.1, 0.8], [0.9, 0.2]]))
    cases.append(case(
        "tiny_2rows_tied", "2 rows x 1 class, both rows share the score",
        [[1], [0]], [[0.5], [0.5]]))

    n, c = 200, 6
    sol = (rng.random((n, c)) < 0.3).astype(int)
    levels = np.array([-0.0, 0.0, 0.25, 0.5, 0.75, 1.0])
    sub = levels[rng.integers(0, len(levels), (n, c))]
    # Scores correlated with the truth, but still on the coarse grid.
    sub = np.where(sol == 1, np.maximum(sub, levels[rng.integers(0, 6, (n, c))]), sub)
    cases.append(case(
        "heavy_ties", "200 x 6, scores on a 5-level grid (with -0.0 and 0.0 both present)",
        sol, sub))

    sol = (rng.random((50, 4)) < 0.4).astype(int)
    sol[0, :] = 1
    sol[1, :] = 0
    cases.append(case(
        "all_scores_equal", "50 x 4, every score 0.5: AUC 0.5 per class",
        sol, np.full((50, 4), 0.5)))

    sol = (rng.random((60, 5)) < 0.25).astype(int)
    sol[0, :] = 1
    sol[1, :] = 0
    sol[:, 2] = 0
    sub = np.round(rng.random((60, 5)), 3)
    cases.append(case(
        "class_without_positives", "60 x 5, class 2 has no positive: skipped by ROC-AUC, padded by cmAP",
        sol, sub))

    sol = (rng.random((40, 4)) < 0.3).astype(int)
    sol[0, :] = 1
    sol[1, :] = 0
    sol[:, 3] = 1
    sub = np.round(rng.random((40, 4)), 2)
    cases.append(case(
        "class_all_positive", "40 x 4, class 3 is positive on every row: ROC-AUC error",
        sol, sub, labels=["amerob", "blujay", "comrav", "houspa"]))

    sol = (rng.random((30, 5)) < 0.3).astype(int)
    sol[0, :] = 1
    sol[1, :] = 0
    sol[:, 1] = 0
    sol[:, 3] = 1
    sol[:, 4] = 1
    sub = np.round(rng.random((30, 5)), 2)
    cases.append(case(
        "skip_and_all_positive", "30 x 5, class 1 has no positive, classes 3 and 4 no negative: error names class 3",
        sol, sub))

    sol = np.zeros((12, 3), dtype=int)
    sub = np.round(rng.random((12, 3)), 2)
    cases.append(case(
        "no_positive_anywhere", "12 x 3 all-zero solution: ROC-AUC has nothing to score; cmAP with padding 0 is 0",
        sol, sub))

    sol = np.zeros((25, 4), dtype=int)
    sol[rng.choice(25, 7, replace=False), 1] = 1
    sub = np.round(rng.random((25, 4)), 2)
    cases.append(case(
        "single_scored_class", "25 x 4, only class 1 has positives (sklearn takes its binary path)",
        sol, sub))

    n, c = 500, 20
    logits = rng.normal(size=(n, c))
    sol = (logits + rng.normal(scale=1.5, size=(n, c)) > 1.0).astype(int)
    sub = np.round(1 / (1 + np.exp(-logits)), 6)
    cases.append(case(
        "random_500x20", "500 x 20, informative continuous scores (6 decimals)",
        sol, sub))

    n, c = 300, 10
    sol = (rng.random((n, c)) < 0.5).astype(int)
    sub = np.round(np.clip(0.5 + 0.2 * (sol - 0.5) + rng.normal(scale=0.3, size=(n, c)), 0, 1), 2)
    cases.append(case(
        "dense_multilabel_rounded", "300 x 10, half the entries positive, scores rounded to 2 decimals and clipped to [0, 1]",
        sol, sub))

    # BirdCLEF-like: 12 soundscapes x 12 five-second windows, many species, few calls.
    n, c = 144, 60
    sol = np.zeros((n, c), dtype=int)
    present = rng.choice(c, 18, replace=False)
    for sp in present:
        start = rng.integers(0, n - 10)
        length = rng.integers(1, 10)
        sol[start:start + length, sp] = 1
    base = rng.beta(0.3, 8.0, size=(n, c))
    boost = rng.beta(2.0, 3.0, size=(n, c))
    sub = np.round(np.where(sol == 1, np.maximum(base, boost), base), 5)
    cases.append(case(
        "birdclef_sparse", "144 x 60, 18 species present in short runs, low sparse scores (5 decimals), many classes without positives",
        sol, sub))

    # float32-representable scores: the Rust test also runs them through the f32 path.
    n, c = 120, 8
    sol = (rng.random((n, c)) < 0.2).astype(int)
    sol[0, :] = 1
    sol[1, :] = 0
    sub = (rng.integers(0, 1 << 12, size=(n, c)) / float(1 << 12)).astype(np.float32).astype(np.float64)
    cases.append(case(
        "float32_grid", "120 x 8, scores k/4096 (exact in f32 and f64), checked through f32 too",
        sol, sub))

    doc = {
        "generator": "models/tests/golden/metrics/make_golden.py",
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "paddings": PADDINGS,
        "f1_thresholds": F1_THRESHOLDS,
        "cases": cases,
    }
    text = json.dumps(doc, indent=None, separators=(",", ":"), allow_nan=False)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
