"""`msf predict` in bulk: 1,000 demo files through the demo's `full` model (audio, GS, LES, ES, prosody).

Figures, in one run:
  files_per_s          1,000 files (a manifest with their transcripts, so no ASR) through `msf predict
                       --cache C --out preds.csv`, one process, from its start to its exit
  peak_rss_mb          that process's peak resident memory (the bound: the model, one stage's models and
                       READ_AHEAD files' features, not the number of files)
  max_abs_diff_alone_vs_batch
                       8 of the files predicted one per call (each with a fresh cache) against their rows
                       in the 1,000-file call
  resume               a second cache: `msf predict` on 200 files killed (SIGKILL) once half of their
                       acoustic entries are committed, then the same command again; the entries the rerun
                       computed against those the killed run had left missing (equal: nothing twice)

The model: `runs/demo/runs/full/seed-0` when `make demo` made it with this msf (it has baseline.npz);
otherwise a `full` run trained here on 120 demo files (offline profile, 15 epochs).

    python bench/predict.py [--files 1000] [--out DIR]

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
MSF = [sys.executable, "-m", "msf.cli"]
# msf run so that it writes its own peak resident memory (VmHWM, its address space alone: getrusage's
# ru_maxrss would also carry the high-water mark of the process it was forked from) to PEAK_FILE.
PEAKED = [sys.executable, "-c", "import atexit, os, runpy, sys; atexit.register(lambda: open(os.environ['PEAK_FILE'], 'w')"
          ".write(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))); "
          "sys.argv = ['msf', *sys.argv[1:]]; runpy.run_module('msf.cli', run_name='__main__')"]
TARGETS = ("valence", "arousal", "dominance")


def model(out: Path) -> Path:
    demo = ROOT / "runs" / "demo" / "runs" / "full" / "seed-0"
    if (demo / "baseline.npz").is_file():
        return demo
    run = out / "model"
    if (run / "best.pt").is_file():
        return run
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.corpora.demo import build_demo_corpus
    from msf.pipeline.run.extraction import Extraction
    from msf.trainer.train import TrainConfig, train

    corpus = build_demo_corpus(out / "train-corpus", n=120, seed=1, workers=2, progress=False)
    ex = Extraction(MsfConfig(corpus=f"demo:{corpus}", cache=out / "train-cache", profile="offline", workers=2,
                              stages={"align": {"backend": "provided"}}))
    ex.run(["acoustic", "global", "local", "extended", "emphasis"], progress=False)
    ex.close()
    train(TrainConfig(features=out / "train-cache", sources="audio,gs,les,es,prosody", epochs=15, patience=100),
          run, progress=False)
    return run


def manifest(out: Path, corpus: Path, rows: list[dict], name: str) -> Path:
    path = out / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "audio", "transcript", "speaker"])
        w.writeheader()
        for r in rows:
            w.writerow({"id": r["id"], "audio": str(corpus / r["audio"]), "transcript": r["transcript"],
                        "speaker": r["speaker"]})
    return path


def run_predict(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and return code of one `msf predict` process."""
    peak_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"msf-bench-peak-{os.getpid()}"
    t0 = time.perf_counter()
    p = subprocess.run([*PEAKED, "predict", *args], capture_output=True, text=True,
                       env={**os.environ, "PEAK_FILE": str(peak_file)})
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-3000:], file=sys.stderr)
    peak = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    return time.perf_counter() - t0, peak, p.returncode


def entries(cache: Path, stage: str) -> int:
    db = cache / "index.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT count(*) FROM entries WHERE stage = ?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:  # created, not yet with its tables
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/msf-bench-predict"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    from msf.pipeline.corpora.demo import build_demo_corpus

    run = model(a.out)
    corpus = build_demo_corpus(a.out / "corpus", n=a.files, seed=7, workers=2, progress=False)
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))[: a.files]
    for k, r in enumerate(rows):  # a third without a speaker, as much of MSP-Podcast is
        r["speaker"] = "" if k % 3 == 0 else r["speaker"]
    bulk = manifest(a.out, corpus, rows, "bulk")
    cache = a.out / "cache-bulk"
    wall, rss, rc = run_predict([str(bulk), "--run", str(run), "--cache", str(cache), "--out",
                                 str(a.out / "preds.csv")])
    preds = {r["id"]: r for r in csv.DictReader(open(a.out / "preds.csv"))}
    ok = [r for r in preds.values() if not r["error"]]
    masked = sum(bool(r["masked"]) for r in ok)
    print(f"bulk: {len(rows)} files in {wall:.1f} s ({len(rows) / wall:.2f} files/s), peak RSS {rss:.0f} MB, "
          f"rc {rc}, {len(ok)} predicted ({masked} with a text source masked), {len(preds) - len(ok)} with an error")
    # one file per call, each in a fresh cache, against its row in the bulk call: files without a speaker
    # (a file given with a speaker is, by the rule, relative to that speaker's files in the call)
    diffs = []
    alone = [r for r in rows if not r["speaker"] and not preds[r["id"]]["error"]]
    for r in alone[:: max(1, len(alone) // 8)][:8]:
        single = manifest(a.out, corpus, [r], "single")
        out = a.out / "single.jsonl"
        cache1 = a.out / f"cache-single-{r['id']}"
        run_predict([str(single), "--run", str(run), "--cache", str(cache1), "--out", str(out)])
        got = json.loads(out.read_text().splitlines()[0])
        diffs.append(max(abs(float(got[t]) - float(preds[r["id"]][t])) for t in TARGETS))
    print(f"alone vs among {len(rows)}: max |difference| {max(diffs):.2e} over {len(diffs)} files")
    # kill -9 half-way, then the same command again
    part = manifest(a.out, corpus, rows[:200], "part")
    cache2 = a.out / "cache-resume"
    args = [*MSF, "predict", str(part), "--run", str(run), "--cache", str(cache2), "--out",
            str(a.out / "part-preds.csv")]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed once the first stage's shard is committed (200 files: one shard per stage), inside the next
    while p.poll() is None and entries(cache2, "acoustic") < 200:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    kept = {s: entries(cache2, s) for s in ("acoustic", "align", "emphasis", "describe")}
    rerun = subprocess.run(args, capture_output=True, text=True)
    if rerun.returncode != 0:
        print(rerun.stderr[-3000:], file=sys.stderr)
    after = {s: entries(cache2, s) for s in kept}
    computed = {s: after[s] - kept[s] for s in kept}
    missing = {s: 200 - kept[s] for s in kept}
    print(f"kill -9 at {kept['acoustic']}/200 acoustic entries; the rerun (rc {rerun.returncode}) computed "
          f"{computed} (missing before it: {missing})")
    result = {"files": len(rows), "seconds": round(wall, 1), "files_per_s": round(len(rows) / wall, 2),
              "peak_rss_mb": round(rss), "errors": len(preds) - len(ok), "masked": masked,
              "max_abs_diff_alone_vs_batch": float(f"{max(diffs):.3g}"),
              "resume_kept": kept, "resume_computed": computed, "resume_missing_before": missing,
              "resume_nothing_twice": computed == missing, "model": str(run)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
