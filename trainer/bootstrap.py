"""Uncertainty of an ablation's figures, from the runs' predictions (RUN/predictions.csv): a bootstrap
95 % interval of each variant's test CCC, and a paired bootstrap test between two variants.

Resampling is over utterances (B resamples of the test set with replacement, one seeded generator, so
the figures are reproducible); a variant's statistic on a resample is the mean over its training seeds
of each seed's CCC, as the table reports. Two variants are compared on the same resamples (paired):
the p-value is two-sided, twice the smaller share of resampled differences on either side of 0.
Written by hand: the statistic (mean over seeds of a CCC per column, paired across variants) is not one
scipy.stats.bootstrap takes without resampling each seed apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from msf.trainer.model import CCC_COLUMNS
from msf.trainer.train import read_predictions

RESAMPLES = 1000


def stacked_predictions(runs: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeds x N x 3 predictions and N x 3 gold of one split, utterances in one order (by id)."""
    preds, gold = [], None
    for run in runs:
        rows = sorted((r for r in read_predictions(run / "predictions.csv") if r.split == split), key=lambda r: r.id)
        preds.append([r.pred for r in rows])
        g = np.array([r.gold for r in rows])
        if gold is not None and (g.shape != gold.shape or not np.allclose(g, gold)):
            raise ValueError(f"the runs {runs[0]} and {run} were scored on different {split} utterances")
        gold = g
    return np.array(preds), gold  # type: ignore[return-value]


def _ccc(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """CCC per column over the second-to-last axis (... x N x 3 -> ... x 3)."""
    pm, gm = pred.mean(-2, keepdims=True), gold.mean(-2, keepdims=True)
    cov = ((pred - pm) * (gold - gm)).mean(-2)
    return 2 * cov / (pred.var(-2) + gold.var(-2) + (pm - gm).squeeze(-2) ** 2 + 1e-8)


def resampled(preds: np.ndarray, gold: np.ndarray, index: np.ndarray) -> np.ndarray:
    """B x 4: per resample, the seeds' mean CCC of valence, arousal, dominance and their mean."""
    out = []
    for k in range(0, len(index), 100):  # 100 resamples at a time: memory 100 x N x 3 per seed
        idx = index[k : k + 100]
        c = np.mean([_ccc(p[idx], gold[idx]) for p in preds], 0)  # chunk x 3
        out.append(np.concatenate([c, c.mean(-1, keepdims=True)], -1))
    return np.concatenate(out)


def seed_ensemble(preds: np.ndarray, gold: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    """The CCC of the seeds' averaged predictions (one predictor made of every training seed) per
    column, with its bootstrap 95 % interval on the same resamples as the mean of seeds."""
    averaged = preds.mean(0, keepdims=True)  # 1 x N x 3
    c = _ccc(averaged[0], gold)
    out: dict[str, Any] = {col: round(float(v), 4) for col, v in zip(CCC_COLUMNS, [*c, c.mean()])}
    out["ci95"] = interval(resampled(averaged, gold, index))
    return out


def resample_index(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def interval(stats: np.ndarray) -> dict[str, list[float]]:
    """The 2.5th and 97.5th percentiles of each column."""
    lo, hi = np.percentile(stats, [2.5, 97.5], axis=0)
    return {c: [round(float(a), 4), round(float(b), 4)] for c, a, b in zip(CCC_COLUMNS, lo, hi)}


def paired(a: np.ndarray, b: np.ndarray, observed_a: dict[str, float], observed_b: dict[str, float]
           ) -> dict[str, dict[str, float]]:
    """Per column: the observed difference a - b and its two-sided paired bootstrap p-value."""
    d = a - b
    out = {}
    for j, c in enumerate(CCC_COLUMNS):
        p = min(1.0, 2 * min(float((d[:, j] <= 0).mean()), float((d[:, j] >= 0).mean())))
        out[c] = {"delta": round(observed_a[c] - observed_b[c], 4), "p": round(p, 4)}
    return out
