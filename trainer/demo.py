"""`msf demo`: the whole product on the synthetic corpus, with the offline profile, end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.runner import STDERR, Extraction, StageReport
from msf.pipeline.stage import REGISTRY, stage_class


def run_demo(out: Path, n: int = 300, seed: int = 0, workers: int = 2) -> dict[str, StageReport]:
    out = Path(out)
    corpus_dir = out / "corpus"
    t0 = time.perf_counter()
    if not (corpus_dir / "manifest.csv").is_file():
        build_demo_corpus(corpus_dir, n=n, seed=seed, workers=workers)
    STDERR.print(f"corpus: {corpus_dir} ({time.perf_counter() - t0:.1f} s)")
    stage_class("audio")  # registers the built-in stages
    config = MsfConfig(corpus=f"demo:{corpus_dir}", cache=out / "cache", profile="offline", workers=workers)
    ex = Extraction(config)
    try:
        reports = ex.run(sorted(REGISTRY))
        status = ex.status(sorted(REGISTRY))
    finally:
        ex.close()
    lines = ["# msf demo report", "", f"Corpus: `{corpus_dir}` ({n} utterances, seed {seed}).", "",
             "| stage | computed | reused | failed | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r.computed} | {r.reused} | {r.failed} | {r.seconds:.1f} |" for k, r in reports.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "extract.json").write_text(json.dumps({"status": status}, indent=2), encoding="utf-8")
    STDERR.print(f"report: {out / 'report.md'} (total {time.perf_counter() - t0:.1f} s)")
    print("\n".join(lines))
    return reports
