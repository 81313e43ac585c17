"""`msf ablate`: the five variants of the contract on one cache, one seed, a table and `ablation.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from msf.trainer.data import FeatureSet, parse_sources
from msf.trainer.train import TrainConfig, train

VARIANTS: dict[str, tuple[str, str]] = {
    "audio": ("audio", "fm-moe"),
    "audio+gs": ("audio,gs", "fm-moe"),
    "audio+gs+les": ("audio,gs,les", "fm-moe"),
    "full": ("audio,gs,les,es", "fm-moe"),
    "concat": ("audio,gs,les,es", "concat"),
}
COLUMNS = ("ccc_valence", "ccc_arousal", "ccc_dominance", "ccc_mean")


def ablate(features: Path, out: Path, progress: bool = True, **train_options: Any) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    # One read of the cache for every variant: the full source set covers them all.
    data = FeatureSet(features, parse_sources("audio,gs,les,es"), train_options.get("fold"),
                      train_options.get("in_memory"))
    results: dict[str, dict[str, float]] = {}
    for name, (sources, fusion) in VARIANTS.items():
        cfg = TrainConfig(features=features, sources=sources, fusion=fusion, **train_options)
        metrics = train(cfg, out / name, progress=progress, data=data)
        split = "test" if "test" in metrics else "dev"
        results[name] = {k: metrics[split][k] for k in COLUMNS}
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    (out / "ablation.md").write_text(table(results))
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| variant | CCC valence | CCC arousal | CCC dominance | CCC mean |", "|---|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f"{v[c]:.3f}" for c in COLUMNS) + " |" for k, v in results.items()]
    return "\n".join(lines) + "\n"
