"""Every leave-one-session-out fold in one command (`--folds all`): a run (or an ablation) per fold in
OUT/fold-K, then OUT/folds.json: per fold its test CCC, the mean and standard deviation over folds, and
the CCC of the pooled test predictions of all folds (each utterance is in exactly one test fold)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

import numpy as np

from msf.pipeline.cache.view import CacheView
from msf.pipeline.corpora.iemocap import SESSIONS
from msf.pipeline.errors import UsageError
from msf.trainer.model import CCC_COLUMNS, ccc_scores
from msf.trainer.train import read_predictions



def parse_folds(spec: str) -> list[int]:
    """`all` or fold numbers separated by commas (1..5)."""
    if spec.strip().lower() == "all":
        return list(range(1, SESSIONS + 1))
    try:
        folds = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--folds takes `all` or fold numbers such as 1,3, not {spec!r}") from None
    bad = [k for k in folds if not 1 <= k <= SESSIONS]
    if bad or not folds:
        raise UsageError(f"--folds: IEMOCAP folds are 1..{SESSIONS}; got {spec!r}")
    return folds


def chosen_folds(spec: str, fold: int | None, features: Path, name: str, verb: str) -> list[int]:
    """`--folds SPEC` checked: not beside `--fold`, valid folds, a feature set whose utterances name
    their session. `verb` says what the command does with one fold ("trains", "ablates")."""
    if fold is not None:
        raise UsageError(f"--fold {verb} one fold, --folds several: give one of them")
    folds = parse_folds(spec)
    require_sessions(features, name)
    return folds


def require_sessions(features: Path, name: str) -> None:
    """`--folds` splits by session: a feature set whose utterances name none is refused up front."""
    with CacheView.open(features, name) as view:
        lacking = sum("session" not in u.extra for u in view.utterances)
    if lacking:
        raise UsageError(f"--folds applies to corpora with sessions (IEMOCAP, leave-one-session-out); {lacking} "
                         f"utterance(s) of feature set {name!r} of {features} name no session")


def pooled(prediction_files: list[Path], split: str = "test") -> dict[str, float]:
    """CCC of the predictions of `split` of several runs taken together (each utterance once)."""
    pred, gold, seen = [], [], set()
    for path in prediction_files:
        for row in read_predictions(path):
            if row.split != split or row.id in seen or row.gold is None:
                continue
            seen.add(row.id)
            pred.append(row.pred)
            gold.append(row.gold)
    return {**ccc_scores(pred, gold), "n": len(pred)}


def spread(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over folds of each CCC column."""
    return {"mean": {c: round(statistics.fmean(f[c] for f in per_fold), 4) for c in CCC_COLUMNS},
            "sd": {c: round(statistics.stdev(f[c] for f in per_fold), 4) if len(per_fold) > 1 else 0.0
                   for c in CCC_COLUMNS}}


def train_folds(folds: list[int], out: Path, run_fold: Callable[[int, Path], dict[str, Any]]) -> dict[str, Any]:
    """`msf train --folds`: run_fold(k, OUT/fold-k) trains one fold; the summary of their test CCC."""
    per_fold = {k: run_fold(k, out / f"fold-{k}")["test"] for k in folds}
    summary = {"folds": per_fold, **spread(list(per_fold.values())),
               "pooled": pooled([out / f"fold-{k}" / "predictions.csv" for k in folds])}
    (out / "folds.json").write_text(json.dumps(summary, indent=2))
    return summary


def ablate_folds(folds: list[int], out: Path, run_fold: Callable[[int, Path], dict[str, Any]]) -> dict[str, Any]:
    """`msf ablate --folds`: run_fold(k, OUT/fold-k) ablates one fold; per variant the mean and sd over
    folds of its (seed-averaged) test CCC, and the pooled CCC of all folds' test predictions, averaged
    over seeds."""
    results = {k: run_fold(k, out / f"fold-{k}") for k in folds}
    variants = list(next(iter(results.values())))
    summary: dict[str, Any] = {}
    for v in variants:
        per_fold = [{c: results[k][v][c] for c in CCC_COLUMNS} for k in folds]
        seeds = sorted({p.parent.name for k in folds for p in (out / f"fold-{k}" / v).glob("seed-*/predictions.csv")})
        pooled_by_seed = [pooled([out / f"fold-{k}" / v / s / "predictions.csv" for k in folds]) for s in seeds]
        summary[v] = {**spread(per_fold), "folds": dict(zip(folds, per_fold)),
                      "pooled": {c: round(float(np.mean([p[c] for p in pooled_by_seed])), 4) for c in CCC_COLUMNS}
                      | {"n": pooled_by_seed[0]["n"] if pooled_by_seed else 0}}
    (out / "folds.json").write_text(json.dumps(summary, indent=2))
    return summary


def folds_table(summary: dict[str, Any]) -> str:
    """Per variant: mean +- sd over folds and the pooled CCC, per dimension (markdown)."""
    head = "| variant | " + " | ".join(c.removeprefix("ccc_") for c in CCC_COLUMNS) + " | pooled mean | folds |"
    lines = [head, "|" + "---|" * (len(CCC_COLUMNS) + 3)]
    for v, s in summary.items():
        cells = [f"{s['mean'][c]:.3f} ± {s['sd'][c]:.3f}" for c in CCC_COLUMNS]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {s['pooled']['ccc_mean']:.3f} | {len(s['folds'])} |")
    return "\n".join(lines) + "\n"
