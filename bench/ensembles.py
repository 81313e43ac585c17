"""Ensembles from the cache: single training seeds, the mean of their CCCs, the seed ensemble (their
predictions averaged) and an ensemble of the `audio` and `full` variants' runs, on one test set, each
with its bootstrap 95 % interval, and a paired bootstrap test of each ensemble against its best member.

    python bench/ensembles.py --ablation runs/demo/runs          # what `make demo` trained (corpus seed 0)
    python bench/ensembles.py --ravdess DIR [--out runs/ens-ravdess] [--seeds 3] [--workers 2]

With --ravdess, RAVDESS's speech files (bench/real_speech.py says where to get them; never committed) are
extracted with the offline profile and `msf ablate --variants audio,full` is run with msf's settings
(the default preset) first. Prints a markdown table; last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from msf.trainer.bootstrap import interval, paired, resample_index, resampled, stacked_predictions
from msf.trainer.model import CCC_COLUMNS
from msf.trainer.ensemble import Ensemble, fit_weights
from msf.trainer.model import ccc_scores as observed

HERE = Path(__file__).resolve().parent


def figures(ablation: Path, variants: tuple[str, ...] = ("audio", "full"), split: str = "test") -> dict:
    seeds = {v: sorted(p for p in (ablation / v).glob("seed-*") if (p / "predictions.csv").is_file()) for v in variants}
    preds, gold = stacked_predictions([r for v in variants for r in seeds[v]], split)
    owner = [v for v in variants for _ in seeds[v]]
    index = resample_index(len(gold))
    rows: dict[str, dict] = {}
    stats: dict[str, np.ndarray] = {}
    for k, (run, p) in enumerate(zip([r for v in variants for r in seeds[v]], preds)):
        name = f"{owner[k]} seed {run.name.split('-')[1]}"
        stats[name] = resampled(p[None], gold, index)
        rows[name] = {**observed(p, gold), "ci95": interval(stats[name])}
    for v in variants:
        mine = preds[[k for k, o in enumerate(owner) if o == v]]
        rows[f"{v} mean of seeds"] = {c: round(float(np.mean([rows[f"{v} seed {r.name.split('-')[1]}"][c]
                                                              for r in seeds[v]])), 4) for c in CCC_COLUMNS}
        rows[f"{v} mean of seeds"]["ci95"] = interval(resampled(mine, gold, index))
        members = [f"{v} seed {r.name.split('-')[1]}" for r in seeds[v]]
        _ensemble(rows, stats, f"{v} seed ensemble", mine.mean(0), gold, index, members)
    everyone = [n for n in rows if " seed " in n and "ensemble" not in n and "mean" not in n]
    both = " + ".join(variants)
    _ensemble(rows, stats, f"{both} (all seeds, equal weights)", preds.mean(0), gold, index, everyone)
    # per-target weights fitted on the dev split's predictions alone (msf ensemble --weights dev)
    dev, dev_gold = stacked_predictions([r for v in variants for r in seeds[v]], "dev")
    weights = Ensemble([Path(n) for n in everyone], fit_weights(list(dev), dev_gold), "dev")
    _ensemble(rows, stats, f"{both} (all seeds, dev-fitted weights)", weights.combine(list(preds)), gold, index,
              everyone)
    rows[f"{both} (all seeds, dev-fitted weights)"]["weights"] = weights.weights
    return {"n": int(len(gold)), "rows": rows}


def _ensemble(rows: dict, stats: dict, name: str, pred: np.ndarray, gold: np.ndarray, index: np.ndarray,
              members: list[str]) -> None:
    stats[name] = resampled(pred[None], gold, index)
    best = max(members, key=lambda m: rows[m]["ccc_mean"])
    obs = observed(pred, gold)
    rows[name] = {**obs, "ci95": interval(stats[name]),
                  "vs_best_member": {"member": best, **paired(stats[name], stats[best], obs, rows[best])["ccc_mean"]}}


def table(result: dict) -> str:
    lines = [f"test n = {result['n']}", "",
             "| predictor | valence | arousal | dominance | CCC mean [95% CI] | vs best member (Δ, p) |",
             "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lo, hi = r["ci95"]["ccc_mean"]
        vs = r.get("vs_best_member")
        versus = f"{vs['delta']:+.3f} vs {vs['member']}, p = {vs['p']:.3f}" if vs else ""
        lines.append(f"| {name} | {r['ccc_valence']:.3f} | {r['ccc_arousal']:.3f} | {r['ccc_dominance']:.3f} | "
                     f"{r['ccc_mean']:.3f} [{lo:.3f}, {hi:.3f}] | {versus} |")
    return "\n".join(lines)


def ravdess_ablation(ravdess: Path, out: Path, seeds: int, workers: int) -> Path:
    sys.path.insert(0, str(HERE))
    from real_speech import write_manifest

    manifest = write_manifest(ravdess, out)
    cache = out / "cache"
    msf = [sys.executable, "-m", "msf.cli"]
    subprocess.run([*msf, "extract", "--corpus", str(manifest), "--cache", str(cache), "--profile", "offline",
                    "--workers", str(workers), "--stage", "acoustic", "--stage", "global", "--stage", "local",
                    "--stage", "extended"], check=True)
    subprocess.run([*msf, "ablate", "--features", str(cache), "--out", str(out / "runs"), "--variants", "audio,full",
                    "--seeds", str(seeds)], check=True)
    return out / "runs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ablation", type=Path, help="an `msf ablate --out` folder (runs/demo/runs after make demo)")
    ap.add_argument("--ravdess", type=Path, help="RAVDESS's Actor_NN folders: extract and ablate them first")
    ap.add_argument("--out", type=Path, default=Path("runs/ens-ravdess"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if (args.ablation is None) == (args.ravdess is None):
        raise SystemExit("give --ablation DIR or --ravdess DIR")
    ablation = args.ablation or ravdess_ablation(args.ravdess, args.out, args.seeds, args.workers)
    result = figures(ablation)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
