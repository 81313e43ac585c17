"""Training data from a cache: vectors (GS, LES, ES) in memory, acoustic frames held in memory when they
fit or streamed from the shards, labels and splits from the cache's recorded manifest rows (or from a
newer manifest). The training order depends on the seed, the epoch and the utterance ids only, never on
how the cache happens to be sharded."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from msf.pipeline.cache_index import Entry
from msf.pipeline.cache_view import CacheView
from msf.pipeline.corpus import Utterance, load_corpus
from msf.pipeline.errors import UsageError
from msf.pipeline.fingerprint import canonical_json, digest
from msf.pipeline.shard_store import ShardReader
from msf.pipeline.speaker_baseline import (ANY_GENDER, FrameStats, PopulationBaseline, RunBaseline, baseline_groups,
                                           gender_of, measures, population_key, prosody_vector)

SOURCES = ("audio", "gs", "les", "es", "prosody")
STAGE_OF = {"audio": "acoustic", "gs": "global", "les": "local", "es": "extended", "prosody": "emphasis"}
TARGETS = ("valence", "arousal", "dominance")
TORCH_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller element-wise ops run on the calling thread


def source_vector(source: str, record: dict, gender: str = ANY_GENDER,
                  population: PopulationBaseline | None = None) -> np.ndarray:
    """The vector a source feeds the model: a text embedding, or for `prosody` the utterance's median
    pitch (semitones), loudness (dB) and log speaking rate, relative to its speaker or, without a
    speaker baseline, to the training population's (pipeline/speaker_baseline.py)."""
    if source == "prosody":
        return prosody_vector(record, gender, population)
    return np.asarray(record["embedding"], np.float32)


@dataclass
class Batch:
    frames: np.ndarray  # B x T x D (or B x T x L x D), zero-padded; float32, or float16 as stored for a GPU
    lengths: np.ndarray  # B
    vectors: dict[str, np.ndarray]  # source -> B x D
    les_mask: np.ndarray  # B bool
    labels: np.ndarray  # B x 3
    ids: list[str]


@dataclass
class Split:
    ids: list[str]  # sorted: every array below follows this order
    labels: np.ndarray
    vectors: dict[str, np.ndarray]
    les_mask: np.ndarray
    frames_at: list[tuple[Path, int]]  # acoustic shard and row of each utterance
    frames: list[np.ndarray] | None = None  # held in memory
    speakers: list[str] | None = None  # the speaker group of each utterance (speaker standardisation)
    genders: list[str] | None = None  # the corpus's gender of each utterance, ANY_GENDER where unknown
    lengths: np.ndarray | None = None  # frames per utterance, read when first needed (`FeatureSet.lengths`)


def parse_sources(spec: str) -> tuple[str, ...]:
    sources = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise UsageError(f"--sources: unknown {bad or 'empty'}; choose from {','.join(SOURCES)}")
    if len(set(sources)) != len(sources):
        raise UsageError(f"--sources: {spec!r} names a source twice")
    if "audio" not in sources:
        raise UsageError("--sources must include audio: the text sources modulate the acoustic branch")
    return sources


def epoch_order(ids: list[str], seed: int, epoch: int) -> np.ndarray:
    """Positions into `ids` (sorted) in the order an epoch visits them: a permutation drawn from
    (seed, epoch) alone, so the same features in any shard layout train identically."""
    return np.random.default_rng([seed, epoch]).permutation(len(ids))


BUCKET_BATCHES = 20  # a bucket: this many batches' worth of the epoch's order, sorted by length


def batch_groups(order: np.ndarray, batch_size: int, training: bool, lengths: np.ndarray | None = None,
                 max_frames: int = 0, bucket: bool = False, seed: int = 0, epoch: int = 0) -> list[np.ndarray]:
    """Batches of positions, in `order`: at most `batch_size` each and, with `max_frames` (and the
    `lengths` in frames), at most that many padded frames (count x longest), so one long turn does
    not make a batch of 32 of its length; a single utterance longer than that is a batch alone.

    `bucket` (training): the epoch's order is cut into buckets of BUCKET_BATCHES batches, each sorted
    by length, so a batch holds similar lengths (little padding), and the batches are then shuffled;
    all of it drawn from (seed, epoch) and the ids' order and lengths alone, never the shard layout.

    In training a last batch of one utterance joins the batch before it: the prosody projection's
    BatchNorm and the CCC loss are statistics over the batch, and one utterance has none
    (N_train = 1 mod the batch size stopped training)."""
    if training and bucket and lengths is not None:
        window = batch_size * BUCKET_BATCHES
        order = np.concatenate([sorted(order[i : i + window], key=lambda k: lengths[k])
                                for i in range(0, len(order), window)] or [order]).astype(order.dtype)
    groups: list[list[int]] = [[]]
    longest = 0
    for k in order:
        n = int(lengths[k]) if lengths is not None else 0
        if groups[-1] and (len(groups[-1]) >= batch_size or (max_frames and max(longest, n) * (len(groups[-1]) + 1) > max_frames)):
            groups.append([])
            longest = 0
        groups[-1].append(int(k))
        longest = max(longest, n)
    if training and len(groups) > 1 and len(groups[-1]) == 1:
        groups[-2:] = [groups[-2] + groups[-1]]
    out = [np.asarray(g, dtype=order.dtype) for g in groups if g]
    if training and bucket:
        out = [out[i] for i in np.random.default_rng([seed, epoch, 1]).permutation(len(out))]
    return out


