"""Frames at one byte a value (acoustic.dtype=int8) against float16 and two lossless float16 filters.

One demo cache holds two feature sets that differ only in acoustic.dtype: `default` (float16) and
`int8` (int8 values, a float32 scale per frame and layer: msf.pipeline.quantized). The lossless rows
are copies of the float16 shards with the frames rewritten through an HDF5 filter, read through the
same shard reader (so the same code path the trainer streams with):
  float16 zstd   hdf5plugin's Blosc (zstd, bit shuffle), the maintained HDF5 filter package
  float16 gzip   h5py's built-in gzip with byte shuffle
Columns: bytes on disk of the frames, float16 / that ratio, seconds to read one epoch of the train
split in training batches of 32 and pad each into the float32 batch the model takes (median of
--repeats; every row read in each round, interleaved), its
ratio to float16, and the same for the reads alone (one-byte frames come back as float32, float16 as float16,
which the batch then casts), and for int8 the error: the largest |x - x'| over a frame's peak |x|, and the
relative RMS error over all values. Then the test CCC of the `audio` and `full` variants per storage,
--seeds training seeds each (the lossless filters give float16's values bit for bit, so float16's CCC).

    python bench/frames_storage.py [--n 300] [--seeds 3] [--repeats 5] [--out DIR] [--skip-ccc]

Needs `pip install 'msf[bench]'` (hdf5plugin) for the zstd row; without it the row is left out.
Last stdout line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.cache.view import CacheView
from msf.pipeline.config import MsfConfig
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.quantized import decoded
from msf.pipeline.run.extraction import Extraction

STAGES = ["acoustic", "global", "local", "extended"]


def extract(corpus: Path, cache: Path, name: str, dtype: str) -> None:
    cfg = MsfConfig(corpus=f"demo:{corpus}", cache=cache, profile="offline", workers=2, name=name,
                    stages={"acoustic": {"dtype": dtype}})
    ex = Extraction(cfg)
    try:
        ex.run(STAGES)
    finally:
        ex.close()


def filtered_copy(view: CacheView, ids: list[str], out: Path, filter_kwargs: dict) -> list[tuple[Path, int]]:
    """The float16 frames of `ids`, shard by shard, rewritten with an HDF5 filter (chunks of ~256 KB,
    as the store chunks what it compresses); returns each id's (copy, row)."""
    entries = view.fresh(["acoustic"])["acoustic"]
    at: dict[str, tuple[Path, int]] = {}
    for shard in sorted({entries[u].shard for u in ids}):
        src = view.root / "acoustic" / shard
        dst = out / shard
        with h5py.File(src, "r", locking=False) as f, h5py.File(dst, "w") as g:
            data = f["frames/data"]
            row_bytes = max(1, data.dtype.itemsize * int(np.prod(data.shape[1:])))
            chunks = (max(1, min(data.shape[0], (256 << 10) // row_bytes)),) + data.shape[1:]
            grp = g.create_group("frames")
            grp.attrs["kind"] = "array"
            grp.create_dataset("data", data=data[...], chunks=chunks, **filter_kwargs)
            grp.create_dataset("offsets", data=f["frames/offsets"][...])
            g.create_dataset("utt", data=f["utt"][...])
    for u in ids:
        at[u] = (out / entries[u].shard, entries[u].row)
    return [at[u] for u in ids]


def frames_storage_size(shard: Path) -> int:
    """Bytes the frames of one shard take on disk (after any filter)."""
    with h5py.File(shard, "r", locking=False) as f:
        return int(f["frames/data"].id.get_storage_size())


def epoch_seconds(column: ArrayColumn, seed: int, assemble: bool, standardise: bool = False) -> float:
    """One epoch's reads in training batches of 32; `assemble`: each batch also padded into the float32
    array the model takes (trainer.data.make_batch, as the trainer's read-ahead thread does), so a
    storage that reads back float16 pays its cast to float32 where training pays it; `standardise`:
    first each utterance's frames against its speaker's mean and sd, as msf's default training does
    (trainer.data.FeatureSet._batch)."""
    from msf.trainer.data import make_batch

    order = np.random.default_rng(seed).permutation(len(column))
    width = column.read([0])[0].shape[-1]
    mean, sd = np.zeros(width, np.float32), np.ones(width, np.float32)
    t0 = time.perf_counter()
    for s in range(0, len(order), 32):
        # as the trainer reads: as stored, one-byte frames scaled in the batch (or decoded to standardise)
        frames = column.read(order[s : s + 32].tolist(), raw=assemble)
        if standardise:
            frames = [(decoded(f) - mean) / sd for f in frames]
        if assemble:
            make_batch(frames, {}, {}, np.zeros((len(frames), 3), np.float32), [""] * len(frames))
    return time.perf_counter() - t0


def frame_errors(exact: list[np.ndarray], approx: list[np.ndarray]) -> tuple[float, float]:
    worst, num, den = 0.0, 0.0, 0.0
    for x, y in zip(exact, approx):
        x, y = x.astype(np.float64), y.astype(np.float64)
        peak = np.abs(x).max(axis=-1)
        err = np.abs(x - y).max(axis=-1)
        worst = max(worst, float((err / np.where(peak > 0, peak, 1)).max()))
        num += float(((x - y) ** 2).sum())
        den += float((x ** 2).sum())
    return worst, (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="keep the corpus, cache and runs here (else a temporary folder)")
    ap.add_argument("--skip-ccc", action="store_true")
    args = ap.parse_args()
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="msf-frames-")
        args.out = Path(tmp)
    corpus, cache = args.out / "corpus", args.out / "cache"
    if not (corpus / "manifest.csv").exists():
        build_demo_corpus(corpus, n=args.n, seed=args.seed)
    extract(corpus, cache, "default", "float16")
    extract(corpus, cache, "int8", "int8")

    f16, i8 = CacheView.open(cache, "default"), CacheView.open(cache, "int8")
    train = [u.id for u in f16.utterances if u.split == "train"]
    columns = {"float16": f16.column("acoustic.frames", train), "int8": i8.column("acoustic.frames", train)}
    nbytes = {k: sum(e.bytes for u, e in v.fresh(["acoustic"])["acoustic"].items() if u in set(train))
              for k, v in (("float16", f16), ("int8", i8))}
    exact = columns["float16"].read(range(len(train)))
    worst, rms = frame_errors(exact, columns["int8"].read(range(len(train))))
    filters = {"float16 gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True}}
    try:
        import hdf5plugin

        filters = {"float16 zstd": dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
                   **filters}
    except ImportError:
        print("hdf5plugin is not installed (pip install 'msf[bench]'): no zstd row", file=sys.stderr)
    for label, kwargs in filters.items():
        folder = args.out / label.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        columns[label] = ArrayColumn(filtered_copy(f16, train, folder, kwargs), "frames")
        # the copies hold whole shards: compared with the same shards' float16 frames
        same = {p.name for p in folder.glob("*.h5")}
        src_frames = sum(frames_storage_size(f16.root / "acoustic" / n) for n in same)
        copy_frames = sum(frames_storage_size(folder / n) for n in same)
        nbytes[label] = nbytes["float16"] * copy_frames / src_frames
        same = all(np.array_equal(a, b) for a, b in zip(exact, columns[label].read(range(len(train)))))
        assert same, f"{label} is not lossless"
    times: dict[str, list[float]] = {k: [] for k in columns}
    reads: dict[str, list[float]] = {k: [] for k in columns}
    norm: dict[str, list[float]] = {k: [] for k in columns}
    for r in range(args.repeats):
        for k, col in columns.items():
            times[k].append(epoch_seconds(col, seed=r, assemble=True))
            reads[k].append(epoch_seconds(col, seed=r, assemble=False))
            norm[k].append(epoch_seconds(col, seed=r, assemble=True, standardise=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    rmed = {k: statistics.median(v) for k, v in reads.items()}
    nmed = {k: statistics.median(v) for k, v in norm.items()}
    print(f"{'storage':14} {'MB':>8} {'f16/this':>8} {'read+batch s':>12} {'vs f16':>7} {'+speaker-norm s':>15} "
          f"{'vs f16':>7} {'read alone s':>12} {'vs f16':>7}   (seconds per epoch of the train split)")
    for k in columns:
        print(f"{k:14} {nbytes[k] / 1e6:8.2f} {nbytes['float16'] / nbytes[k]:8.3f} {med[k]:12.4f} "
              f"{med[k] / med['float16']:7.3f} {nmed[k]:15.4f} {nmed[k] / nmed['float16']:7.3f} "
              f"{rmed[k]:12.4f} {rmed[k] / rmed['float16']:7.3f}")
    print(f"int8 error: largest |x - x'| / frame peak {worst:.5f}, relative RMS {rms:.5f}")
    result: dict[str, float] = {
        "int8_bytes_ratio": round(nbytes["float16"] / nbytes["int8"], 4),
        "int8_max_rel_error": round(worst, 6), "int8_rel_rms_error": round(rms, 6),
        "read_s_float16": round(med["float16"], 4), "read_s_int8": round(med["int8"], 4),
        "int8_read_ratio": round(med["int8"] / med["float16"], 4),
        "int8_read_alone_ratio": round(rmed["int8"] / rmed["float16"], 4),
        "int8_read_speaker_norm_ratio": round(nmed["int8"] / nmed["float16"], 4),
    }
    for label in filters:
        key = label.split()[1]
        result[f"lossless_{key}_ratio"] = round(nbytes["float16"] / nbytes[label], 4)
        result[f"lossless_{key}_read_ratio"] = round(med[label] / med["float16"], 4)
        result[f"lossless_{key}_read_alone_ratio"] = round(rmed[label] / rmed["float16"], 4)
    result["lossless_ratio"] = max(v for k, v in result.items() if k.startswith("lossless_") and k.endswith("_ratio")
                                   and "read" not in k)
    f16.close()
    i8.close()
    if not args.skip_ccc:
        from msf.trainer.ablate import ablate

        for name in ("default", "int8"):
            res = ablate(cache, args.out / f"ab-{name}", seeds=args.seeds, variants=["audio", "full"], name=name,
                         progress=False)
            label = "float16" if name == "default" else "int8"
            for variant in ("audio", "full"):
                result[f"ccc_{variant}_{label}"] = round(res[variant]["ccc_mean"], 4)
                print(f"{variant:6} {label:8} mean CCC {res[variant]['ccc_mean']:.4f} (seeds: "
                      + ", ".join(f"{s['ccc_mean']:.4f}" for s in res[variant]["runs"]) + ")")
        for variant in ("audio", "full"):
            result[f"ccc_{variant}_int8_minus_float16"] = round(
                result[f"ccc_{variant}_int8"] - result[f"ccc_{variant}_float16"], 4)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
