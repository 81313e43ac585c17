"""Caches and checkpoints hold plain data: no pickles anywhere a user loads from."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import h5py
import torch

from msf.trainer.train import TrainConfig, train


def test_shards_index_and_checkpoints_hold_no_pickles(demo_features: Path, tmp_path: Path) -> None:
    datasets = 0
    for shard in demo_features.rglob("shard-*.h5"):
        with h5py.File(shard, "r", locking=False) as f:  # this process may hold it open (in-process extraction)
            def check(name: str, obj: object) -> None:
                nonlocal datasets
                if isinstance(obj, h5py.Dataset):
                    datasets += 1
                    assert obj.dtype.kind in "fiub" or h5py.check_string_dtype(obj.dtype), (shard, name, obj.dtype)
            f.visititems(check)
    assert datasets > 50
    for db in [demo_features / "index.sqlite", *demo_features.rglob("answers.sqlite")]:
        con = sqlite3.connect(db)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            types: set[str] = set()
            for col in con.execute(f"PRAGMA table_info({table})").fetchall():
                types |= {t for (t,) in con.execute(f"SELECT DISTINCT typeof({col[1]}) FROM {table}")}
            assert "blob" not in types, (db, table)
        con.close()
    train(TrainConfig(features=demo_features, sources="audio", epochs=1, hidden=32), tmp_path / "run", progress=False)
    for ck in (tmp_path / "run").glob("*.pt"):
        torch.load(ck, weights_only=True)  # refuses anything but tensors and plain containers