def with_labels_from(utts: list[Utterance], spec: str) -> tuple[list[Utterance], set[str], int]:
    """Labels and splits from a newer manifest, matched by id: the utterances, the ids it lacks, and
    how many of its rows match no cached utterance."""
    rows = {u.id: u for u in load_corpus(spec, check_audio=False).utterances}
    out = [replace(u, valence=r.valence, arousal=r.arousal, dominance=r.dominance, split=r.split)
           if (r := rows.get(u.id)) is not None else u for u in utts]
    cached = {u.id for u in utts}
    return out, cached - set(rows), sum(i not in cached for i in rows)


def scored_splits(splits: dict[str, "Split"]) -> list[str]:
    """The splits a run is scored on: all but train that hold utterances, dev and test first."""
    return [name for name, s in splits.items() if name != "train" and s.ids]


def _skip_reason(why: str) -> str:
    if why.startswith("failed"):
        return "failed extraction"
    if why in ("new utterance", "not extracted yet"):
        return "not extracted"
    return f"stale ({why}): rerun msf extract"


class FeatureSet:
    """The utterances of a named feature set that have labels, a split and fresh entries for every
    needed stage. `splits` holds train, dev, test and every other split the labelled utterances name."""

    def __init__(self, cache: Path, sources: tuple[str, ...], fold: int | None = None, name: str = "default",
                 labels: str | None = None, in_memory: bool | None = None, memory_limit_gb: float = 4.0,
                 speaker_norm: bool = False):
        view = CacheView(Path(cache), name)
        try:
            utts = view.utterances
            unlabelled: set[str] = set()
            self.unmatched_label_rows = 0  # rows of the label manifest that match no cached utterance
            if labels:
                utts, unlabelled, self.unmatched_label_rows = with_labels_from(utts, labels)
            if fold is not None:
                from msf.pipeline.corpora.iemocap import refold

                if not all("session" in u.extra for u in utts):
                    raise UsageError("--fold applies to IEMOCAP caches (leave-one-session-out)")
                utts = refold(utts, fold)
            stages = list(dict.fromkeys([STAGE_OF[s] for s in sources] + (["local"] if "les" in sources else [])))
            fresh = view.fresh(stages)
            why = {st: view.why_not_fresh(st) for st in stages}
            self.skipped: dict[str, int] = {}
            keep: list[Utterance] = []
            for u in sorted(utts, key=lambda u: u.id):
                reason = ("not in the label manifest" if u.id in unlabelled else "no labels" if u.labels is None
                          else "no split" if not u.split
                          else next((_skip_reason(why[st][u.id]) for st in stages if u.id not in fresh[st]), None))
                if reason:
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
                else:
                    keep.append(u)
            self.root, self.sources, self.name = view.root, sources, name
            # the settings the features were extracted with: `msf predict` runs new audio through them
            self.extraction = view.config.model_dump_json(exclude={"cache"})
            self._identity = {u.id: (u.split, u.labels, {st: fresh[st][u.id].fingerprint for st in stages})
                              for u in keep}
            records = {st: _records(view, [fresh[st][u.id] for u in keep]) for st in stages if st != "acoustic"}
            # The population an utterance without a speaker baseline is relative to: the training split's.
            self.population = PopulationBaseline.fit(
                (gender_of(u.extra), *measures(records["emphasis"][u.id])) for u in keep if u.split == "train"
            ) if "prosody" in sources else None
            acoustic = fresh["acoustic"]
            self.splits: dict[str, Split] = {}
            # train and dev, then every other labelled split the corpus names (test, MSP-Podcast's test2, ...)
            for split in ["train", "dev", "test", *sorted({u.split for u in keep} - {"train", "dev", "test"})]:
                us = [u for u in keep if u.split == split]
                self.splits[split] = Split(
                    ids=[u.id for u in us],
                    labels=np.array([u.labels for u in us], np.float32).reshape(-1, 3),
                    vectors={s: np.stack([source_vector(s, records[STAGE_OF[s]][u.id], gender_of(u.extra),
                                                        self.population) for u in us])
                             if us else np.zeros((0, 1), np.float32) for s in sources if s != "audio"},
                    les_mask=np.array([bool(records["local"][u.id]["mask"]) for u in us] if "les" in sources
                                      else [True] * len(us), bool),
                    frames_at=[(view.store.shard_path("acoustic", acoustic[u.id].shard), acoustic[u.id].row)
                               for u in us],
                    speakers=[u.group_key("speaker") for u in us],
                    genders=[gender_of(u.extra) for u in us],
                )
        finally:
            view.close()
        for split in ("train", "dev"):
            if not self.splits[split].ids:
                raise UsageError(f"no usable {split} utterances in feature set {name!r} of {cache} "
                                 f"(skipped: {self.skipped or 'none'})")
        if len(self.splits["train"].ids) == 1:  # the CCC loss and BatchNorm are statistics over a batch
            raise UsageError(f"one usable train utterance in feature set {name!r} of {cache}: training needs "
                             f"at least two (skipped: {self.skipped or 'none'})")
        first = self._read(*self.splits["train"].frames_at[0])
        self.frame_shape = first.shape[1:]
        self.vector_dims = {s: v.shape[1] for s, v in self.splits["train"].vectors.items()}
        total = sum(len(s.ids) for s in self.splits.values())
        est_gb = total * first.nbytes * 8 / 1e9  # float16 -> float32, plus length variation
        if in_memory if in_memory is not None else est_gb < memory_limit_gb:
            for s in self.splits.values():
                s.frames = [f.astype(np.float32) for f in self._read_frames(s.frames_at)]  # cast once
        self.speaker_stats = self._speaker_stats() if speaker_norm else None

    def _speaker_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per speaker group with a baseline of its own (pipeline/speaker_baseline.py), the mean and sd of
        each acoustic dimension over all of the speaker's frames (no labels used, so test speakers are
        standardised by their own audio, the usual practice in SER); per gender, the training split's
        (the population, for every other utterance). Streamed caches are read once more for this."""
        own = baseline_groups(spk for s in self.splits.values() for spk in s.speakers)  # type: ignore[union-attr]
        acc = FrameStats()
        for name, s in self.splits.items():
            for k in range(0, len(s.ids), 64):
                frames = s.frames[k : k + 64] if s.frames is not None else self._read_frames(s.frames_at[k : k + 64])
                for spk, g, f in zip(s.speakers[k : k + 64], s.genders[k : k + 64], frames):  # type: ignore[index]
                    if own[spk]:
                        acc.add(spk, f)
                    if name == "train":
                        acc.add(population_key(ANY_GENDER), f)
                        if g != ANY_GENDER:
                            acc.add(population_key(g), f)
        stats = acc.finish()
        for s in self.splits.values():  # every utterance's key: its own group's, or its gender's population
            s.speakers = [spk if own[spk] else population_key(g if population_key(g) in stats else ANY_GENDER)
                          for spk, g in zip(s.speakers, s.genders)]  # type: ignore[arg-type]
        return stats

    def baseline(self) -> RunBaseline:
        """What a run keeps for new audio without a speaker baseline: the population's prosody reference
        and frame statistics."""
        frames = ({k: v for k, v in self.speaker_stats.items() if k.startswith(population_key(""))}
                  if self.speaker_stats else None)
        return RunBaseline(self.population, frames)

    def digest(self, sources: tuple[str, ...]) -> str:
        """What a run trains and is evaluated on: ids, splits, labels and the fingerprints of the
        features the sources use. Equal digests, equal data."""
        stages = {STAGE_OF[s] for s in sources} | ({"local"} if "les" in sources else set())
        return digest(canonical_json([(u, split, labels, {st: fp for st, fp in fps.items() if st in stages})
                                      for u, (split, labels, fps) in sorted(self._identity.items())]))

    _reader = ShardReader()
    speaker_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # speaker -> (mean, sd) of the frames

    @classmethod
    def _read(cls, path: Path, row: int) -> np.ndarray:
        return cls._read_frames([(path, row)])[0]

    @classmethod
    def _read_frames(cls, at: list[tuple[Path, int]]) -> list[np.ndarray]:
        """Frames of several utterances in the order given, as stored (float16), one read per shard;
        `make_batch` casts them as it pads (or, for a GPU, the device does)."""
        by_shard: dict[Path, list[int]] = defaultdict(list)
        for k, (path, _) in enumerate(at):
            by_shard[path].append(k)
        out: list[np.ndarray | None] = [None] * len(at)
        for path, ks in by_shard.items():
            for k, f in zip(ks, cls._reader.array_rows(path, "frames", [at[k][1] for k in ks])):
                out[k] = f
        return out  # type: ignore[return-value]

    def batches(self, split: str, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                prefetch: int = 4, max_frames: int = 0, bucket: bool = False, cast: bool = True) -> Iterator[Batch]:
        """Batches in the order `epoch_order` gives (sorted ids when not shuffled), cut as
        `batch_groups` says. A thread reads the next batches while the model trains; a batch's rows are
        read grouped by shard."""
        s = self.splits[split]
        order = epoch_order(s.ids, seed, epoch) if shuffle else np.arange(len(s.ids))
        lengths = self.lengths(split) if max_frames or (bucket and shuffle) else None
        groups = batch_groups(order, batch_size, training=shuffle, lengths=lengths, max_frames=max_frames,
                              bucket=bucket, seed=seed, epoch=epoch)
        q: queue.Queue = queue.Queue(maxsize=prefetch)

        def produce() -> None:
            try:
                for g in groups:
                    q.put(self._batch(s, list(g), cast))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)
            q.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def lengths(self, split: str) -> np.ndarray:
        """Frames per utterance of a split, from the frames held in memory or the shards' offsets."""
        s = self.splits[split]
        if s.lengths is None:
            s.lengths = (np.array([len(f) for f in s.frames], np.int64) if s.frames is not None
                         else self._frame_counts(s.frames_at))
        return s.lengths

    @classmethod
    def _frame_counts(cls, at: list[tuple[Path, int]]) -> np.ndarray:
        by_shard: dict[Path, list[int]] = defaultdict(list)
        for k, (path, _) in enumerate(at):
            by_shard[path].append(k)
        out = np.zeros(len(at), np.int64)
        for path, ks in by_shard.items():
            out[ks] = cls._reader.array_lengths(path, "frames", [at[k][1] for k in ks])
        return out

    def _batch(self, s: Split, idx: list[int], cast: bool = True) -> Batch:
        if s.frames is not None:
            frames = [s.frames[i] for i in idx]
        else:
            frames = self._read_frames([s.frames_at[i] for i in idx])
        if self.speaker_stats is not None:
            stats = [self.speaker_stats[s.speakers[i]] for i in idx]  # type: ignore[index]
            frames = [(f - mean) / sd for f, (mean, sd) in zip(frames, stats)]
        return make_batch(frames, {k: v[idx] for k, v in s.vectors.items()}, s.les_mask[idx], s.labels[idx],
                          [s.ids[i] for i in idx], cast)


