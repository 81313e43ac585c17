"""Training data from a cache: vectors (GS, LES, ES) in memory, acoustic frames held in memory when they
fit or streamed from the shards, labels and splits from the cache's recorded manifest rows (or from a
newer manifest). The training order depends on the seed, the epoch and the utterance ids only, never on
how the cache happens to be sharded."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.cache.fingerprint import canonical_json, digest
from msf.pipeline.cache.view import NEW_UTTERANCE, NOT_EXTRACTED, CacheView
from msf.pipeline.corpus import TARGETS, Utterance, load_corpus
from msf.pipeline.errors import UsageError
from msf.pipeline.quantized import decoded, is_quantized
from msf.pipeline.speaker_baseline import (ANY_GENDER, PopulationBaseline, RunBaseline, frame_baselines,
                                           gender_of, measures, population_key, prosody_vector)

# The one table from the model's sources to the cache's declared fields (`stage.field`); the first
# field's stage is the source's stage. Opening a feature set checks every name here against the fields
# its stages declare, so a renamed field is an error at open, not a KeyError in an epoch.
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "audio": ("acoustic.frames",),
    "gs": ("global.embedding",),
    "les": ("local.embedding", "local.mask"),
    "es": ("extended.embedding",),
    "prosody": ("emphasis.pitch_st", "emphasis.loudness_db", "emphasis.rate_ratio", "emphasis.speaker_baseline",
                "emphasis.f0_median_hz", "emphasis.loudness_abs_db", "emphasis.rate_syl_s"),
}
SOURCES = tuple(SOURCE_FIELDS)
STAGE_OF = {s: fields[0].split(".", 1)[0] for s, fields in SOURCE_FIELDS.items()}
TORCH_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller element-wise ops run on the calling thread


def source_vector(source: str, record: dict, gender: str = ANY_GENDER,
                  population: PopulationBaseline | None = None) -> np.ndarray:
    """The vector a source feeds the model: a text embedding, or for `prosody` the utterance's median
    pitch (semitones), loudness (dB) and log speaking rate, relative to its speaker or, without a
    speaker baseline, to the training population's (pipeline/speaker_baseline.py)."""
    if source == "prosody":
        return prosody_vector(record, gender, population)
    return np.asarray(record[SOURCE_FIELDS[source][0].split(".", 1)[1]], np.float32)


def source_present(source: str, record: dict | None) -> bool:
    """Whether a source takes part for an utterance: its stage has a record (a text-side stage that
    failed is masked, never the utterance dropped) and, for LES, a word was stressed."""
    return record is not None and (source != "les" or bool(record["mask"]))


def source_matrix(source: str, utts: list[Utterance], records: dict[str, dict],
                  population: PopulationBaseline | None) -> np.ndarray:
    """B x D vectors of one source, zeros where its stage has no record for an utterance (masked)."""
    width = next((len(source_vector(source, r, ANY_GENDER, population)) for r in records.values()), 1)
    return np.stack([source_vector(source, records[u.id], gender_of(u.extra), population) if u.id in records
                     else np.zeros(width, np.float32) for u in utts]) if utts else np.zeros((0, width), np.float32)


@dataclass
class Batch:
    frames: np.ndarray  # B x T x D (or B x T x L x D), zero-padded; float32, or float16 as stored for a GPU
    lengths: np.ndarray  # B
    vectors: dict[str, np.ndarray]  # source -> B x D
    masks: dict[str, np.ndarray]  # source -> B bool: whether it takes part (False: zeros, left out)
    labels: np.ndarray  # B x 3
    ids: list[str]


@dataclass
class Split:
    ids: list[str]  # sorted: every array below follows this order
    labels: np.ndarray
    vectors: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]  # source -> whether it takes part, per utterance
    column: ArrayColumn  # the utterances' acoustic frames in the cache (any object with read/lengths)
    frames: list[np.ndarray] | None = None  # held in memory
    # the speaker group of each utterance; after speaker standardisation's statistics, the key of the
    # statistics it is standardised by (its group's, or its gender's population)
    speakers: list[str] | None = None
    genders: list[str] | None = None  # the corpus's gender of each utterance, ANY_GENDER where unknown
    speaker_ids: list[str] | None = None  # the speaker as the corpus names it ("" or "Unknown" included)
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
    out = [replace(u, targets=r.targets, split=r.split)
           if (r := rows.get(u.id)) is not None else u for u in utts]
    cached = {u.id for u in utts}
    return out, cached - set(rows), sum(i not in cached for i in rows)


