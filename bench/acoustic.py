"""Acoustic extraction throughput and memory, side by side, with the same model for every row.

Rows (audio seconds per wall second, median of --repeats rounds, each round running every row once):
  pipeline    `msf extract --stage acoustic` (Dask runner, length-bucketed batches, HDF5 shards); on CPU
              also with 2 worker processes of 1 torch thread each (the same cores, split by process)
  bare        a bare forward loop over the same audio and the same batches, features discarded (the
              audio decoded and the model loaded before its clock starts; the pipeline's clock
              includes loading the model in its worker, which is printed on its own)
  per-file    the common practice: one utterance at a time, one .npy file per utterance
Peak RSS of `msf extract` at 1x and 10x the corpus (the 10x manifest lists every file ten times).
The same pipeline/bare comparison on a WavLM-large-sized random model over a subset, and on a GPU
when torch sees one. Then a host-free stand-in encoder (it sleeps per utterance, as the host does while
a GPU computes, and returns frames of the small model's shape): the pipeline against the bare loop with
it, also without reading audio ahead and with one task at a time per worker, which is what the pipeline
adds around a forward that leaves the host idle. The FLOP rate the pipeline achieves with each model (torch's FLOP counter over the
same forwards, divided by the pipeline's wall time) against a large float32 matmul measured in the same
run: the share of this machine's practical ceiling the extraction reaches. Truncation: keeping hidden
state 6 of the WavLM-large-sized model, the encoder stopped after layer 6 against the whole 24-layer
forward (what extraction ran before it stopped early), bare loops over the same audio, and the largest
difference between the two's hidden state 6 (it must be 0).

    python bench/acoustic.py [--minutes 10] [--repeats 3] [--large-seconds 30] [--only truncation] [--out DIR]

Random weights (no download needed) have the same cost as trained ones. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stages.acoustic import AcousticParams, TransformersEncoder

T = TypeVar("T")
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
             conv_dim=(512,) * 7)


def on_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a new thread that ends with it. Every torch call of this bench runs this way, so no
    row runs while another thread's OpenMP pool lives on: libgomp counts the idle workers of every
    thread's pool, and once they outnumber the cores it stops spinning at barriers and sleeps instead
    (GOMP's throttled spin). The pipeline's forward runs on a Dask worker thread; had the bare loop run on
    the main thread first, every later pipeline row paid 1.1-1.3x for that (measured: a forward loop on a
    new thread, 15.4 s alone, 17.7 s after one matmul on the main thread, with 19,000 more futex sleeps).
    `msf extract` itself runs no torch on its main thread."""
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out.append((False, e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def save_model(d: Path, size: dict) -> Path:
    import transformers as tf

    if not (d / "config.json").exists():
        torch.manual_seed(0)
        tf.WavLMModel(tf.WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **size)).save_pretrained(d)
        tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(d)
    return d


def manifest_subset(corpus: Path, out: Path, seconds: float, copies: int = 1) -> tuple[Path, float]:
    """The first files of the demo manifest adding up to `seconds` of audio, each listed `copies` times."""
    import soundfile as sf

    rows, total = [], 0.0
    for r in csv.DictReader(open(corpus / "manifest.csv")):
        if total >= seconds:
            break
        r["audio"] = str(corpus / r["audio"])
        total += sf.info(r["audio"]).duration
        rows.append(r)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for c in range(copies):
            for r in rows:
                w.writerow(r | {"id": f"{r['id']}_{c}" if copies > 1 else r["id"]})
    return out, total * copies


def pipeline_run(manifest: Path, cache: Path, model: Path, device: str, batch: int, workers: int = 1,
                 shard_size: int = 256) -> float:
    """Seconds for the acoustic stage alone (audio decoded and validated beforehand)."""
    cfg = MsfConfig(corpus=str(manifest), cache=cache, workers=workers, shard_size=shard_size,
                    stages={"acoustic": {"model": str(model), "device": device, "batch_size": batch}})
    ex = Extraction(cfg)
    ex.run(["audio"], progress=False)
    t0 = time.perf_counter()
    ex.run(["acoustic"], progress=False)
    ex.close()
    return time.perf_counter() - t0


STAND_IN_SHARD = 64  # utterances per task in the stand-in rows: many tasks per worker, as in a real corpus


def stand_in_rows(manifest: Path, root: Path, model: Path, ms: float, repeats: int) -> dict[str, list[float]]:
    """Seconds of the pipeline and of the bare loop over an encoder that sleeps `ms` per utterance and
    returns zero frames of the model's own output shape: a forward that costs the host nothing, as a
    GPU's does, with the real float16 conversion and shard writes around it. The pipeline also runs
    without reading the next batch's audio ahead, and with one task at a time per worker (no shard
    write while the next task computes): what each of those takes away."""
    from msf.pipeline.run import executors, worker

    real_forward, real_read_ahead = TransformersEncoder.forward, worker._read_ahead
    trailing = on_own_thread(lambda: real_forward(TransformersEncoder(AcousticParams(model=str(model))),
                                                  [np.zeros(16000, np.float32)])[0].shape[1:])

    def forward(self: TransformersEncoder, chunks: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(ms / 1000 * len(chunks))
        return [np.zeros((len(c) // 320, *trailing), np.float32) for c in chunks]

    def run(name: str, k: int) -> float:
        return pipeline_run(manifest, root / f"stand-in-{name}-{k}", model, "cpu", 16, shard_size=STAND_IN_SHARD)

    out: dict[str, list[float]] = {}
    TransformersEncoder.forward = forward  # type: ignore[method-assign]
    try:
        for k in range(repeats):
            out.setdefault("pipeline", []).append(run("pipeline", k))
            worker._read_ahead = lambda stage, chunks: iter(chunks)  # type: ignore[assignment]
            try:
                out.setdefault("no_read_ahead", []).append(run("no-read-ahead", k))
            finally:
                worker._read_ahead = real_read_ahead
            tasks_per_worker, executors.TASKS_PER_WORKER = executors.TASKS_PER_WORKER, 1
            try:
                out.setdefault("one_task", []).append(run("one-task", k))
            finally:
                executors.TASKS_PER_WORKER = tasks_per_worker
            out.setdefault("bare", []).append(bare_loop(manifest, model, "cpu", 16))
    finally:
        TransformersEncoder.forward = real_forward  # type: ignore[method-assign]
    return out


def model_setup(model: Path, device: str) -> float:
    """Seconds to load the encoder: what a pipeline run pays once per worker and the bare loop not at all."""
    t0 = time.perf_counter()
    TransformersEncoder(AcousticParams(model=str(model), device=device))
    return time.perf_counter() - t0


def bare_loop(manifest: Path, model: Path, device: str, batch: int, layers: list[int] | None = None) -> float:
    enc = TransformersEncoder(AcousticParams(model=str(model), device=device, layers=layers or [-1]))
    batch = batch or (1 if device == "cpu" else 16)
    waves = sorted((load_waveform(r["audio"]) for r in csv.DictReader(open(manifest))), key=len)
    t0 = time.perf_counter()
    for i in range(0, len(waves), batch):
        for f in enc.forward(waves[i : i + batch]):
            f.astype(np.float16)
    return time.perf_counter() - t0


TRUNCATE_AT = 6


def truncation_rows(manifest: Path, model: Path, device: str, batch: int, repeats: int) -> dict[str, float]:
    """Hidden state 6 with the encoder stopped after layer 6, against the whole forward: seconds of
    each (median of interleaved rounds, and the median of the rounds' ratios), and the largest
    difference between the two's hidden state 6. The whole forward is what the stage ran before it
    stopped early: `layers=[6, -1]` still needs every layer."""
    runs: dict[str, list[float]] = {"full": [], "truncated": []}
    for _ in range(repeats):
        runs["full"].append(on_own_thread(bare_loop, manifest, model, device, batch, [TRUNCATE_AT, -1]))
        runs["truncated"].append(on_own_thread(bare_loop, manifest, model, device, batch, [TRUNCATE_AT]))

    def diff() -> float:
        full = TransformersEncoder(AcousticParams(model=str(model), device=device, layers=[TRUNCATE_AT, -1]))
        cut = TransformersEncoder(AcousticParams(model=str(model), device=device, layers=[TRUNCATE_AT]))
        worst = 0.0
        for r in list(csv.DictReader(open(manifest)))[:3]:
            wave = load_waveform(r["audio"])
            a, b = full.forward([wave])[0][:, 0], cut.forward([wave])[0][:, 0]
            worst = max(worst, float(np.abs(a - b).max()))
        return worst

    return {"full_s": float(np.median(runs["full"])), "truncated_s": float(np.median(runs["truncated"])),
            "speedup": float(np.median(np.array(runs["full"]) / np.array(runs["truncated"]))),
            "max_abs_diff": on_own_thread(diff)}


def forward_flops(manifest: Path, model: Path, batch: int, device: str = "cpu") -> float:
    """Floating-point operations of the bare loop's forwards over the manifest (torch's FLOP counter:
    matrix products and convolutions, which are nearly all of an encoder's work)."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch.nn.utils import parametrize

    enc = TransformersEncoder(AcousticParams(model=str(model), device=device))
    for m in enc.model.modules():  # type: ignore[attr-defined]
        if parametrize.is_parametrized(m, "weight"):  # the counter's mode cannot run weight_norm's getter;
            parametrize.remove_parametrizations(m, "weight")  # the same weights, fixed: the same FLOPs
    batch = batch or (1 if device == "cpu" else 16)
    waves = sorted((load_waveform(r["audio"]) for r in csv.DictReader(open(manifest))), key=len)
    with FlopCounterMode(display=False) as counter:
        for i in range(0, len(waves), batch):
            enc.forward(waves[i : i + batch])
    return float(counter.get_total_flops())


def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matrix product on this machine, torch's threads as extraction uses them:
    the practical ceiling the encoder's forward is measured against."""
    n = n if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))


def per_file(manifest: Path, model: Path, device: str, out: Path) -> float:
    enc = TransformersEncoder(AcousticParams(model=str(model), device=device))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for r in csv.DictReader(open(manifest)):
        f = enc.forward([load_waveform(r["audio"])])[0]
        np.save(out / f"{r['id']}.npy", f.astype(np.float16))
    return time.perf_counter() - t0


def peak_rss_mb(manifest: Path, cache: Path, model: Path) -> float:
    """Peak resident memory of `msf extract --stage acoustic` with one worker (threads in the process, so
    the one process is the whole footprint). VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent that spawned the process, which would report this bench's own peak."""
    code = ("import sys; from msf.pipeline.config import MsfConfig; from msf.pipeline.run.extraction import Extraction;"
            f"ex=Extraction(MsfConfig(corpus={str(manifest)!r}, cache={str(cache)!r}, workers=1,"
            f" stages={{'acoustic': {{'model': {str(model)!r}}}}})); ex.run(['acoustic'], progress=False); ex.close();"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-seconds", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=0, help="0: the stage's automatic size (1 on CPU, 16 on GPU)")
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda rows run only where torch sees a GPU")
    ap.add_argument("--stand-in-ms", type=float, default=2.5,
                    help="the host-free stand-in encoder's milliseconds per utterance (0: skip those rows); 2.5 is "
                         "about what the small model's forward took per demo utterance on an H200")
    ap.add_argument("--only", choices=["truncation"], help="run only these rows")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-acoustic-"))
    n = int(args.minutes * 60 / 4.0) + 20  # demo utterances average about 4.5 s
    if args.only:
        n = int(args.large_seconds / 4.0) + 5
    corpus = build_demo_corpus(root / "corpus", n=n, seed=0, progress=False)
    large = on_own_thread(save_model, root / "wavlm-large-sized", LARGE)
    ml, large_s = manifest_subset(corpus, root / "ml.csv", args.large_seconds)
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d.startswith("cuda") and torch.cuda.is_available())]
    res: dict = {}
    for device in devices:
        t = truncation_rows(ml, large, device, args.batch, args.repeats)
        prefix = "" if device == "cpu" else "gpu_"
        res |= {f"{prefix}truncation_speedup": round(t["speedup"], 2), f"{prefix}truncation_max_abs_diff": t["max_abs_diff"]}
        print(f"{device}: hidden state {TRUNCATE_AT} of the large-sized model (24 layers) over {large_s:.0f} s of audio: "
              f"the whole forward {t['full_s']:.2f} s, stopped after layer {TRUNCATE_AT} {t['truncated_s']:.2f} s "
              f"({t['speedup']:.2f}x); largest difference {t['max_abs_diff']:g}")
    if args.only:
        print(json.dumps(res | {"devices": devices}))
        return
    small = on_own_thread(save_model, root / "wavlm-small", SMALL)
    m1, audio_s = manifest_subset(corpus, root / "m1.csv", args.minutes * 60)
    rows = []
    for device in devices:
        # The repeats are interleaved (each round runs every row once) and each ratio is the median of
        # its rounds' ratios: on a shared machine a slow minute then slows both sides of a ratio, not one.
        two = device == "cpu" and (os.cpu_count() or 1) >= 2  # the same cores as 2 single-thread workers
        runs: dict[str, list[float]] = {}
        for k in range(args.repeats):
            timed = {
                "pipe": lambda: audio_s / pipeline_run(m1, root / f"cache-{device}-{k}", small, device, args.batch),
                "pipe2": (lambda: audio_s / pipeline_run(m1, root / f"cache2-{device}-{k}", small, device, args.batch,
                                                         workers=2)) if two else None,
                "bare": lambda: audio_s / bare_loop(m1, small, device, args.batch),
                "pf": lambda: audio_s / per_file(m1, small, device, root / f"npy-{device}-{k}"),
                "bare8": lambda: audio_s / bare_loop(m1, small, device, 8),
                "lpipe": lambda: large_s / pipeline_run(ml, root / f"cache-large-{device}-{k}", large, device, args.batch),
                "lbare": lambda: large_s / bare_loop(ml, large, device, args.batch),
                "setup": lambda: model_setup(small, device),
                "lsetup": lambda: model_setup(large, device),
            }
            for key, run in timed.items():
                if run is not None:
                    runs.setdefault(key, []).append(on_own_thread(run))
        med = {key: float(np.median(v)) for key, v in runs.items()}
        ratio = lambda a, b: float(np.median(np.array(runs[a]) / np.array(runs[b])))  # noqa: E731
        pipe, bare, pf, bare8, lpipe, lbare = (med[k] for k in ("pipe", "bare", "pf", "bare8", "lpipe", "lbare"))
        rows += [(f"small/{device}", pipe, bare, pf, bare8, ratio("pipe", "bare"), ratio("pipe", "pf")),
                 (f"large-sized/{device}", lpipe, lbare, float("nan"), float("nan"), ratio("lpipe", "lbare"),
                  float("nan"))]
        peak = on_own_thread(matmul_peak, device)
        flops_small = on_own_thread(forward_flops, m1, small, args.batch, device)
        flops_large = on_own_thread(forward_flops, ml, large, args.batch, device)
        prefix = "" if device == "cpu" else "gpu_"
        res |= {f"{prefix}pipeline_vs_bare": round(ratio("pipe", "bare"), 3),
                f"{prefix}pipeline_vs_per_file": round(ratio("pipe", "pf"), 3),
                f"{prefix}pipeline_audio_s_per_s": round(pipe, 2), f"{prefix}bare_audio_s_per_s": round(bare, 2),
                f"{prefix}per_file_audio_s_per_s": round(pf, 2), f"{prefix}bare_batch8_audio_s_per_s": round(bare8, 2),
                f"{prefix}large_pipeline_vs_bare": round(ratio("lpipe", "lbare"), 3),
                f"{prefix}flops_fraction": round(flops_large * lpipe / large_s / peak, 4),
                f"{prefix}flops_fraction_small": round(flops_small * pipe / audio_s / peak, 4),
                f"{prefix}matmul_peak_gflops": round(peak / 1e9, 1),
                f"{prefix}model_setup_s": round(med["setup"], 2), f"{prefix}large_model_setup_s": round(med["lsetup"], 2)}
        if "pipe2" in med:
            res |= {"pipeline_2_workers_audio_s_per_s": round(med["pipe2"], 2),
                    "pipeline_2_workers_vs_bare": round(ratio("pipe2", "bare"), 3)}
    if "cpu" in devices:  # the memory rows are about the host process: taken with the CPU rows
        m10, _ = manifest_subset(corpus, root / "m10.csv", args.minutes * 60, copies=10)
        rss1 = peak_rss_mb(m1, root / "rss-1x", small)
        rss10 = peak_rss_mb(m10, root / "rss-10x", small)
        res |= {"rss_mb_1x": round(rss1), "rss_mb_10x": round(rss10), "rss_ratio_10x": round(rss10 / rss1, 3)}
    print(f"{audio_s / 60:.1f} min of demo audio ({large_s:.0f} s for the large-sized model); WavLM-architecture "
          f"random models; batch {args.batch or 'automatic'}; {os.cpu_count()} CPUs; audio seconds per wall second "
          f"(median of {args.repeats} interleaved rounds; each ratio the median of its rounds' ratios)")
    print(f"{'model/device':<20}{'pipeline':>10}{'bare':>10}{'per-file':>10}{'bare b=8':>10}{'pipe/bare':>11}"
          f"{'pipe/per-file':>15}")
    for name, p, b, f, b8, pb, pf_ratio in rows:
        print(f"{name:<20}{p:>10.1f}{b:>10.1f}{f:>10.1f}{b8:>10.1f}{pb:>11.2f}{pf_ratio:>15.2f}")
    if "pipeline_2_workers_audio_s_per_s" in res:
        print(f"small/cpu with 2 worker processes x 1 torch thread: {res['pipeline_2_workers_audio_s_per_s']:.1f} "
              f"audio s/s ({res['pipeline_2_workers_vs_bare']:.2f} of bare)")
    if "rss_mb_1x" in res:
        print(f"peak RSS of msf extract: 1x {res['rss_mb_1x']} MB, 10x {res['rss_mb_10x']} MB "
              f"(ratio {res['rss_ratio_10x']:.2f})")
    for device in devices:
        prefix = "" if device == "cpu" else "gpu_"
        print(f"{device}: loading the model (in the pipeline's time, once per worker; not in the bare loop's): small "
              f"{res[prefix + 'model_setup_s']:.2f} s, large-sized {res[prefix + 'large_model_setup_s']:.2f} s")
        print(f"{device}: float32 matmul peak {res[prefix + 'matmul_peak_gflops']:.1f} GFLOP/s "
              f"({torch.get_num_threads()} torch threads on CPU); share of it the pipeline reaches: small model "
              f"{res[prefix + 'flops_fraction_small']:.3f}, large-sized model {res[prefix + 'flops_fraction']:.3f}")
    if args.stand_in_ms > 0:
        st = on_own_thread(stand_in_rows, m1, root, small, args.stand_in_ms, args.repeats)
        sr = lambda a: float(np.median(np.array(st["bare"]) / np.array(st[a])))  # noqa: E731
        res |= {"stand_in_ms": args.stand_in_ms, "stand_in_pipeline_vs_bare": round(sr("pipeline"), 3),
                "stand_in_no_read_ahead_vs_bare": round(sr("no_read_ahead"), 3),
                "stand_in_one_task_at_a_time_vs_bare": round(sr("one_task"), 3)}
        print(f"host-free stand-in encoder ({args.stand_in_ms:g} ms per utterance, batches of 16, the small model's "
              f"frame shape, {STAND_IN_SHARD} utterances per task), seconds: bare {np.median(st['bare']):.2f}, "
              f"pipeline {np.median(st['pipeline']):.2f} ({res['stand_in_pipeline_vs_bare']:.2f} of bare); without "
              f"reading audio ahead {np.median(st['no_read_ahead']):.2f} ({res['stand_in_no_read_ahead_vs_bare']:.2f}); "
              f"one task at a time per worker {np.median(st['one_task']):.2f} "
              f"({res['stand_in_one_task_at_a_time_vs_bare']:.2f})")
    res |= {"audio_minutes": round(audio_s / 60, 2), "devices": devices}
    print(json.dumps(res))

if __name__ == "__main__":
    main()
