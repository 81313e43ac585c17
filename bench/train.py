"""Training epoch time by where the frames come from, and training steps per second.

Rows: frames streamed from the HDF5 shards (one read per shard per batch, read-ahead thread), one
.npy file per utterance (the common practice), and in-memory arrays; each as a full training epoch
(load, forward, backward, step) and as loading alone. Median of --repeats interleaved rounds (each round
runs every row once), on CPU and on a GPU when present. Then the same at scale: a synthetic frames cache of --scale-n utterances written
through the shard store (shards of 256, as extraction writes them), more than the trainer's
in-memory budget (--memory-gb), so training streams it; the memory row runs only when the frames
fit in --memory-gb. The scale rows train a narrower model (--scale-hidden 32), so reading the frames
is a larger share of the epoch than with the default width. The shard and .npy rows both hand the
frames as stored (float16) to the trainer's own batch assembly, which casts them: only the reads differ.

Then one batch of 32 ten-second utterances with all 25 hidden states of a WavLM-Large-sized model
(T x 25 x 1024 float16 each, 0.8 GB), from the stored frames to float32 on the device: cast to float32
on the host as it is padded (what the trainer does on a CPU, and did everywhere before), and padded as
float16 then cast on the device (what it does on a GPU), interleaved, median of rounds.

    python bench/train.py [--n 160] [--repeats 5] [--features CACHE] [--scale-n 20000] [--only batch25]

Last stdout line: one JSON object (epoch_s_shards, epoch_s_npy, epoch_s_memory, steps_per_s,
epoch_s_shards_20k, epoch_s_npy_20k, batch_s_25_layers, batch_s_25_layers_before, ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.cache.shard_store import write_shard
from msf.trainer.data import FeatureSet, Split, make_batch, parse_sources
from msf.trainer.model import ModelConfig, MsfSer
from msf.trainer.train import to_tensors

SOURCES = parse_sources("audio,gs,les,es")


class NpyColumn:
    """Frames from one .npy file per utterance (float16, as the shards store them): the layout EmoBox
    and s3prl users keep. It reads like the cache's ArrayColumn (`read`, `lengths`)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, positions, spans=None) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
        return [np.load(self.paths[k]) for k in positions]

    def lengths(self, positions=None) -> np.ndarray:  # type: ignore[no-untyped-def]
        positions = range(len(self.paths)) if positions is None else positions
        return np.array([np.load(self.paths[k], mmap_mode="r").shape[0] for k in positions], np.int64)


def as_npy(data: FeatureSet, out: Path) -> FeatureSet:
    """A copy of `data` whose frames come from one .npy file per utterance (float16, as stored)."""
    npy = copy.copy(data)
    npy.splits = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, split in data.splits.items():
        paths = []
        for k, uid in enumerate(split.ids):
            p = out / f"{uid}.npy"
            np.save(p, split.column.read([k])[0].astype(np.float16))
            paths.append(p)
        npy.splits[name] = replace(split, column=NpyColumn(paths), frames=None, lengths=None)
    return npy


class SyntheticFeatureSet(FeatureSet):
    """n training utterances of random float16 frames (1 to 6 s at 50 frames/s, width `dim`), written
    by the shard store's own writer, with random text vectors and labels."""

    def __init__(self, root: Path, n: int, dim: int, vector_dims: dict[str, int]):
        rng = np.random.default_rng(0)
        ids = [f"s{i:06d}" for i in range(n)]
        lengths = rng.integers(50, 300, n)
        frames_at: list[tuple[Path, int]] = []
        for start in range(0, n, 256):
            block = range(start, min(n, start + 256))
            records = [{"frames": rng.standard_normal((lengths[i], dim), np.float32).astype(np.float16),
                        "frame_rate": 50.0} for i in block]
            w = write_shard(root / "acoustic", [ids[i] for i in block], records)
            frames_at += [(root / "acoustic" / w.name, r) for r in range(len(records))]
        self.root, self.sources, self.name = root, SOURCES, "synthetic"
        self.frame_shape, self.vector_dims = (dim,), vector_dims
        split = Split(ids, rng.uniform(1, 7, (n, 3)).astype(np.float32),
                      {s: rng.standard_normal((n, d), np.float32) for s, d in vector_dims.items()},
                      {s: np.ones(n, bool) for s in vector_dims}, ArrayColumn(frames_at, "frames"))
        self.splits = {"train": split}


def loaded(data: FeatureSet) -> FeatureSet:
    """A copy of `data` with its frames held in memory."""
    out = copy.copy(data)
    out.splits = {k: replace(s, frames=[f.astype(np.float32) for f in s.column.read(range(len(s.ids)))])
                  for k, s in data.splits.items()}
    return out


