from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msf.pipeline.cache.index import Entry
from msf.pipeline.errors import CacheDamaged
from msf.pipeline.cache.shard_store import ContiguousArray, ShardFormatError, ShardReader, ShardStore, record_checksum, write_shard


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "frames": rng.standard_normal((int(rng.integers(0, 400)), 64)).astype(np.float16),
            "words": np.asarray(["héllo", "world"][: i % 3]),
            "duration": float(rng.random()),
            "n": i,
            "flag": bool(i % 2),
            "text": f"utterance {i} ✓",
        }
        for i in range(n)
    ]


def _store(tmp_path: Path, n: int = 20) -> tuple[ShardStore, list[dict]]:
    store = ShardStore(tmp_path / "cache")
    recs = _records(n)
    ids = [f"u{i}" for i in range(n)]
    w = write_shard(store.root / "feat", ids, recs)
    store.index.commit([Entry("feat", u, "fp", w.name, i, c, b) for i, (u, c, b) in enumerate(zip(ids, w.checksums, w.bytes))], [])
    return store, recs


def _read(store: ShardStore, utt: str, fp: str = "fp") -> dict:
    return store.read(store.index.entries("feat", [(utt, fp)])[(utt, fp)])


def test_round_trip_ragged_strings_scalars(tmp_path: Path) -> None:
    store, recs = _store(tmp_path)
    for i, r in enumerate(recs):
        got = _read(store, f"u{i}")
        assert got["frames"].dtype == np.float16 and got["frames"].shape == r["frames"].shape
        assert got["frames"].tobytes() == r["frames"].tobytes()
        assert got["words"].tolist() == r["words"].tolist()
        assert got["duration"] == r["duration"] and got["n"] == i and got["flag"] is r["flag"]
        assert got["text"] == r["text"]
        assert record_checksum(got) == store.index.entries("feat")[(f"u{i}", "fp")].checksum
    files = [p.name for p in (store.root / "feat").iterdir()]
    assert len(files) == 1 and files[0].startswith("shard-")  # no temporary file left behind
    size = (store.root / "feat" / files[0]).stat().st_size
    assert abs(sum(store.index.bytes_by_stage().values()) - size) <= len(recs)  # rows share the file's bytes


def test_array_rows_equal_rows_read_one_by_one_in_any_order(tmp_path: Path) -> None:
    """The streaming trainer's read: frames read by byte offset from a new shard, the h5py path for a
    shard whose frames are chunked and compressed (as earlier versions wrote them); with one open file
    allowed, so every switch between the two evicts the other's handle."""
    import h5py

    store, recs = _store(tmp_path, n=40)
    path = next((store.root / "feat").glob("shard-*.h5"))
    old = path.with_name("shard-chunked.h5")
    with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            src.copy(name, dst)
        del dst["frames/data"]
        dst["frames"].create_dataset("data", data=src["frames/data"][...], chunks=(300, 64), compression="lzf",
                                     shuffle=True)
    reader = ShardReader(max_open=1)
    assert isinstance(reader._column(path, "frames")[1], ContiguousArray)  # contiguous floats: plain reads
    rng = np.random.default_rng(1)
    for p in (path, old):
        for rows in ([5], [39, 0, 7, 8, 9, 8], list(rng.permutation(40)), list(rng.integers(0, 40, 12))):
            got = reader.array_rows(p, "frames", rows)
            assert [g.tobytes() for g in got] == [recs[r]["frames"].tobytes() for r in rows]
    reader.file(path)  # evicts the chunked shard's handle: its h5py dataset goes with it, the plain layout stays
    assert (path, "frames") in reader._columns and (old, "frames") not in reader._columns
    reader.close()


def test_mixed_field_sets_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShardFormatError, match="has fields"):
        write_shard(tmp_path, ["a", "b"], [{"x": 1.0}, {"y": 1.0}])
    with pytest.raises(ShardFormatError, match="trailing shape"):
        write_shard(tmp_path, ["a", "b"], [{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}])
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".tmp-*"))


def test_verify_names_truncated_and_flipped_shards(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    path = next((store.root / "feat").glob("shard-*.h5"))
    assert store.verify().ok
    data = bytearray(path.read_bytes())
    # flip bytes inside the frames data (the largest dataset, near the middle of the file)
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    report = store.verify()
    assert not report.ok and path.name in report.bad["feat"]
    assert len(store.index.entries("feat")) == 20 - len(report.bad["feat"][path.name])
    # truncated: the whole shard is unreadable, all its remaining entries are named
    store2, _ = _store(tmp_path / "b")
    p2 = next((store2.root / "feat").glob("shard-*.h5"))
    p2.write_bytes(p2.read_bytes()[:1000])
    with pytest.raises(CacheDamaged, match=r"cannot be read .*`msf cache verify --cache .*` drops its entries"):
        _read(store2, "u0")  # a read before verify (training, say) names the shard and the way out
    store2.reader.close()
    r2 = store2.verify()
    assert r2.bad["feat"][p2.name] == sorted(f"u{i}" for i in range(20))
    assert f"feat/{p2.name}" in r2.errors
    assert store2.index.entries("feat") == {}


def test_compact_and_gc(tmp_path: Path) -> None:
    store, recs = _store(tmp_path)
    # a second variant of half the rows in a second shard, and a stray temporary file
    ids = [f"u{i}" for i in range(10)]
    w = write_shard(store.root / "feat", ids, recs[:10])
    store.index.commit([Entry("feat", u, "fp2", w.name, i, c, b) for i, (u, c, b) in enumerate(zip(ids, w.checksums, w.bytes))], [])
    (store.root / "feat" / ".tmp-shard-dead.h5").write_bytes(b"partial")
    assert store.sweep() == {"files": 1, "bytes": 7}  # both real shards are still referenced
    assert store.compact(shard_size=8) == {"feat": 4}  # 30 entries: both variants are kept
    assert len(list((store.root / "feat").glob("shard-*.h5"))) == 4
    for i, r in enumerate(recs):
        assert _read(store, f"u{i}")["frames"].tobytes() == r["frames"].tobytes()
        if i < 10:
            assert _read(store, f"u{i}", "fp2")["frames"].tobytes() == r["frames"].tobytes()
    assert store.verify().ok


def test_compact_refuses_a_cache_with_a_missing_shard_before_writing(tmp_path: Path) -> None:
    from msf.pipeline.errors import CacheDamaged

    store, recs = _store(tmp_path)
    ids = [f"v{i}" for i in range(5)]
    w = write_shard(store.root / "other", ids, recs[:5])
    store.index.commit([Entry("other", u, "fp", w.name, i, c, b) for i, (u, c, b) in enumerate(zip(ids, w.checksums, w.bytes))], [])
    (store.root / "other" / w.name).unlink()
    before = sorted(p.name for p in (store.root / "feat").iterdir())
    with pytest.raises(CacheDamaged, match=rf"1 shard file\(s\) .* missing \(other/{w.name}\).*msf cache verify"):
        store.compact(shard_size=8)
    assert sorted(p.name for p in (store.root / "feat").iterdir()) == before  # nothing written or swept
    assert _read(store, "u3")["frames"].tobytes() == recs[3]["frames"].tobytes()
