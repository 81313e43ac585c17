"""One array field of a list of utterances, read by position without the index: what the trainer's
read-ahead thread, a DataLoader worker and `msf export` hold."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from msf.pipeline.cache.shard_store import ShardReader


class ArrayColumn:
    """An array field (e.g. `acoustic.frames`) of utterances at (shard, row). A read groups its rows by
    shard; `select` keeps entries of the second axis (hidden-state layers) as the file is read, so the
    other layers are not read from disk (a contiguous shard is memory-mapped); `spans` reads a window
    of frames of each row only. The reader is per process: a forked worker opens its own files."""

    def __init__(self, at: list[tuple[Path, int]], field: str, select: list[int] | None = None,
                 squeeze: bool = False):
        self.at, self.field, self.select, self.squeeze = at, field, select, squeeze
        self._readers: dict[int, ShardReader] = {}

    def __len__(self) -> int:
        return len(self.at)

    @property
    def reader(self) -> ShardReader:
        pid = os.getpid()
        if pid not in self._readers:
            self._readers = {pid: ShardReader()}
        return self._readers[pid]

    def _by_shard(self, positions: Sequence[int]) -> dict[Path, list[int]]:
        by_shard: dict[Path, list[int]] = defaultdict(list)
        for k in positions:
            by_shard[self.at[k][0]].append(k)
        return by_shard

    def read(self, positions: Sequence[int], spans: Sequence[tuple[int, int | None]] | None = None,
             raw: bool = False) -> list[np.ndarray]:
        """The arrays at these positions, in their order, as stored (float16 frames stay float16;
        one-byte frames come back as float32, or as stored with `raw`: the trainer's batches scale them
        as they pad them); `spans`: per position, the (start, stop) frames to read (stop None: to the end)."""
        positions = list(positions)
        out: dict[int, np.ndarray] = {}
        by_shard: dict[Path, list[int]] = defaultdict(list)  # indices into `positions` (one may repeat)
        for i, k in enumerate(positions):
            by_shard[self.at[k][0]].append(i)
        for path, idx in by_shard.items():
            rows = [self.at[positions[i]][1] for i in idx]
            got = self.reader.array_rows(path, self.field, rows, self.select,
                                         [spans[i] for i in idx] if spans is not None else None, raw)
            out.update(zip(idx, got))
        got = [out[i] for i in range(len(positions))]
        return [a[:, 0] for a in got] if self.squeeze else got

    def lengths(self, positions: Sequence[int] | None = None) -> np.ndarray:
        """The first dimension (frames) of each array, from the shards' offsets alone."""
        positions = range(len(self.at)) if positions is None else positions
        out = np.zeros(len(positions), np.int64)
        index = {k: i for i, k in enumerate(positions)}
        for path, ks in self._by_shard(positions).items():
            out[[index[k] for k in ks]] = self.reader.array_lengths(path, self.field, [self.at[k][1] for k in ks])
        return out

    def subset(self, positions: Sequence[int]) -> "ArrayColumn":
        return ArrayColumn([self.at[k] for k in positions], self.field, self.select, self.squeeze)