def build(n: int, root: Path) -> Path:
    corpus = build_demo_corpus(root / "corpus", n=n, seed=0, progress=False)
    ex = Extraction(MsfConfig(corpus=f"demo:{corpus}", cache=root / "cache", profile="offline", workers=2,
                              stages={"align": {"backend": "provided"}}))
    ex.run(["acoustic", "global", "local", "extended"], progress=False)
    ex.close()
    return root / "cache"


def epoch(data: FeatureSet, model: MsfSer | None, opt: torch.optim.Optimizer | None, device: str, seed: int) -> tuple[float, int]:
    t0, steps = time.perf_counter(), 0
    for b in data.batches("train", 32, shuffle=True, seed=0, epoch=seed):
        if model is not None:
            frames, lengths, vectors, masks, labels = to_tensors(b, device)
            pred, aux = model(frames, lengths, vectors, masks)
            loss = model.loss(pred, labels, aux, 0.01)
            opt.zero_grad()  # type: ignore[union-attr]
            loss.backward()
            opt.step()  # type: ignore[union-attr]
        steps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, steps


def interleaved_epochs(sets: dict[str, FeatureSet], device: str, repeats: int,
                       hidden: int = 128) -> dict[str, tuple[list[float], list[float], int]]:
    """For each set: (epoch seconds per round, load-only seconds per round, steps per epoch). Each set
    trains its own model (same seed) and has a warm-up epoch; then each round runs one epoch of every
    set, then one load-only pass of every set, so a slow minute on a shared machine slows every row of
    that round rather than one row's repeats."""
    models = {}
    for name, data in sets.items():
        torch.manual_seed(0)
        model = MsfSer(ModelConfig(tuple(data.frame_shape), data.vector_dims, SOURCES, hidden=hidden)).to(device)
        models[name] = (model, torch.optim.AdamW(model.parameters(), 1e-3))
        epoch(data, *models[name], device, 0)  # warm-up: caches, allocator, threads
    full: dict[str, list[float]] = {name: [] for name in sets}
    load: dict[str, list[float]] = {name: [] for name in sets}
    steps: dict[str, int] = {}
    for k in range(1, repeats + 1):
        for name, data in sets.items():
            t, steps[name] = epoch(data, *models[name], device, k)
            full[name].append(t)
        for name, data in sets.items():
            load[name].append(epoch(data, None, None, device, k)[0])
    return {name: (full[name], load[name], steps[name]) for name in sets}


def summarise(runs: dict[str, tuple[list[float], list[float], int]], device: str, suffix: str,
              rows: list, res: dict) -> str:
    """A table row per set (median epoch and load-only seconds, steps/s) and its JSON keys
    (`epoch_s_<set><suffix>`, `load_s_<set><suffix>`); returns the device's key prefix."""
    p = "" if device == "cpu" else "gpu_"
    for name, (full, load, steps) in runs.items():
        t, t_load = float(np.median(full)), float(np.median(load))
        rows.append((device, name, t, t_load, steps / t))
        res[f"{p}epoch_s_{name}{suffix}"] = round(t, 4)
        res[f"{p}load_s_{name}{suffix}"] = round(t_load, 4)
    return p


def ratio(runs: dict[str, tuple[list[float], list[float], int]], a: str, b: str) -> float:
    """The median over rounds of a's epoch time over b's in the same round."""
    return float(np.median(np.array(runs[a][0]) / np.array(runs[b][0])))


