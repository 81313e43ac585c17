"""Frames at one byte a value (`acoustic.dtype=int8`): stored as int8 with a scale per frame and layer,
read back as float32 by the read API, the trainer's columns and `msf export` without the caller
knowing; checksums, verify and compaction see the bytes as stored."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

import msf
from msf.pipeline.cache.export import export_npy
from msf.pipeline.cache.shard_store import ShardStore, write_shard
from msf.pipeline.cache.view import CacheView
from msf.pipeline.config import MsfConfig
from msf.pipeline.quantized import dequantize, quantize
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stages.acoustic import AcousticParams, AcousticStage


def test_quantize_bounds_each_frames_error_by_half_a_step_of_its_peak() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 64)).astype(np.float32) * rng.uniform(0.01, 100, size=(50, 3, 1)).astype(np.float32)
    x[7, 1] = 0.0  # a silent frame stays exactly zero
    q = quantize(x)
    assert q.shape == (50, 3) and q["values"].dtype == np.int8 and q["scale"].dtype == np.float32
    assert q.dtype.itemsize == 64 + 4  # one byte a value, plus the frame's scale
    back = dequantize(q)
    err = np.abs(back - x).max(axis=-1) / np.maximum(np.abs(x).max(axis=-1), 1e-30)
    assert back.dtype == np.float32 and err.max() <= 0.5 / 127 + 1e-6 and not back[7, 1].any()


def test_int8_frames_read_back_as_floats_through_every_reader(tmp_path: Path, demo_corpus: Path) -> None:
    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))[:9]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "audio": str(demo_corpus / r["audio"])} for r in rows)
    cache = tmp_path / "cache"
    for name, dtype in (("default", "float16"), ("int8", "int8")):
        ex = Extraction(MsfConfig(corpus=str(manifest), cache=cache, profile="offline", workers=1, name=name,
                                  stages={"acoustic": {"dtype": dtype}}))
        ex.run(["acoustic"], progress=False)
        ex.close()
    ids = [r["id"] for r in rows]
    with msf.open_cache(cache) as f16, msf.open_cache(cache, "int8") as i8:
        exact, approx = f16.records("acoustic", ids), i8.records("acoustic", ids)
        for u in ids:
            a, b = exact[u]["frames"].astype(np.float32), approx[u]["frames"]
            assert set(approx[u]) == {"frames", "frame_rate"} and b.dtype == np.float32 and b.shape == a.shape
            # int8's half step of each frame's peak, plus float16's own rounding of the reference
            assert (np.abs(a - b).max(axis=-1) <= np.abs(a).max(axis=-1) * (0.5 / 127 + 2e-3)).all()
        train = [u.id for u in i8.utterances if u.split == "train"]
        column = i8.column("acoustic.frames", train)
        streamed = column.read(list(range(len(train))), spans=[(2, 10)] * len(train))
        assert all(s.dtype == np.float32 and np.array_equal(s, approx[u]["frames"][2:10]) for s, u in zip(streamed, train))
        item = i8.dataset("train", ["acoustic.frames"])[0]
        assert np.array_equal(item["acoustic.frames"].numpy(), approx[sorted(train)[0]]["frames"])
        export_npy(i8, tmp_path / "npy", ["acoustic.frames"], progress=False)
        assert np.array_equal(np.load(tmp_path / "npy" / "acoustic.frames" / f"{ids[0]}.npy"), approx[ids[0]]["frames"])
        sizes = {k: sum(e.bytes for e in v.fresh(["acoustic"])["acoustic"].values()) for k, v in (("f16", f16), ("i8", i8))}
    assert sizes["f16"] / sizes["i8"] > 1.9
    store = ShardStore(cache)
    try:  # checksums are over the bytes as stored: verify passes, and compaction keeps one byte a value
        assert store.verify().ok
        store.compact()
        assert store.verify().ok
        with CacheView.open(cache, "int8") as view:
            entries = view.fresh(["acoustic"])["acoustic"]
        raw = [store.read(e, raw=True) for e in entries.values()]
        assert len(raw) == len(ids) and all(r["frames"].dtype.names == ("values", "scale") for r in raw)
    finally:
        store.close()
    with CacheView.open(cache, "int8") as again:
        assert np.array_equal(again.records("acoustic", ids[:1])[ids[0]]["frames"], approx[ids[0]]["frames"])


def test_a_shard_of_today_reads_unchanged_and_the_size_estimate_counts_one_byte(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).normal(size=(12, 8)).astype(np.float16)
    w = write_shard(tmp_path, ["a"], [{"frames": frames, "frame_rate": 50.0}])
    store_reader = ShardStore(tmp_path.parent).reader
    got = store_reader.row(tmp_path / w.name, 0)
    assert got["frames"].dtype == np.float16 and np.array_equal(got["frames"], frames)
    assert store_reader.array_rows(tmp_path / w.name, "frames", [0])[0].dtype == np.float16
    sizes = {d: AcousticStage(AcousticParams(backend="whisper", model="bundled:tiny.en", dtype=d)).declared_bytes(10.0)
             for d in ("float16", "int8")}
    assert sizes == {"float16": 500 * 384 * 2, "int8": 500 * (384 + 4)}
