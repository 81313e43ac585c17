"""msf's own cost at MSP-Podcast scale: a synthetic corpus of 100,000 short wavs through `audio` and
four cheap stages (bench/scale_stages.py), so what is measured is the pipeline, not a model.

Figures (each command a fresh process, wall time from process start to exit):
  first run      `msf extract` computing all 500,000 entries; its overhead per entry
  no-op rerun    the same command again: nothing to compute       (target < 3 s)
  status         `msf status --json` on the cache alone            (target < 2 s)
  peak RSS       the largest of the three processes                (target < 1 GB)

    python bench/scale.py [--n 100000] [--workers 2] [--out DIR]

Last stdout line: one JSON object (n, first_run_s, overhead_ms_per_entry, noop_rerun_s, status_s, peak_rss_mb).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
STAGES = ["audio", "scale_a", "scale_b", "scale_c", "scale_d"]


def build(root: Path, n: int) -> Path:
    """n distinct 0.12 s wavs (a burst of a tone over faint noise) and their manifest."""
    manifest = root / "manifest.csv"
    if manifest.exists():
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    wavs = root / "wavs"
    rng = np.random.default_rng(0)
    t = np.arange(1920) / 16000
    burst = (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(len(t))).astype(np.float32)
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance"])
        for i in range(n):
            d = wavs / f"{i // 1000:03d}"
            if i % 1000 == 0:
                d.mkdir(parents=True, exist_ok=True)
            x = burst * (0.5 + rng.random()) + rng.normal(0, 1e-3, len(burst)).astype(np.float32)
            sf.write(d / f"u{i:06d}.wav", x, 16000, subtype="PCM_16")
            w.writerow([f"u{i:06d}", f"wavs/{i // 1000:03d}/u{i:06d}.wav", "", f"spk{i % 500}",
                        ("train", "dev", "test")[i % 3], 4.0, 4.0, 4.0])
    return manifest


def timed(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one msf process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "msf.cli", *args], stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the benchmark's
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"msf {' '.join(args)} failed:\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="keep the corpus (and reuse it) here")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-scale-"))
    t0 = time.perf_counter()
    manifest = build(root / "corpus", args.n)
    print(f"corpus: {args.n} wavs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    extract = ["extract", "--corpus", str(manifest), "--cache", str(cache), "--set", 'plugins=["scale_stages"]',
               "--stage", "scale_d", "--workers", str(args.workers), "--json"]
    first_s, first_rss, out = timed(extract)
    entries = sum(s["computed"] for s in json.loads(out.strip().splitlines()[-1])["stages"].values())
    noop_s, noop_rss, out = timed(extract)
    recomputed = sum(s["computed"] for s in json.loads(out.strip().splitlines()[-1])["stages"].values())
    status_s, status_rss, _ = timed(["status", "--cache", str(cache), "--json"])
    peak = max(first_rss, noop_rss, status_rss)
    print(f"{args.n:,} utterances x {len(STAGES)} stages = {entries:,} entries; {args.workers} workers; "
          f"{os.cpu_count()} CPUs")
    print(f"{'':<16}{'seconds':>10}{'peak RSS MB':>13}{'target':>12}")
    print(f"{'first run':<16}{first_s:>10.1f}{first_rss:>13.0f}{'':>12}   {1000 * first_s / entries:.3f} ms per entry")
    print(f"{'no-op rerun':<16}{noop_s:>10.2f}{noop_rss:>13.0f}{'< 3 s':>12}   {recomputed} entries recomputed")
    print(f"{'status':<16}{status_s:>10.2f}{status_rss:>13.0f}{'< 2 s':>12}")
    print(f"peak RSS {peak:.0f} MB (target < 1024)")
    print(json.dumps({"n": args.n, "entries": entries, "first_run_s": round(first_s, 2),
                      "overhead_ms_per_entry": round(1000 * first_s / entries, 4), "noop_rerun_s": round(noop_s, 3),
                      "noop_recomputed": recomputed, "status_s": round(status_s, 3), "peak_rss_mb": round(peak),
                      "workers": args.workers}))


if __name__ == "__main__":
    main()