def wide_batch_rows(device: str, repeats: int, n: int = 32, seconds: float = 10.0) -> dict[str, float]:
    """Seconds from stored float16 frames (T x 25 x 1024) to a float32 batch on the device: as the
    trainer does it for this device, as it did before (cast on the host, float32 moved), and padded
    as float16 then cast by the device (what a GPU gets; on a CPU that cast runs on the host too)."""
    from msf.trainer.train import host_casts

    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((int(seconds * 50) - k, 25, 1024), np.float32).astype(np.float16) for k in range(n)]
    labels = np.zeros((n, 3), np.float32)

    def timed(cast: bool) -> float:
        t0 = time.perf_counter()
        x = to_tensors(make_batch(frames, {}, {}, labels, [], cast=cast), device)[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        assert x.dtype == torch.float32
        return time.perf_counter() - t0

    runs: dict[str, list[float]] = {"host_cast": [], "device_cast": []}
    timed(True), timed(False)  # warm-up: the allocator's first 1.6 GB
    for k in range(repeats):  # the order alternates: the first of a round pays for freeing the last batch
        for cast in ((True, False) if k % 2 == 0 else (False, True)):
            runs["host_cast" if cast else "device_cast"].append(timed(cast))
    now = "host_cast" if host_casts(device) else "device_cast"
    return {"now": float(np.median(runs[now])), "before": float(np.median(runs["host_cast"])),
            "device_cast": float(np.median(runs["device_cast"])),
            "speedup": float(np.median(np.array(runs["host_cast"]) / np.array(runs[now])))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--features", type=Path, help="an existing cache with acoustic, global, local, extended")
    ap.add_argument("--scale-n", type=int, default=20000, help="utterances in the synthetic frames cache (0: skip)")
    ap.add_argument("--scale-repeats", type=int, default=3)
    ap.add_argument("--memory-gb", type=float, default=1.0, help="in-memory budget for the scale rows")
    ap.add_argument("--scale-hidden", type=int, default=32,
                    help="model width for the scale rows: small, so reading is a larger share of the epoch")
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda rows run only where torch sees a GPU")
    ap.add_argument("--only", choices=["batch25"], help="run only these rows")
    args = ap.parse_args()
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d.startswith("cuda") and torch.cuda.is_available())]
    res: dict = {}
    for device in devices:
        w = wide_batch_rows(device, args.repeats)
        p = "" if device == "cpu" else "gpu_"
        res |= {f"{p}batch_s_25_layers": round(w["now"], 3), f"{p}batch_s_25_layers_before": round(w["before"], 3),
                f"{p}batch_25_layers_speedup": round(w["speedup"], 2),
                f"{p}batch_s_25_layers_float16_then_cast": round(w["device_cast"], 3)}
        print(f"{device}: a batch of 32 x 10 s x 25 x 1024 from stored float16 to float32 on the device: "
              f"{w['now']:.3f} s as the trainer does it here (before: {w['before']:.3f} s, cast on the host; "
              f"{w['speedup']:.2f}x); padded as float16 and cast after: {w['device_cast']:.3f} s")
    if args.only:
        print(json.dumps(res))
        return
    root = Path(tempfile.mkdtemp(prefix="msf-bench-train-"))
    cache = args.features or build(args.n, root)
    shards = FeatureSet(cache, SOURCES, in_memory=False)
    sets = {"shards": shards, "npy": as_npy(shards, root / "npy"), "memory": FeatureSet(cache, SOURCES, in_memory=True)}
    rows = []
    for device in devices:
        runs = interleaved_epochs(sets, device, args.repeats)
        p = summarise(runs, device, "", rows, res)
        res[f"{p}steps_per_s"] = round(next(r[4] for r in rows if r[0] == device and r[1] == "memory"), 2)
        res[f"{p}shards_vs_memory"] = round(ratio(runs, "shards", "memory"), 3)
        res[f"{p}npy_vs_memory"] = round(ratio(runs, "npy", "memory"), 3)
        res[f"{p}shards_vs_npy"] = round(ratio(runs, "shards", "npy"), 3)
    n_train = len(sets["memory"].splits["train"].ids)
    print(f"{n_train} training utterances, batch 32, frames {tuple(sets['memory'].frame_shape)}; median of "
          f"{args.repeats} interleaved rounds (each ratio in the JSON the median of its rounds' ratios)")
    table(rows)
    if args.scale_n:
        dims = sets["memory"].vector_dims
        dim = 256
        gb = args.scale_n * 175 * dim * 4 / 1e9  # float32 in memory, 175 frames on average
        big = {"shards": SyntheticFeatureSet(root / "scale", args.scale_n, dim, dims)}
        big["npy"] = as_npy(big["shards"], root / "scale-npy")
        if gb <= args.memory_gb:
            big["memory"] = loaded(big["shards"])
        rows = []
        for device in devices:
            runs = interleaved_epochs(big, device, args.scale_repeats, args.scale_hidden)
            p = summarise(runs, device, "_20k", rows, res)
            res[f"{p}shards_vs_npy_20k"] = round(ratio(runs, "shards", "npy"), 3)
        print(f"\nscale: {args.scale_n} synthetic utterances, frames (T, {dim}) float16, about {gb:.1f} GB as "
              f"float32 (in-memory budget {args.memory_gb} GB{': memory row skipped' if 'memory' not in big else ''}); "
              f"model hidden {args.scale_hidden}; median of {args.scale_repeats} interleaved rounds")
        table(rows, against="memory" if "memory" in big else "npy")
    print(json.dumps(res))


def table(rows: list[tuple[str, str, float, float, float]], against: str = "memory") -> None:
    print(f"{'device':<8}{'frames from':<14}{'epoch s':>9}{'load-only s':>13}{'steps/s':>9}{'epoch vs ' + against:>17}")
    for device, name, t, load, sps in rows:
        ref = next(r[2] for r in rows if r[0] == device and r[1] == against)
        print(f"{device:<8}{name:<14}{t:>9.3f}{load:>13.3f}{sps:>9.1f}{t / ref:>17.2f}")


if __name__ == "__main__":
    main()
