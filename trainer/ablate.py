"""`msf ablate`: the five variants of the contract on one cache, a table and `ablation.json`.

Each variant is trained with `seeds` seeds and reported as the mean test CCC: on a few hundred
utterances a single run's CCC moves by several hundredths with the seed alone."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from msf.pipeline.errors import UsageError
from msf.trainer.data import FeatureSet, parse_sources, scored_splits
from msf.trainer.model import CCC_COLUMNS
from msf.trainer.train import TrainConfig, train

VARIANTS: dict[str, tuple[str, str]] = {
    "audio": ("audio", "fm-moe"),
    "audio+gs": ("audio,gs", "fm-moe"),
    "audio+gs+les": ("audio,gs,les", "fm-moe"),
    "full": ("audio,gs,les,es", "fm-moe"),
    "concat": ("audio,gs,les,es", "concat"),
}


def ablate(features: Path, out: Path, seeds: int = 3, seed: int = 0, progress: bool = True,
           prosody: bool | None = None, variants: list[str] | None = None,
           **train_options: Any) -> dict[str, dict[str, Any]]:
    """Every variant (or those named in `variants`) with `seeds` training seeds, each with the training
    settings `train_options` (msf's defaults, `train` and `ablate` alike, unless given: a preset's,
    `--set`'s). `prosody` adds the speaker-relative prosody vector to every variant (audio included); by
    default when the settings' sources include it (msf's do; the paper preset's do not)."""
    chosen = chosen_variants(variants)
    if seeds < 1:
        raise UsageError(f"--seeds is the number of training seeds per variant: at least 1, not {seeds}")
    fixed = sorted({"fusion", "seed"} & set(train_options))
    if fixed:
        raise UsageError(f"ablate sets {', '.join(fixed)} per variant and seed; leave {', '.join(fixed)} out of "
                         "--set and [train]")
    sources = train_options.pop("sources", TrainConfig.model_fields["sources"].default)
    if prosody is None:
        prosody = "prosody" in sources.split(",")
    out.mkdir(parents=True, exist_ok=True)
    extra = ",prosody" if prosody else ""
    base = TrainConfig(features=features, **train_options)  # the settings every variant shares
    # One read of the cache for every variant: the full source set covers them all.
    data = FeatureSet(features, parse_sources("audio,gs,les,es" + extra), base.fold, base.name, base.labels,
                      base.in_memory, speaker_norm=base.speaker_norm, layers=base.layers, fold_dev=base.fold_dev,
                      max_seconds=base.max_seconds)
    # test (dev when there is none) heads the table; other labelled test sets (MSP-Podcast's test2) get
    # their own under "splits", so a corpus with one test set keeps the table and JSON it always had
    main = "test" if data.splits["test"].ids else "dev"
    others = [x for x in scored_splits(data.splits) if x not in ("dev", "test")]
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        sources, fusion = VARIANTS[name]
        runs = []
        for k in range(seed, seed + seeds):
            cfg = TrainConfig(features=features, sources=sources + extra, fusion=fusion, seed=k, **train_options)
            runs.append(train(cfg, out / name / f"seed-{k}", progress=progress, data=data))
        results[name] = summary([r[main] for r in runs])
        if others:
            results[name]["splits"] = {x: summary([r[x] for r in runs]) for x in others}
    add_uncertainty(results, out, main, range(seed, seed + seeds))
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    (out / "ablation.md").write_text(tables(results))
    return results


def chosen_variants(names: list[str] | None) -> list[str]:
    """The variants to run, in the table's order; an unknown name is refused naming the ones there are."""
    if names is None:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise UsageError(f"no variant {', '.join(map(repr, unknown)) or '(none given)'}; variants: {', '.join(VARIANTS)}")
    return [n for n in VARIANTS if n in names]



def add_uncertainty(results: dict[str, dict[str, Any]], out: Path, split: str, seeds: range) -> None:
    """Each variant's bootstrap 95 % interval of its `split` CCC (`ci95`), its paired bootstrap test
    against audio (`vs_audio`), full's against concat (`vs_concat`), and with several seeds the CCC of
    the seeds' averaged predictions (`seed_ensemble`, with its own `ci95`): trainer/bootstrap.py."""
    from msf.trainer.bootstrap import interval, paired, stacked_predictions, resample_index, resampled, seed_ensemble

    stats = {}
    index = None
    for name in results:
        preds, gold = stacked_predictions([out / name / f"seed-{k}" for k in seeds], split)
        index = resample_index(len(gold)) if index is None else index
        stats[name] = resampled(preds, gold, index)
        results[name]["ci95"] = interval(stats[name])
        if len(preds) > 1:  # a new key: the figures of before keep their values
            results[name]["seed_ensemble"] = seed_ensemble(preds, gold, index)
    # the paired tests whose two sides were run (`--variants` may leave audio or concat out)
    for name in results:
        if name != "audio" and "audio" in results:
            results[name]["vs_audio"] = paired(stats[name], stats["audio"], results[name], results["audio"])
    if {"full", "concat"} <= set(results):
        results["full"]["vs_concat"] = paired(stats["full"], stats["concat"], results["full"], results["concat"])


def tables(results: dict[str, dict[str, Any]]) -> str:
    """The main table, then one per other test set, each headed by its split's name."""
    others = next(iter(results.values())).get("splits", {})
    return table(results) + "".join(f"\n{x}\n\n" + table({v: r["splits"][x] for v, r in results.items()})
                                    for x in others)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean CCC over training seeds per column, and each seed's."""
    out: dict[str, Any] = {c: None if any(r[c] is None for r in runs)  # too few utterances: not defined
                           else round(float(sum(r[c] for r in runs) / len(runs)), 4) for c in CCC_COLUMNS}
    out["runs"] = [{c: r[c] for c in CCC_COLUMNS} for r in runs]
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """Mean CCC per variant (the mean of its training seeds' CCCs); with several training seeds, the
    seeds' sd of the mean CCC; with the bootstrap (the main test set), the 95 % interval of the mean CCC
    and the paired p-value against audio (full: and against concat), and the seed ensemble's mean CCC
    (the seeds' predictions averaged) with its interval."""
    spread = all(len(v.get("runs", [])) > 1 for v in results.values())
    boot = all("ci95" in v for v in results.values())
    ensemble = all("seed_ensemble" in v for v in results.values())
    # short headers (the figures are all CCC): the table fits a terminal, and the table a report
    head, rule = "| variant | valence | arousal | dominance | CCC mean |", "|---|---|---|---|---|"
    head += " sd over seeds |" if spread else ""
    head += " 95% CI | p vs audio |" if boot else ""
    head += " seed ensemble, 95% CI |" if ensemble else ""
    lines = [head, rule + "---|" * (spread + 2 * boot + ensemble)]
    for k, v in results.items():
        row = f"| {k} | " + " | ".join("n/a" if v[c] is None else f"{v[c]:.3f}" for c in CCC_COLUMNS) + " |"
        if spread and v["ccc_mean"] is None:
            row += " n/a |"
        elif spread:
            row += f" {statistics.stdev(r['ccc_mean'] for r in v['runs']):.3f} |"
        if boot:
            lo, hi = v["ci95"]["ccc_mean"]
            vs = v.get("vs_audio", {}).get("ccc_mean")
            p = "" if vs is None else f"{vs['p']:.3f}"
            if "vs_concat" in v:
                p += f" (vs concat {v['vs_concat']['ccc_mean']['p']:.3f})"
            row += f" [{lo:.3f}, {hi:.3f}] | {p} |"
        if ensemble:
            e = v["seed_ensemble"]
            row += f" {e['ccc_mean']:.3f} [{e['ci95']['ccc_mean'][0]:.3f}, {e['ci95']['ccc_mean'][1]:.3f}] |"
        lines.append(row)
    return "\n".join(lines) + "\n"
