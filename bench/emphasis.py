"""Word boundaries and emphasis against the demo corpus's truth.

Per align backend: median and 90th-percentile word-boundary error (ms, starts and ends pooled), the
fraction of utterances the aligner failed, emphasis precision/recall/F1 with each alignment, and
seconds. The headline is the automatic alignment a user without hand alignments gets (`--backend`,
default sphinx, the offline profile's); `provided` (the synthesiser's own word times) is the bound.

    python bench/emphasis.py [--n 120] [--seed 0] [--workers 2] [--backend sphinx]
                             [--ctc-model DIR] [--out DIR]

Last stdout line: one JSON object: emphasis_f1, boundary_median_ms, boundary_p90_ms and
align_failed_fraction of the headline backend, its name, and every backend's row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus, read_truth, score_against_truth
from msf.pipeline.run.extraction import Extraction


def evaluate(ex: Extraction, truth: dict[str, list[dict]]) -> dict[str, float]:
    view = ex.view()
    return score_against_truth(view.records("align"), view.records("emphasis"), set(ex.failures("align")), truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="sphinx", help="the automatic aligner of the headline figures")
    ap.add_argument("--ctc-model", help="a local wav2vec2-CTC model directory (the offline profile has none)")
    ap.add_argument("--out", type=Path, help="keep the corpus and caches here")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-emphasis-"))
    corpus = build_demo_corpus(root / "corpus", n=args.n, seed=args.seed, workers=args.workers, progress=False)
    truth = read_truth(corpus)
    backends = {"provided": {"align": {"backend": "provided"}},
                "sphinx": {"align": {"backend": "sphinx"}},
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
    print(f"{'align backend':<14}{'utts':>6}{'failed':>8}{'median ms':>11}{'p90 ms':>9}{'P':>7}{'R':>7}{'F1':>7}"
          f"{'s':>8}")
    for name, r in rows.items():
        print(f"{name:<14}{r['utterances']:>6}{r['align_failed_fraction']:>8.1%}{r['boundary_median_ms']:>11.0f}"
              f"{r['boundary_p90_ms']:>9.0f}{r['precision']:>7.2f}{r['recall']:>7.2f}{r['f1']:>7.3f}"
              f"{r['seconds']:>8.1f}")
    if not args.ctc_model:
        print("ctc: not run (no wav2vec2-CTC model offline; pass --ctc-model DIR)")
    w = rows[args.backend]
    print(json.dumps({"backend": args.backend, "emphasis_f1": round(w["f1"], 3),
                      "boundary_median_ms": round(w["boundary_median_ms"], 1),
                      "boundary_p90_ms": round(w["boundary_p90_ms"], 1),
                      "align_failed_fraction": round(w["align_failed_fraction"], 4),
                      "emphasis_f1_provided": round(rows["provided"]["f1"], 3),
                      "backends": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
