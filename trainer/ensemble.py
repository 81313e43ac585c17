"""Several trained runs as one predictor: their predictions averaged per target, with equal weights or
weights fitted on the dev split (never on a test split).

An ensemble folder (`msf ensemble --run A --run B --out E`) records its members by path with a
fingerprint of each (its settings, its features' settings and its weights), and refuses to load when a
member changed or is missing, naming it. Members may differ in sources, fusion or layers: each reads
what it needs from the cache through the one inference function (train.infer). Runs trained with
`--folds all` make an ensemble per fold (E/fold-K), scored fold by fold and pooled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msf.pipeline.corpus import TARGETS
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.progress import STDERR
from msf.trainer.model import ccc_scores

ENSEMBLE_FILE = "ensemble.json"


def run_fingerprint(run: Path) -> str:
    """What a member is: its settings, its features' settings and its trained weights, by content."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("config.json", "extraction.json", "best.pt"):
        path = run / name
        if not path.is_file():
            raise NotFound(f"{run} is not a trained run (no {name}); `msf train --out DIR` writes one")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class Ensemble:
    """Member runs and, per target, their weights (non-negative, summing to one)."""

    members: list[Path]
    weights: dict[str, list[float]] = field(default_factory=dict)  # empty: equal
    fitted_on: str = "equal"  # "equal", or the split the weights were fitted on ("dev")

    def weight_matrix(self) -> np.ndarray:
        """members x targets."""
        if not self.weights:
            return np.full((len(self.members), len(TARGETS)), 1.0 / len(self.members))
        return np.array([self.weights[t] for t in TARGETS]).T

    def combine(self, preds: list[np.ndarray]) -> np.ndarray:
        """The members' predictions (each N x targets, the same utterances in the same order) as one."""
        return np.einsum("mnt,mt->nt", np.stack(preds).astype(np.float64), self.weight_matrix()).astype(np.float32)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        record = {"members": [{"path": str(p.resolve()), "fingerprint": run_fingerprint(p)} for p in self.members],
                  "weights": self.weights or "equal", "fitted_on": self.fitted_on}
        (out / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2))


def is_ensemble(path: Path) -> bool:
    return (path / ENSEMBLE_FILE).is_file()


def load_ensemble(path: Path) -> Ensemble:
    """An ensemble folder, its members checked: a member moved, deleted or trained again is refused."""
    record = json.loads((path / ENSEMBLE_FILE).read_text())
    members = []
    for m in record["members"]:
        run = Path(m["path"])
        if not (run / "best.pt").is_file():
            raise NotFound(f"ensemble {path}: member {run} is missing; make the ensemble again (msf ensemble)")
        if run_fingerprint(run) != m["fingerprint"]:
            raise UsageError(f"ensemble {path}: member {run} changed since the ensemble was made (its settings, "
                             "features or weights); make the ensemble again (msf ensemble)")
        members.append(run)
    weights = {} if record["weights"] == "equal" else {t: list(map(float, w)) for t, w in record["weights"].items()}
    return Ensemble(members, weights, record.get("fitted_on", "equal"))


def as_ensemble(runs: list[Path]) -> Ensemble:
    """`--run` given once or more: one ensemble folder as it is; runs (and the members of ensemble
    folders among them) with equal weights."""
    if len(runs) == 1 and is_ensemble(runs[0]):
        return load_ensemble(runs[0])
    members: list[Path] = []
    for r in runs:
        members += load_ensemble(r).members if is_ensemble(r) else [r]
    return Ensemble(members)


def fold_members(runs: list[Path]) -> dict[int, list[Path]]:
    """Fold -> each run's fold-K run, for runs trained with --folds (RUN/fold-K); {} when they are not."""
    folds = [{int(p.name.split("-")[1]): p for p in r.glob("fold-*") if (p / "best.pt").is_file()} for r in runs]
    if not all(folds):
        return {}
    common = sorted(set.intersection(*(set(f) for f in folds)))
    return {k: [f[k] for f in folds] for k in common}