def _records(view: CacheView, entries: list[Entry]) -> dict[str, dict]:
    """utterance -> record, reading each shard once."""
    by_shard: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_shard[e.shard].append(e)
    out: dict[str, dict] = {}
    for shard, es in by_shard.items():
        rows = view.store.reader.rows(view.store.shard_path(es[0].stage, shard), [e.row for e in es])
        out.update({e.utt: r for e, r in zip(es, rows)})
    return out


def make_batch(frames: list[np.ndarray], vectors: dict[str, np.ndarray], les_mask: np.ndarray,
               labels: np.ndarray, ids: list[str], cast: bool = True) -> Batch:
    """The frames padded into one array. `cast` (training on the CPU): float32, cast by torch as it pads,
    in pieces under torch's parallel grain so the copy stays on the calling (read-ahead) thread and
    never wakes the intra-op threads the training step is using (numpy's float16 cast is not
    vectorised; whole-utterance copies made epochs slower). Otherwise (a GPU): as stored, float16,
    half the bytes to pad and to move, cast on the device by `to_tensors`. On a CPU the two ways cost
    the same (32 ten-second utterances x 25 x 1024: 0.545 s and 0.551 s, bench/train.py --only
    batch25), and the first runs on the read-ahead thread, beside the training step."""
    lengths = np.array([len(f) for f in frames])
    out = np.zeros((len(frames), lengths.max(), *frames[0].shape[1:]), np.float32 if cast else np.result_type(*frames))
    if not cast:
        for b, f in enumerate(frames):
            out[b, : len(f)] = f
        return Batch(out, lengths, vectors, les_mask, labels, ids)
    dst = torch.from_numpy(out)
    step = max(1, TORCH_GRAIN // max(1, int(np.prod(out.shape[2:]))))  # frames per piece
    for b, f in enumerate(frames):
        src = torch.from_numpy(f)
        for i in range(0, len(f), step):
            j = min(i + step, len(f))
            dst[b, i:j] = src[i:j]
    return Batch(out, lengths, vectors, les_mask, labels, ids)
