"""Training epoch time by where the frames come from, and training steps per second.

Rows: frames streamed from the HDF5 shards (shard-aware order, read-ahead thread), one .npy file per
utterance (the common practice), and in-memory arrays; each as a full training epoch (load, forward,
backward, step) and as loading alone. Median of --repeats epochs, on CPU and on a GPU when present.

    python bench/train.py [--n 160] [--repeats 5] [--features CACHE]

Last stdout line: one JSON object (epoch_s_shards, epoch_s_npy, epoch_s_memory, steps_per_s, ...).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.extraction import Extraction
from msf.trainer.data import FeatureSet, parse_sources
from msf.trainer.model import ModelConfig, MsfSer, ccc, load_balance
from msf.trainer.train import to_tensors

SOURCES = parse_sources("audio,gs,les,es")


class NpyFeatureSet(FeatureSet):
    """The same utterances, frames read from one .npy file per utterance."""

    @classmethod
    def _read(cls, path: Path, row: int) -> np.ndarray:
        return np.load(path).astype(np.float32) if path.suffix == ".npy" else super()._read(path, row)


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
            frames, lengths, vectors, les_mask, labels = to_tensors(b, device)
            pred, aux = model(frames, lengths, vectors, les_mask)
            loss = 1 - ccc(pred, labels).mean() + 0.01 * load_balance(aux["router"])
            opt.zero_grad()  # type: ignore[union-attr]
            loss.backward()
            opt.step()  # type: ignore[union-attr]
        steps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--features", type=Path, help="an existing cache with acoustic, global, local, extended")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="msf-bench-train-"))
    cache = args.features or build(args.n, root)
    sets = {"shards": FeatureSet(cache, SOURCES, in_memory=False), "memory": FeatureSet(cache, SOURCES, in_memory=True)}
    npy = NpyFeatureSet(cache, SOURCES, in_memory=False)
    for split in npy.splits.values():  # one .npy per utterance, as extraction scripts commonly write
        paths = []
        for uid, at in zip(split.ids, split.frames_at):
            p = root / "npy" / f"{uid}.npy"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, FeatureSet._read(*at).astype(np.float16))
            paths.append((p, -1))
        split.frames_at = paths
    sets["npy"] = npy
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, res = [], {}
    for device in devices:
        torch.manual_seed(0)
        d0 = sets["memory"]
        model = MsfSer(ModelConfig(tuple(d0.frame_shape), d0.vector_dims, SOURCES)).to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        for name in ("shards", "npy", "memory"):
            epoch(sets[name], model, opt, device, 0)  # warm-up: caches, allocator, threads
            full = [epoch(sets[name], model, opt, device, k) for k in range(args.repeats)]
            load = [epoch(sets[name], None, None, device, k)[0] for k in range(args.repeats)]
            t = float(np.median([f[0] for f in full]))
            rows.append((device, name, t, float(np.median(load)), full[0][1] / t))
            if device == "cpu":
                res[f"epoch_s_{name}"] = round(t, 4)
                res[f"load_s_{name}"] = round(float(np.median(load)), 4)
            else:
                res[f"gpu_epoch_s_{name}"] = round(t, 4)
    n_train = len(sets["memory"].splits["train"].ids)
    print(f"{n_train} training utterances, batch 32, frames {tuple(sets['memory'].frame_shape)}; median of {args.repeats}")
    print(f"{'device':<8}{'frames from':<14}{'epoch s':>9}{'load-only s':>13}{'steps/s':>9}{'epoch vs memory':>17}")
    for device, name, t, load, sps in rows:
        mem = next(r[2] for r in rows if r[0] == device and r[1] == "memory")
        print(f"{device:<8}{name:<14}{t:>9.3f}{load:>13.3f}{sps:>9.1f}{t / mem:>17.2f}")
    res["steps_per_s"] = round(next(r[4] for r in rows if r[0] == "cpu" and r[1] == "memory"), 2)
    res["shards_vs_memory"] = round(res["epoch_s_shards"] / res["epoch_s_memory"], 3)
    res["npy_vs_memory"] = round(res["epoch_s_npy"] / res["epoch_s_memory"], 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