# -- predictions of the members on a cache ----------------------------------------------------
def member_predictions(ensemble: Ensemble, features: Path, splits: list[str] | None, device: str,
                       name: str | None = None, labels: str | None = None, required: bool = False
                       ) -> dict[str, "SplitPredictions"]:
    """Per split: the utterances every member scored, each member's predictions of them and the gold
    labels (NaN where unlabelled), and those of the split a member could not use (`dropped`, with the
    reason). Each member reads its own sources, layers and fold from the cache. `required`: a split
    of `splits` that a member has no usable utterance of is an error naming the splits it has."""
    from msf.pipeline.speaker_baseline import RunBaseline
    from msf.trainer.data import scored_splits
    from msf.trainer.train import load_run, predict_split, run_features

    per: list[dict[str, dict[str, tuple[np.ndarray, np.ndarray, str]]]] = []
    dropped: dict[str, dict[str, str]] = {}
    for run in ensemble.members:
        model, cfg = load_run(run, device)
        data = run_features(cfg, features, name, labels, RunBaseline.load(run))
        wanted = [s for s in (splits or scored_splits(data.splits)) if s in data.splits and data.splits[s].ids]
        if required and (absent := [s for s in splits or [] if s not in wanted]):
            known = ", ".join(k for k, v in data.splits.items() if v.ids)
            raise UsageError(f"no split {absent[0]!r} with usable utterances in {features}"
                             + (f" for {run}" if len(ensemble.members) > 1 else "") + f"; its splits: {known}")
        for uid, s, why in data.dropped:
            dropped.setdefault(s, {}).setdefault(uid, why)
        rows = {}
        for s in wanted:
            pred, gold, _ = predict_split(model, data, s, device)
            split = data.splits[s]
            speakers = split.speaker_ids or [""] * len(split.ids)
            rows[s] = {uid: (p, g, spk) for uid, p, g, spk in zip(split.ids, pred, gold, speakers)}
        per.append(rows)
    out = {}
    for s in sorted(set.intersection(*(set(r) for r in per)), key=lambda s: (s != "dev", s != "test", s)):
        ids = sorted(set.intersection(*(set(r[s]) for r in per)))
        lost = max(len(r[s]) for r in per) - len(ids)
        if lost:
            STDERR.print(f"[yellow]warning:[/] {lost} utterance(s) of {s} are scored by some members only; the "
                         "ensemble is scored on the ones every member has")
        out[s] = SplitPredictions(ids, [per[0][s][u][2] for u in ids], [np.array([r[s][u][0] for u in ids]) for r in per],
                                  np.array([per[0][s][u][1] for u in ids]), dropped.get(s, {}))
    return out


@dataclass
class SplitPredictions:
    ids: list[str]
    speakers: list[str]
    preds: list[np.ndarray]  # per member, N x targets
    gold: np.ndarray  # N x targets, NaN where unlabelled
    dropped: dict[str, str] = field(default_factory=dict)  # utterance -> why a member could not use it


def score_folds(folds: dict[int, Ensemble], features: Path, device: str, name: str | None = None,
                labels: str | None = None) -> dict[str, Any]:
    """An ensemble per fold, each scored on its own fold, and the test CCC pooled over folds (each
    utterance once), as `msf train --folds` reports runs."""
    import tempfile

    from msf.trainer.folds import pooled

    per = {}
    with tempfile.TemporaryDirectory(prefix="msf-ensemble-") as tmp:
        for k, e in folds.items():
            (Path(tmp) / f"fold-{k}").mkdir()
            per[k] = score(e, features, device, name, labels, Path(tmp) / f"fold-{k}")
        return {"folds": per, "pooled": pooled([Path(tmp) / f"fold-{k}" / "predictions.csv" for k in folds])}


