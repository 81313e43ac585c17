"""msf's own cost at MSP-Podcast scale: a synthetic corpus of 100,000 short wavs through `audio` and
four cheap stages (bench/scale_stages.py), so what is measured is the pipeline, not a model. Then an
MSP-Podcast-shaped corpus (`Audios/`, `Transcripts/`, `Labels/labels_consensus.csv`, one transcript
file per utterance, a third of the speakers `Unknown`) of 300,000 utterances through `audio` and seven
cheap stages, read by the `msp-podcast:` reader.

Figures (each command a fresh process, wall time from process start to exit):
  first run      `msf extract` computing all 500,000 entries; its overhead per entry
  no-op rerun    the same command again: nothing to compute       (target < 3 s)
  status         `msf status --json` on the cache alone            (target < 2 s)
  peak RSS       the largest of the three processes                (target < 1 GB)

    python bench/scale.py [--n 100000] [--msp-n 300000] [--only msp] [--workers 2] [--out DIR]
    python bench/scale.py --only msp --msp-n 300000 1000000   # does the driver's peak grow with the corpus?
    python bench/scale.py --breakdown [--msp-n 100000]   # the driver's memory per step before any task

Last stdout line: one JSON object (n, first_run_s, overhead_ms_per_entry, noop_rerun_s, status_s, peak_rss_mb,
and per MSP-shaped row msp300k_first_run_s, msp300k_noop_rerun_s, msp300k_status_s, msp300k_peak_rss_mb, ...;
with two rows, msp1m_vs_msp300k_peak_rss: the last row's peak over the first's).
"""

from __future__ import annotations

import argparse
import csv
import io
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
MSP_STAGES = [*STAGES, "scale_e", "scale_f", "scale_g"]


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


