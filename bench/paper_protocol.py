"""The paper's protocol end to end on corpora laid out as MSP-Podcast and IEMOCAP ship (`msf corpus layout`,
pipeline/corpora/layouts.py), from 61 demo utterances each (plus the layouts' long segment):

  MSP-Podcast  extract (offline profile), `msf train --sources audio,gs,les,es,prosody
               --require-full-coverage`: Test1 and Test2 scored on their own, nothing dropped
  IEMOCAP      extract, count aligned words that are IEMOCAP markers (laughter, breathing, ...), then
               `msf ablate --folds all`: five folds, per variant mean ± sd over folds and pooled CCC

    python bench/paper_protocol.py [--n 61] [--seeds 2] [--out DIR]

Last stdout line: one JSON object with msp_test_n, msp_test2_n, msp_rows_test1, msp_rows_test2,
msp_dropped, iemocap_folds, iemocap_marker_words, iemocap_pooled_n, iemocap_turns, and per variant its
pooled mean CCC and mean ± sd over folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

MSF = [sys.executable, "-m", "msf.cli"]
STAGES = ["acoustic", "global", "local", "extended", "emphasis"]
MARKER_WORDS = {"laughter", "breathing", "garbage", "lipsmack", "[laughter]", "++laughter++"}


def msf(*args: str) -> str:
    p = subprocess.run([*MSF, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"msf {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=61)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/msf-bench-paper"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import msf as msf_api
    from msf.pipeline.corpora.demo import build_demo_corpus
    from msf.pipeline.corpora.layouts import lay_out

    demo = build_demo_corpus(a.out / "demo", n=a.n, seed=5, workers=2, progress=False)
    result: dict[str, object] = {}
    for kind in ("msp-podcast", "iemocap"):
        root, cache = a.out / kind, a.out / f"{kind}-cache"
        if not root.exists():
            lay_out(demo, root, kind)
        msf("extract", "--corpus", f"{kind}:{root}", "--cache", str(cache), "--profile", "offline",
            *[x for s in STAGES for x in ("--stage", s)])
    # MSP-Podcast: Test1 and Test2, nothing dropped
    rows = list(csv.DictReader(open(a.out / "msp-podcast" / "Labels" / "labels_consensus.csv")))
    run = a.out / "msp-run"
    metrics = json.loads(msf("train", "--features", str(a.out / "msp-podcast-cache"), "--out", str(run),
                             "--sources", "audio,gs,les,es,prosody", "--require-full-coverage").splitlines()[-1])
    dropped = list(csv.DictReader(open(run / "dropped.csv")))
    result.update(msp_rows_test1=sum(r["Split_Set"] == "Test1" for r in rows),
                  msp_rows_test2=sum(r["Split_Set"] == "Test2" for r in rows),
                  msp_test_n=metrics["test"]["n"], msp_test2_n=metrics["test2"]["n"], msp_dropped=len(dropped),
                  msp_test_ccc_mean=metrics["test"]["ccc_mean"], msp_test2_ccc_mean=metrics["test2"]["ccc_mean"],
                  msp_masked=metrics.get("masked", {}))
    print(f"MSP-Podcast: Test1 {metrics['test']['n']}/{result['msp_rows_test1']}, Test2 {metrics['test2']['n']}/"
          f"{result['msp_rows_test2']} scored, {len(dropped)} dropped; CCC mean test {metrics['test']['ccc_mean']:.3f}, "
          f"test2 {metrics['test2']['ccc_mean']:.3f}")
    # IEMOCAP: markers, then five folds of the ablation
    with msf_api.open_cache(a.out / "iemocap-cache") as cache:
        words = [str(w).lower() for r in cache.records("align").values() for w in r["words"]]
        turns = len(cache.utterances)
    marker_words = sum(w in MARKER_WORDS for w in words)
    out = a.out / "iemocap-folds"
    print(msf("ablate", "--features", str(a.out / "iemocap-cache"), "--out", str(out), "--folds", "all",
              "--seeds", str(a.seeds)))
    summary = json.loads((out / "folds.json").read_text())
    result.update(iemocap_turns=turns, iemocap_marker_words=marker_words,
                  iemocap_folds=len(next(iter(summary.values()))["folds"]),
                  iemocap_pooled_n=next(iter(summary.values()))["pooled"]["n"],
                  iemocap=({v: {"pooled_ccc_mean": s["pooled"]["ccc_mean"], "mean_ccc_mean": s["mean"]["ccc_mean"],
                                "sd_ccc_mean": s["sd"]["ccc_mean"]} for v, s in summary.items()}),
                  seconds=round(time.perf_counter() - t0))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
