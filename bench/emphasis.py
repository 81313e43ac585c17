"""Word boundaries and emphasis against the demo corpus's truth.

Per align backend: median and 90th-percentile word-boundary error (ms, starts and ends pooled).
Emphasis precision/recall/F1 with each alignment (the headline uses the whisper alignment).

    python bench/emphasis.py [--n 120] [--seed 0] [--workers 2] [--ctc-model DIR] [--out DIR]

Last stdout line: one JSON object (emphasis_f1 and boundary_median_ms are the whisper figures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.extraction import Extraction


def evaluate(ex: Extraction, truth: dict[str, list[dict]]) -> dict[str, float]:
    errors: list[float] = []
    tp = fp = fn = 0
    compared = 0
    for utt, words in truth.items():
        try:
            a, e = ex.read("align", utt), ex.read("emphasis", utt)
        except KeyError:
            continue
        if a["words"].tolist() != [w["word"] for w in words]:
            continue  # different words (ASR): no word-by-word comparison
        compared += 1
        errors += list(np.abs(a["start"] - [w["start"] for w in words]) * 1000)
        errors += list(np.abs(a["end"] - [w["end"] for w in words]) * 1000)
        t = np.array([w["emphasized"] for w in words])
        f = e["emphasized"]
        tp, fp, fn = tp + int((f & t).sum()), fp + int((f & ~t).sum()), fn + int((~f & t).sum())
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"utterances": compared, "boundary_median_ms": float(np.median(errors)),
            "boundary_p90_ms": float(np.percentile(errors, 90)), "precision": p, "recall": r,
            "f1": 2 * p * r / max(p + r, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ctc-model", help="a local wav2vec2-CTC model directory (the offline profile has none)")
    ap.add_argument("--out", type=Path, help="keep the corpus and caches here")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-emphasis-"))
    corpus = build_demo_corpus(root / "corpus", n=args.n, seed=args.seed, workers=args.workers, progress=False)
    truth = {t["id"]: t["words"] for t in map(json.loads, open(corpus / "truth.jsonl"))}
    backends = {"provided": {"align": {"backend": "provided"}},
                "whisper": {"align": {"backend": "whisper"}}}
    if args.ctc_model:
        backends["ctc"] = {"align": {"backend": "ctc", "ctc_model": args.ctc_model}}
    rows: dict[str, dict[str, float]] = {}
    for name, stages in backends.items():
        cfg = MsfConfig(corpus=f"demo:{corpus}", cache=root / f"cache-{name}", profile="offline",
                        workers=args.workers, stages=stages)
        ex = Extraction(cfg)
        t0 = time.perf_counter()
        ex.run(["emphasis"], progress=False)
        rows[name] = evaluate(ex, truth) | {"seconds": time.perf_counter() - t0}
        ex.close()
    print(f"{args.n} demo utterances (seed {args.seed}); emphasis thresholds at their defaults")
    print(f"{'align backend':<14}{'utts':>6}{'median ms':>11}{'p90 ms':>9}{'P':>7}{'R':>7}{'F1':>7}{'s':>8}")
    for name, r in rows.items():
        print(f"{name:<14}{r['utterances']:>6}{r['boundary_median_ms']:>11.0f}{r['boundary_p90_ms']:>9.0f}"
              f"{r['precision']:>7.2f}{r['recall']:>7.2f}{r['f1']:>7.3f}{r['seconds']:>8.1f}")
    if not args.ctc_model:
        print("ctc: not run (no wav2vec2-CTC model offline; pass --ctc-model DIR)")
    w = rows["whisper"]
    print(json.dumps({"emphasis_f1": round(w["f1"], 3), "boundary_median_ms": round(w["boundary_median_ms"], 1),
                      "boundary_p90_ms": round(w["boundary_p90_ms"], 1),
                      "emphasis_f1_provided": round(rows["provided"]["f1"], 3),
                      "backends": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