def fit_weights(preds: list[np.ndarray], gold: np.ndarray) -> dict[str, list[float]]:
    """Per target, non-negative weights summing to one that maximise the CCC of the weighted average on
    these (dev) predictions: SLSQP over the simplex from equal weights (deterministic)."""
    from scipy.optimize import minimize

    from msf.trainer.model import ccc

    import torch

    m = len(preds)
    out: dict[str, list[float]] = {}
    for t, target in enumerate(TARGETS):
        x = np.stack([p[:, t] for p in preds], 1).astype(np.float64)  # N x members
        g = gold[:, t].astype(np.float64)

        def loss(w: np.ndarray) -> float:
            return 1.0 - float(ccc(torch.from_numpy((x @ w)[:, None]), torch.from_numpy(g[:, None]))[0])

        res = minimize(loss, np.full(m, 1.0 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
        w = np.clip(res.x, 0.0, None)
        out[target] = [round(float(v), 4) for v in w / w.sum()]
    return out


def make_ensemble(runs: list[Path], out: Path, weights: str = "equal", features: Path | None = None,
                  device: str = "cpu", name: str | None = None, labels: str | None = None) -> dict[str, Any]:
    """`msf ensemble`: OUT/ensemble.json (and OUT/fold-K/ensemble.json for runs trained with --folds).
    `weights="dev"` fits them on the dev split of `features`, reading no other split's labels. With
    `features`, the ensemble is also scored: OUT/metrics.json and OUT/predictions.csv (and per fold,
    with OUT/folds.json's pooled CCC)."""
    if weights not in ("equal", "dev"):
        raise UsageError(f"--weights is equal or dev, not {weights!r}")
    if weights == "dev" and features is None:
        raise UsageError("--weights dev fits the weights on the dev split of a cache: give --features DIR")
    if len(runs) < 1:
        raise UsageError("give the member runs with --run (once per run)")
    by_fold = fold_members(runs)
    if by_fold:
        summary = {k: _make_one(members, out / f"fold-{k}", weights, features, device, name, labels)
                   for k, members in by_fold.items()}
        if features is None:
            return {"folds": {k: v for k, v in summary.items()}}
        from msf.trainer.folds import pooled

        result = {"folds": summary, "pooled": pooled([out / f"fold-{k}" / "predictions.csv" for k in by_fold])}
        (out / "folds.json").write_text(json.dumps(result, indent=2))
        return result
    return _make_one(runs, out, weights, features, device, name, labels)


def _make_one(runs: list[Path], out: Path, weights: str, features: Path | None, device: str,
              name: str | None, labels: str | None) -> dict[str, Any]:
    ensemble = as_ensemble(runs)
    if weights == "dev":
        assert features is not None
        dev = member_predictions(ensemble, features, ["dev"], device, name, labels)
        if "dev" not in dev:
            raise UsageError(f"no dev split with usable utterances in {features}: the weights are fitted on dev")
        d = dev["dev"]  # the dev split alone: no test label is read to choose the weights
        ensemble = Ensemble(ensemble.members, fit_weights(d.preds, d.gold), "dev")
    ensemble.save(out)
    if features is None:
        return {"members": [str(m) for m in ensemble.members], "weights": ensemble.weights or "equal"}
    return score(ensemble, features, device, name, labels, out)


def score(ensemble: Ensemble, features: Path, device: str, name: str | None = None, labels: str | None = None,
          out: Path | None = None) -> dict[str, Any]:
    """CCC of the ensemble per scored split (with n); with `out`, its metrics.json and predictions.csv
    (the one prediction schema) are written there."""
    from msf.trainer.train import write_predictions

    rows = member_predictions(ensemble, features, None, device, name, labels)
    metrics: dict[str, Any] = {}
    table = []
    for s, r in rows.items():
        pred = ensemble.combine(r.preds)
        labelled = ~np.isnan(r.gold).any(1)
        metrics[s] = {**ccc_scores(pred[labelled], r.gold[labelled]), "n": int(labelled.sum())}
        table += list(zip(r.ids, r.speakers, [s] * len(r.ids), pred, r.gold))
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_predictions(out / "predictions.csv", table)
    return metrics


def fold_ensembles(runs: list[Path]) -> dict[int, Ensemble]:
    """Fold -> its ensemble, for an ensemble folder made of runs trained with --folds (OUT/fold-K), or for
    such runs given directly; {} otherwise."""
    if len(runs) == 1 and not is_ensemble(runs[0]):
        made = sorted(runs[0].glob(f"fold-*/{ENSEMBLE_FILE}"))
        if made:
            return {int(p.parent.name.split("-")[1]): load_ensemble(p.parent) for p in made}
    return {k: Ensemble(members) for k, members in fold_members(runs).items()}