def build_msp(root: Path, n: int) -> Path:
    """An MSP-Podcast layout of n distinct 0.12 s wavs: flat `Audios/` and `Transcripts/` (one file per
    utterance, as MSP-Podcast ships them) and `Labels/labels_consensus.csv` over the five split sets,
    a third of the rows with speaker `Unknown`. The wavs are one PCM body with each file's number in
    its first samples, written as bytes (sf.write per file would take most of the build)."""
    labels = root / "Labels" / "labels_consensus.csv"
    if labels.exists():
        return root
    for d in ("Audios", "Transcripts", "Labels"):
        (root / d).mkdir(parents=True, exist_ok=True)
    t = np.arange(1920) / 16000
    burst = 0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(len(t)) + np.random.default_rng(0).normal(0, 1e-3, len(t))
    buf = io.BytesIO()
    sf.write(buf, burst.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    template = bytearray(buf.getvalue())
    body = len(template) - 1920 * 2  # the PCM data starts here
    splits = ("Train", "Train", "Train", "Development", "Test1", "Test2", "Test3")
    partial = labels.with_suffix(".partial")  # renamed when whole: an interrupted build is not reused
    with open(partial, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for i in range(n):
            name = f"MSP-PODCAST_{i // 100:04d}_{i % 100:04d}"
            template[body : body + 4] = i.to_bytes(4, "little")  # distinct content, inaudible
            (root / "Audios" / f"{name}.wav").write_bytes(template)
            (root / "Transcripts" / f"{name}.txt").write_text(f"utterance number {i} of the podcast\n")
            split = splits[i % len(splits)]
            w.writerow([f"{name}.wav", "N", "", "", "", "Unknown", "Unknown", split] if split == "Test3" else
                       [f"{name}.wav", "N", 4.0, 4.0, 4.0, "Unknown" if i % 3 == 0 else str(i % 1000),
                        ("Female", "Male")[i % 2], split])
    partial.rename(labels)
    return root


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


def measure(spec: str, cache: Path, last_stage: str, workers: int) -> dict[str, float]:
    """First run, no-op rerun and status of `msf extract --stage last_stage` over `spec`."""
    shutil.rmtree(cache, ignore_errors=True)
    extract = ["extract", "--corpus", spec, "--cache", str(cache), "--set", 'plugins=["scale_stages"]',
               "--stage", last_stage, "--workers", str(workers), "--json"]
    first_s, first_rss, out = timed(extract)
    entries = sum(s["computed"] for s in json.loads(out.strip().splitlines()[-1])["stages"].values())
    noop_s, noop_rss, out = timed(extract)
    recomputed = sum(s["computed"] for s in json.loads(out.strip().splitlines()[-1])["stages"].values())
    status_s, status_rss, _ = timed(["status", "--cache", str(cache), "--json"])
    return {"entries": entries, "first_s": first_s, "first_rss": first_rss, "noop_s": noop_s, "noop_rss": noop_rss,
            "recomputed": recomputed, "status_s": status_s, "status_rss": status_rss,
            "peak": max(first_rss, noop_rss, status_rss)}


def driver_breakdown(msp: Path) -> dict[str, float]:
    """Where the driver's memory goes before any task runs (a fresh process: `--breakdown`): MB of RSS
    after imports, then added by the first pass over the corpus (read, hashed and recorded a chunk at
    a time) and by planning every chunk for eight stages (each plan dropped after its chunk)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
from pathlib import Path
import tempfile
from rich.progress import Progress
from msf.pipeline.config import MsfConfig
from msf.pipeline.run.executors import InProcessExecutor
from msf.pipeline.run.extraction import Extraction
out = {{"imports": rss()}}
ex = Extraction(MsfConfig(corpus="msp-podcast:{msp}", cache=Path(tempfile.mkdtemp()), plugins=["scale_stages"]),
                executor=InProcessExecutor())
def plans():
    for plan in ex._chunk_plans(["scale_g"]):
        pass
with Progress(disable=True) as bar:
    steps = [("first pass", lambda: ex._take_in(bar)), ("chunk plans", plans)]
    for name, step in steps:
        before = rss()
        step()
        out[name] = rss() - before
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) for k, v in out.items()}


def table(title: str, m: dict[str, float]) -> None:
    print(title)
    print(f"{'':<16}{'seconds':>10}{'peak RSS MB':>13}{'target':>12}")
    print(f"{'first run':<16}{m['first_s']:>10.1f}{m['first_rss']:>13.0f}{'':>12}   "
          f"{1000 * m['first_s'] / m['entries']:.3f} ms per entry")
    print(f"{'no-op rerun':<16}{m['noop_s']:>10.2f}{m['noop_rss']:>13.0f}{'< 3 s':>12}   "
          f"{m['recomputed']:.0f} entries recomputed")
    print(f"{'status':<16}{m['status_s']:>10.2f}{m['status_rss']:>13.0f}{'< 2 s':>12}")
    print(f"peak RSS {m['peak']:.0f} MB (target < 1024)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--msp-n", type=int, nargs="+", default=[300_000],
                    help="sizes of the MSP-Podcast-shaped rows; with two or more, the last's peak RSS over the first's")
    ap.add_argument("--only", choices=["msp"], help="run only the MSP-Podcast-shaped row")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="keep the corpora (and reuse them) here")
    ap.add_argument("--breakdown", action="store_true", help="only: the driver's memory per step before any "
                    "task, on the MSP-Podcast-shaped corpus of --msp-n")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-scale-"))
    res: dict = {"workers": args.workers}
    if args.breakdown:
        n = args.msp_n[-1]
        per = driver_breakdown(build_msp(root / f"msp{n}", n))
        print(f"driver RSS before any task, MB added at {n:,} utterances: "
              + ", ".join(f"{k} {v:g}" for k, v in per.items() if k != "imports") + f"; imports {per['imports']:g} MB")
        print(json.dumps({f"breakdown_{k.replace(' ', '_')}_mb": v for k, v in per.items()}))
        return
    if not args.only:
        t0 = time.perf_counter()
        manifest = build(root / "corpus", args.n)
        print(f"corpus: {args.n} wavs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        m = measure(str(manifest), root / "cache", "scale_d", args.workers)
        table(f"{args.n:,} utterances (manifest) x {len(STAGES)} stages = {m['entries']:,} entries; "
              f"{args.workers} workers; {os.cpu_count()} CPUs", m)
        res |= {"n": args.n, "entries": m["entries"], "first_run_s": round(m["first_s"], 2),
                "overhead_ms_per_entry": round(1000 * m["first_s"] / m["entries"], 4),
                "noop_rerun_s": round(m["noop_s"], 3), "noop_recomputed": m["recomputed"],
                "status_s": round(m["status_s"], 3), "peak_rss_mb": round(m["peak"])}
    peaks = []
    for n in args.msp_n:
        t0 = time.perf_counter()
        msp = build_msp(root / f"msp{n}", n)
        print(f"MSP-Podcast-shaped corpus: {n} utterances in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        m = measure(f"msp-podcast:{msp}", root / f"cache-msp{n}", "scale_g", args.workers)
        shutil.rmtree(root / f"cache-msp{n}", ignore_errors=True)
        key = f"msp{n // 1_000_000}m" if n % 1_000_000 == 0 else f"msp{n // 1000}k"
        table(f"{n:,} utterances (MSP-Podcast layout, msp-podcast: reader) x {len(MSP_STAGES)} stages = "
              f"{m['entries']:,} entries", m)
        res |= {f"{key}_entries": m["entries"], f"{key}_first_run_s": round(m["first_s"], 2),
                f"{key}_noop_rerun_s": round(m["noop_s"], 3), f"{key}_noop_recomputed": m["recomputed"],
                f"{key}_status_s": round(m["status_s"], 3), f"{key}_peak_rss_mb": round(m["peak"])}
        peaks.append((key, n, m["peak"]))
    if len(peaks) > 1:  # the driver streams: its peak should not grow with the corpus
        (k0, n0, p0), (k1, n1, p1) = peaks[0], peaks[-1]
        print(f"peak RSS at {n1:,} utterances / at {n0:,}: {p1 / p0:.2f}x for {n1 / n0:.2f}x the utterances")
        res[f"{k1}_vs_{k0}_peak_rss"] = round(p1 / p0, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
