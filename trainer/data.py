"""Training data from a cache: vectors (GS, LES, ES) in memory, acoustic frames streamed from the shards
in shard-aware order (or held in memory when they fit), labels and splits from the cache's corpus."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from msf.pipeline.errors import UsageError
from msf.pipeline.runner import Extraction
from msf.pipeline.shard_store import ShardReader

SOURCES = ("audio", "gs", "les", "es")
STAGE_OF = {"audio": "acoustic", "gs": "global", "les": "local", "es": "extended"}
TARGETS = ("valence", "arousal", "dominance")


@dataclass
class Batch:
    frames: np.ndarray  # B x T x D (or B x T x L x D) float32, zero-padded
    lengths: np.ndarray  # B
    vectors: dict[str, np.ndarray]  # source -> B x D
    les_mask: np.ndarray  # B bool
    labels: np.ndarray  # B x 3
    ids: list[str]


@dataclass
class Split:
    ids: list[str]
    labels: np.ndarray
    vectors: dict[str, np.ndarray]
    les_mask: np.ndarray
    frames_at: list[tuple[Path, int]]  # acoustic shard and row of each utterance
    frames: list[np.ndarray] | None = None  # held in memory
    shard_of: list[int] = field(default_factory=list)


def parse_sources(spec: str) -> tuple[str, ...]:
    sources = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise UsageError(f"--sources: unknown {bad or 'empty'}; choose from {','.join(SOURCES)}")
    if "audio" not in sources:
        raise UsageError("--sources must include audio: the text sources modulate the acoustic branch")
    return sources


class FeatureSet:
    """The utterances of a cache that have labels, a split and fresh entries for every needed stage."""

    def __init__(self, cache: Path, sources: tuple[str, ...], fold: int | None = None,
                 in_memory: bool | None = None, memory_limit_gb: float = 4.0):
        ex, _ = Extraction.from_cache(Path(cache))
        try:
            utts = ex.corpus.utterances
            if fold is not None:
                from msf.pipeline.corpora.iemocap import refold

                if not all("session" in u.extra for u in utts):
                    raise UsageError("--fold applies to IEMOCAP caches (leave-one-session-out)")
                utts = refold(utts, fold)
            stages = [STAGE_OF[s] for s in sources] + (["local"] if "les" in sources else [])
            fresh = ex.fresh(list(dict.fromkeys(stages)))
            stored = {st: ex.store.index.entries(st) for st in fresh}
            failed = {f.utt for st in fresh for f in ex.store.index.failures(st)}
            self.skipped: dict[str, int] = {}
            keep = []
            for u in utts:
                why = ("no labels" if u.labels is None else "no split" if u.split not in ("train", "dev", "test")
                       else "failed extraction" if u.id in failed
                       else "stale: extracted with other settings; rerun msf extract"
                       if any(u.id not in fresh[st] and u.id in stored[st] for st in fresh)
                       else "not extracted" if any(u.id not in fresh[st] for st in fresh) else None)
                if why:
                    self.skipped[why] = self.skipped.get(why, 0) + 1
                else:
                    keep.append(u)
            self.root = ex.root
            self.sources = sources
            vectors = {s: dict(ex.store.iter_rows(STAGE_OF[s], [u.id for u in keep])) for s in sources if s != "audio"}
            acoustic = fresh["acoustic"]
            self.splits: dict[str, Split] = {}
            for name in ("train", "dev", "test"):
                us = [u for u in keep if u.split == name]
                shards = sorted({acoustic[u.id].shard for u in us})
                self.splits[name] = Split(
                    ids=[u.id for u in us],
                    labels=np.array([u.labels for u in us], np.float32).reshape(-1, 3),
                    vectors={s: np.stack([v[u.id]["embedding"] for u in us]).astype(np.float32) if us else
                             np.zeros((0, 1), np.float32) for s, v in vectors.items()},
                    les_mask=np.array([bool(vectors["les"][u.id]["mask"]) for u in us] if "les" in vectors
                                      else [True] * len(us), bool),
                    frames_at=[(ex.store.shard_path("acoustic", acoustic[u.id].shard), acoustic[u.id].row) for u in us],
                    shard_of=[shards.index(acoustic[u.id].shard) for u in us],
                )
        finally:
            ex.close()
        for name in ("train", "dev"):
            if not self.splits[name].ids:
                raise UsageError(f"no usable {name} utterances in {cache} (skipped: {self.skipped or 'none'})")
        first = self._read(*self.splits["train"].frames_at[0])
        self.frame_shape = first.shape[1:]
        self.vector_dims = {s: v.shape[1] for s, v in self.splits["train"].vectors.items()}
        total = sum(len(s.ids) for s in self.splits.values())
        est_gb = total * first.nbytes * 4 / 1e9  # float16 -> float32, plus length variation
        if in_memory if in_memory is not None else est_gb < memory_limit_gb:
            for s in self.splits.values():
                s.frames = [self._read(p, r) for p, r in s.frames_at]

    _reader = ShardReader()

    @classmethod
    def _read(cls, path: Path, row: int) -> np.ndarray:
        return np.asarray(cls._reader.row(path, row)["frames"], dtype=np.float32)

    def batches(self, split: str, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None,
                prefetch: int = 4) -> Iterator[Batch]:
        """Batches in shard-aware order: shards in random order, rows shuffled within a shard, so
        streaming reads stay sequential per file. A thread reads ahead while the model trains."""
        s = self.splits[split]
        order = np.arange(len(s.ids))
        if shuffle:
            assert rng is not None
            shard_rank = rng.permutation(max(s.shard_of, default=-1) + 1)
            order = sorted(rng.permutation(len(s.ids)), key=lambda i: shard_rank[s.shard_of[i]])
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        q: queue.Queue = queue.Queue(maxsize=prefetch)

        def produce() -> None:
            try:
                for g in groups:
                    q.put(self._batch(s, list(g)))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)
            q.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _batch(self, s: Split, idx: list[int]) -> Batch:
        frames = [s.frames[i] if s.frames is not None else self._read(*s.frames_at[i]) for i in idx]
        return make_batch(frames, {k: v[idx] for k, v in s.vectors.items()}, s.les_mask[idx], s.labels[idx],
                          [s.ids[i] for i in idx])


def make_batch(frames: list[np.ndarray], vectors: dict[str, np.ndarray], les_mask: np.ndarray,
               labels: np.ndarray, ids: list[str]) -> Batch:
    lengths = np.array([len(f) for f in frames])
    out = np.zeros((len(frames), lengths.max(), *frames[0].shape[1:]), np.float32)
    for b, f in enumerate(frames):
        out[b, : len(f)] = f
    return Batch(out, lengths, vectors, les_mask, labels, ids)