def scored_splits(splits: dict[str, "Split"]) -> list[str]:
    """The splits a run is scored on: all but train that hold utterances, dev and test first."""
    return [name for name, s in splits.items() if name != "train" and s.ids]


def _skip_reason(why: str, failed: bool) -> str:
    if failed:
        return "failed extraction"
    if why in (NEW_UTTERANCE, NOT_EXTRACTED):
        return "not extracted"
    return f"stale ({why}): rerun msf extract"


def crop_frames(view: CacheView, ids: list[str], max_seconds: float | None) -> int | None:
    """`max_seconds` in frames of the cached acoustic features (their `frame_rate`); None: no window."""
    return view.frames_in(max_seconds, "acoustic", ids) if max_seconds else None


def evaluation_windows(frames: int, crop: int | None) -> list[tuple[int, int]]:
    """How an utterance is evaluated (and predicted): whole ((0, -1)) when it has at most `crop` frames,
    else ceil(frames / crop) windows of equal length tiling it, whose predictions are averaged."""
    if crop is None or frames <= crop:
        return [(0, -1)]
    w = -(-frames // crop)
    bounds = [round(i * frames / w) for i in range(w + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(w)]


class FeatureSet:
    """The utterances of a named feature set that have labels, a split and acoustic features, read
    through the public read API (`CacheView`). A text-side source whose stage failed for an utterance is
    masked for it (as LES is without a stressed word), so every variant is scored on the same
    utterances; what is dropped (no labels, no split, no acoustic features, features not extracted
    yet) is listed in `dropped` with its reason. `splits` holds train, dev, test and every other split
    the labelled utterances name. `layers`: the hidden states of the cached frames to train on."""

    def __init__(self, cache: Path, sources: tuple[str, ...], fold: int | None = None, name: str = "default",
                 labels: str | None = None, in_memory: bool | None = None, memory_limit_gb: float = 4.0,
                 speaker_norm: bool = False, layers: list[int] | None = None, fold_dev: str = "speaker",
                 run_baseline: RunBaseline | None = None, max_seconds: float | None = None):
        """`max_seconds`: utterances longer than this train on a random window of it, drawn per epoch, and
        are evaluated window by window, their predictions averaged (`batches`).
        `run_baseline` (prediction with a trained run, `msf predict --features`): utterances without
        labels are kept (labels NaN), no split is required, and utterances without a speaker baseline
        are put against the run's training population rather than this cache's train split."""
        predicting = run_baseline is not None
        with CacheView.open(Path(cache), name) as view:
            view.require_fields(f for s in sources for f in SOURCE_FIELDS[s])
            utts = view.utterances
            unlabelled: set[str] = set()
            self.unmatched_label_rows = 0  # rows of the label manifest that match no cached utterance
            if labels:
                utts, unlabelled, self.unmatched_label_rows = with_labels_from(utts, labels)
            if fold is not None:
                from msf.pipeline.corpora.iemocap import refold

                if not all("session" in u.extra for u in utts):
                    raise UsageError("--fold applies to IEMOCAP caches (leave-one-session-out)")
                utts = refold(utts, fold, fold_dev)
            stages = list(dict.fromkeys(STAGE_OF[s] for s in sources))
            fresh = view.fresh(stages)
            keep = self._select(view, utts, stages, fresh, unlabelled, predicting)
            self.root, self.sources, self.name, self.layers = view.root, sources, name, layers
            # the settings the features were extracted with: `msf predict` runs new audio through them
            self.extraction = view.settings.model_dump_json(exclude={"cache"})
            self._identity = {u.id: (u.split, u.labels, {st: fresh[st][u.id].fingerprint for st in stages
                                                         if u.id in fresh[st]}) for u in keep}
            ids = [u.id for u in keep]
            records = {st: view.records(st, ids) for st in stages if st != "acoustic"}
            # The population an utterance without a speaker baseline is relative to: the training split's.
            self.population = run_baseline.population if predicting else PopulationBaseline.fit(
                (gender_of(u.extra), *measures(records["emphasis"][u.id]))
                for u in keep if u.split == "train" and u.id in records["emphasis"]
            ) if "prosody" in sources else None
            self.crop = crop_frames(view, ids, max_seconds)
            self.masked = {s: sum(u not in records[STAGE_OF[s]] for u in ids) for s in sources if s != "audio"}
            self.splits = self._splits(keep, records, view.column(SOURCE_FIELDS["audio"][0], ids, layers))
        self._require_usable(predicting, name, cache)
        some = next(s for s in self.splits.values() if s.ids)
        first = some.column.read([0])[0]
        self.frame_shape = first.shape[1:]
        self.vector_dims = {s: v.shape[1] for s, v in some.vectors.items()}
        total = sum(len(s.ids) for s in self.splits.values())
        est_gb = total * first.size * 16 / 1e9  # as float32 (4 bytes), times 4 for length variation
        if in_memory if in_memory is not None else est_gb < memory_limit_gb:
            for s in self.splits.values():
                s.frames = [f.astype(np.float32) for f in s.column.read(range(len(s.ids)))]  # cast once
        self.speaker_stats = self._speaker_stats(run_baseline) if speaker_norm else None

    def _select(self, view: CacheView, utts: list[Utterance], stages: list[str], fresh: dict[str, dict],
                unlabelled: set[str], predicting: bool) -> list[Utterance]:
        """The utterances to use, by id; every other one in `dropped` with its reason. A text-side
        stage that failed for an utterance masks its source; a missing acoustic entry drops it."""
        # the reasons (a pass over the index per stage) only for stages with something not fresh
        why = {st: view.why_not_fresh(st) for st in stages if any(u.id not in fresh[st] for u in utts)}
        failures = view.failures() if why else []
        failed = {st: {f.utt for f in failures if f.stage == st} for st in why}
        self.dropped: list[tuple[str, str, str]] = []  # (id, split, reason)
        keep: list[Utterance] = []
        for u in sorted(utts, key=lambda u: u.id):
            reason = ("not in the label manifest" if u.id in unlabelled
                      else "no labels" if u.labels is None and not predicting
                      else "no split" if not u.split
                      else next((_skip_reason(why[st][u.id], u.id in failed[st]) for st in stages
                                 if u.id not in fresh[st] and (st == "acoustic" or u.id not in failed[st])), None))
            if reason:
                self.dropped.append((u.id, u.split, reason))
            else:
                keep.append(u)
        return keep

    def _splits(self, keep: list[Utterance], records: dict[str, dict], frames: ArrayColumn) -> dict[str, "Split"]:
        """train and dev, then every other labelled split the corpus names (test, MSP-Podcast's test2, ...)."""
        position = {u.id: k for k, u in enumerate(keep)}
        text = [s for s in self.sources if s != "audio"]
        splits: dict[str, Split] = {}
        for split in ["train", "dev", "test", *sorted({u.split for u in keep} - {"train", "dev", "test"})]:
            us = [u for u in keep if u.split == split]
            splits[split] = Split(
                ids=[u.id for u in us],
                labels=np.array([u.labels or (np.nan,) * len(TARGETS) for u in us],
                                np.float32).reshape(-1, len(TARGETS)),
                vectors={s: source_matrix(s, us, records[STAGE_OF[s]], self.population) for s in text},
                masks={s: np.array([source_present(s, records[STAGE_OF[s]].get(u.id)) for u in us], bool)
                       for s in text},
                column=frames.subset([position[u.id] for u in us]),
                speakers=[u.group_key("speaker") for u in us],
                genders=[gender_of(u.extra) for u in us],
                speaker_ids=[u.speaker for u in us],
            )
        return splits

    def _require_usable(self, predicting: bool, name: str, cache: Path) -> None:
        for split in () if predicting else ("train", "dev"):
            if not self.splits[split].ids:
                raise UsageError(f"no usable {split} utterances in feature set {name!r} of {cache} "
                                 f"(dropped: {self.skipped or 'none'})")
        if not predicting and len(self.splits["train"].ids) == 1:  # the CCC loss and BatchNorm: batch statistics
            raise UsageError(f"one usable train utterance in feature set {name!r} of {cache}: training needs "
                             f"at least two (dropped: {self.skipped or 'none'})")
        if not any(s.ids for s in self.splits.values()):
            raise UsageError(f"no usable utterances in feature set {name!r} of {cache} (dropped: {self.skipped})")

    @property
    def skipped(self) -> dict[str, int]:
        """Dropped utterances counted by reason."""
        out: dict[str, int] = {}
        for _, _, reason in self.dropped:
            out[reason] = out.get(reason, 0) + 1
        return out

    def coverage(self) -> dict[str, dict[str, int]]:
        """Per split the corpus names: utterances kept and in the split, among those with labels."""
        out: dict[str, dict[str, int]] = {name: {"kept": len(s.ids), "total": len(s.ids)}
                                          for name, s in self.splits.items()}
        for _, split, reason in self.dropped:
            if split and reason not in ("no labels", "not in the label manifest"):
                out.setdefault(split, {"kept": 0, "total": 0})["total"] += 1
        return out

    def _speaker_stats(self, run_baseline: RunBaseline | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The frame statistics of `--speaker-norm` (pipeline/speaker_baseline.py, `frame_baselines`) over
        every split; each split's `speakers` become its utterances' keys into them. Streamed caches are
        read once more for this."""
        splits = list(self.splits.values())
        where = [(s, k) for s in splits for k in range(len(s.ids))]

        def read(idx: list[int]) -> list[np.ndarray]:
            out: dict[int, np.ndarray] = {}
            for s in splits:  # each split's rows in one read
                mine = [i for i in idx if where[i][0] is s]
                if mine:
                    ks = [where[i][1] for i in mine]
                    out.update(zip(mine, [s.frames[k] for k in ks] if s.frames is not None else s.column.read(ks)))
            return [out[i] for i in idx]

        names = [name for name, s in self.splits.items() for _ in s.ids]
        stats, keys = frame_baselines([g for s in splits for g in s.speakers],  # type: ignore[union-attr]
                                      [g for s in splits for g in s.genders],  # type: ignore[union-attr]
                                      [n == "train" for n in names], read, run_baseline)
        start = 0
        for s in splits:
            s.speakers, start = keys[start : start + len(s.ids)], start + len(s.ids)
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

    speaker_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # speaker -> (mean, sd) of the frames

    def batches(self, split: str, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                prefetch: int = 4, max_frames: int = 0, bucket: bool = False, cast: bool = True) -> Iterator[Batch]:
        """Batches in the order `epoch_order` gives (sorted ids when not shuffled), cut as
        `batch_groups` says. A thread reads the next batches while the model trains; a batch's rows are
        read grouped by shard.

        With `crop` (max_seconds), an utterance longer than it trains on one window of `crop` frames
        at a start drawn from (seed, epoch) and its place among the sorted ids (never the shard layout),
        and is evaluated as consecutive windows, each a row of its own (its id repeated; `predict_split`
        averages them): a long turn costs the memory of a window, never of the whole turn at once."""
        s = self.splits[split]
        order = epoch_order(s.ids, seed, epoch) if shuffle else np.arange(len(s.ids))
        lengths = self.lengths(split) if max_frames or (bucket and shuffle) or self.crop else None
        rows = self._windows(order, lengths, shuffle, seed, epoch)
        row_lengths = None if lengths is None else np.array(
            [lengths[k] if stop < 0 else stop - start for k, start, stop in rows], np.int64)
        groups = batch_groups(np.arange(len(rows)), batch_size, training=shuffle, lengths=row_lengths,
                              max_frames=max_frames, bucket=bucket, seed=seed, epoch=epoch)
        q: queue.Queue = queue.Queue(maxsize=prefetch)

        def produce() -> None:
            try:
                for g in groups:
                    q.put(self._batch(s, [rows[i] for i in g], cast))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)
            q.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    crop: int | None = None  # frames; see `batches`

    def _windows(self, order: np.ndarray, lengths: np.ndarray | None, training: bool, seed: int, epoch: int
                 ) -> list[tuple[int, int, int]]:
        """(utterance, start frame, stop frame) rows: the whole utterance (stop -1), or windows of `crop`
        frames of the utterances longer than that."""
        c = self.crop
        if c is None or lengths is None or lengths.max(initial=0) <= c:
            return [(int(k), 0, -1) for k in order]
        if training:  # one start per utterance, drawn in id order so the layout cannot change it
            rng = np.random.default_rng([seed, epoch, 2])
            starts = [int(rng.integers(0, max(1, int(n) - c + 1))) for n in lengths]
            return [(int(k), starts[k], starts[k] + c) if lengths[k] > c else (int(k), 0, -1) for k in order]
        return [(int(k), start, stop) for k in order for start, stop in evaluation_windows(int(lengths[k]), c)]

    def lengths(self, split: str) -> np.ndarray:
        """Frames per utterance of a split, from the frames held in memory or the shards' offsets."""
        s = self.splits[split]
        if s.lengths is None:
            s.lengths = (np.array([len(f) for f in s.frames], np.int64) if s.frames is not None
                         else s.column.lengths())
        return s.lengths

    def _batch(self, s: Split, rows: list[tuple[int, int, int]], cast: bool = True) -> Batch:
        idx = [k for k, _, _ in rows]
        whole = all(stop < 0 for _, _, stop in rows)
        if s.frames is not None:
            frames = [s.frames[k] if stop < 0 else s.frames[k][start:stop] for k, start, stop in rows]
        else:
            frames = s.column.read(idx, None if whole else [(start, None if stop < 0 else stop)
                                                            for _, start, stop in rows], raw=True)
        if self.speaker_stats is not None:
            stats = [self.speaker_stats[s.speakers[i]] for i in idx]  # type: ignore[index]
            frames = [(decoded(f) - mean) / sd for f, (mean, sd) in zip(frames, stats)]
        return make_batch(frames, {k: v[idx] for k, v in s.vectors.items()}, {k: m[idx] for k, m in s.masks.items()},
                          s.labels[idx], [s.ids[i] for i in idx], cast)


def make_batch(frames: list[np.ndarray], vectors: dict[str, np.ndarray], masks: dict[str, np.ndarray],
               labels: np.ndarray, ids: list[str], cast: bool = True) -> Batch:
    """The frames padded into one array. `cast` (training on the CPU): float32, cast by torch as it pads,
    in pieces under torch's parallel grain so the copy stays on the calling (read-ahead) thread and
    never wakes the intra-op threads the training step is using (numpy's float16 cast is not
    vectorised; whole-utterance copies made epochs slower). Otherwise (a GPU): as stored, float16,
    half the bytes to pad and to move, cast on the device by `to_tensors`. On a CPU the two ways cost
    the same (32 ten-second utterances x 25 x 1024: 0.545 s and 0.551 s, bench/train.py --only
    batch25), and the first runs on the read-ahead thread, beside the training step."""
    lengths = np.array([len(f) for f in frames])
    if not cast:
        frames = [decoded(f) for f in frames]
        out = np.zeros((len(frames), lengths.max(), *frames[0].shape[1:]), np.result_type(*frames))
        for b, f in enumerate(frames):
            out[b, : len(f)] = f
        return Batch(out, lengths, vectors, masks, labels, ids)
    shape = frames[0]["values"].shape[1:] if is_quantized(frames[0]) else frames[0].shape[1:]
    out = np.zeros((len(frames), lengths.max(), *shape), np.float32)
    dst = torch.from_numpy(out)
    step = max(1, TORCH_GRAIN // max(1, int(np.prod(out.shape[2:]))))  # frames per piece
    for b, f in enumerate(frames):
        # one-byte frames (msf.pipeline.quantized) are cast and scaled in the batch itself: no float32
        # copy of each utterance on the way (bench/frames_storage.py: 1.18x float16's epoch reads)
        src, scale = (torch.from_numpy(f["values"]), torch.from_numpy(f["scale"])) if is_quantized(f) else \
            (torch.from_numpy(f), None)
        for i in range(0, len(f), step):
            j = min(i + step, len(f))
            dst[b, i:j] = src[i:j]
            if scale is not None:
                dst[b, i:j] *= scale[i:j, ..., None]
    return Batch(out, lengths, vectors, masks, labels, ids)
