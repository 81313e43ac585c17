"""The public read API over one feature set (`msf.open_cache`, docs/api.md): its fields, records by
utterance, array columns by position, and a torch Dataset of a split. `CacheView` says which entries
are fresh; this reads them."""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.corpus import target_names
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.stage import OutputField, Record, stage_class

if TYPE_CHECKING:  # torch is imported by `dataset()` only: `msf status` stays quick
    from msf.pipeline.cache.dataset import CacheDataset
    from msf.pipeline.cache.index import Entry
    from msf.pipeline.config import MsfConfig


class ReadApi:
    """What a `CacheView` offers to read (it supplies `fresh`, `stages`, `utterances`, `store`, `config`)."""

    @property
    def settings(self) -> MsfConfig:
        """The settings this feature set was extracted with."""
        return self.config

    def fingerprints(self, stage: str) -> dict[str, str]:
        """Utterance -> the fingerprint of its entry under this set's settings."""
        self._require_stage(stage)
        return dict(self.plan[stage].fingerprints)

    @cached_property
    def fields(self) -> dict[str, OutputField]:
        """Every field this set's stages write, as `stage.name` -> its declaration. A stage that
        declares none (a plugin's) is described by the names in one of its shards."""
        out: dict[str, OutputField] = {}
        for stage in self.stages:
            declared = stage_class(stage).fields
            if declared:
                out.update({f"{stage}.{k}": v for k, v in declared.items()})
                continue
            shards = sorted(self.store.shard_files(stage))
            if shards:
                out.update({f"{stage}.{k}": OutputField("unknown") for k in self.store.reader.file(shards[0])
                            if k != "utt"})
        return out

    def require_fields(self, names: Iterable[str]) -> None:
        """A UsageError naming the fields that exist when one of `names` does not."""
        known = self.fields
        bad = [n for n in names if n not in known]
        absent = sorted({n.split(".", 1)[0] for n in bad} - set(self.stages))
        if absent:  # a stage not extracted into this set, rather than a misspelt field
            raise UsageError(f"feature set {self.name!r} of {self.root} has no stage {', '.join(map(repr, absent))} "
                             f"(extract it: msf extract --cache {self.root} --name {self.name} "
                             + " ".join(f"--stage {a}" for a in absent) + ")")
        if bad:
            raise UsageError(f"feature set {self.name!r} of {self.root} has no field {', '.join(map(repr, bad))}; "
                             f"its fields: {', '.join(sorted(known))}")

    def records(self, stage: str, ids: Iterable[str] | None = None) -> dict[str, Record]:
        """Utterance -> its fresh record of `stage` (all of the set's utterances by default); an
        utterance without a fresh entry is absent. Each shard is read once."""
        fresh = self.fresh([stage])[stage]
        entries = [fresh[u] for u in (fresh if ids is None else ids) if u in fresh]
        by_shard: dict[str, list[Entry]] = defaultdict(list)
        for e in entries:
            by_shard[e.shard].append(e)
        out: dict[str, Record] = {}
        for shard, es in by_shard.items():
            rows = self.store.reader.rows(self.store.shard_path(stage, shard), [e.row for e in es])
            out.update({e.utt: r for e, r in zip(es, rows)})
        return out

    def stored_layers(self) -> list[int] | None:
        """The hidden states `acoustic.frames` holds, in order (None: one layer, frames are T x D)."""
        layers = self.config.params_for(stage_class("acoustic")).layers  # type: ignore[attr-defined]
        if layers == "all":
            fresh = self.fresh(["acoustic"])["acoustic"]
            if not fresh:
                return None
            e = next(iter(fresh.values()))
            shape = self.store.reader.file(self.store.shard_path("acoustic", e.shard))["frames"]["data"].shape
            return list(range(shape[1])) if len(shape) == 3 else None
        return list(layers) if len(layers) > 1 else None

    def layer_positions(self, layers: Sequence[int] | None) -> list[int] | None:
        """Positions on the frames' layer axis of the hidden states asked for (None: all stored)."""
        if layers is None:
            return None
        stored = self.stored_layers()
        if stored is None:
            one = self.config.params_for(stage_class("acoustic")).layers  # type: ignore[attr-defined]
            raise UsageError(f"--layers {','.join(map(str, layers))}: feature set {self.name!r} holds one hidden "
                             f"state only (acoustic.layers={one}); re-extract with acoustic.layers=\"all\" or a list")
        missing = [i for i in layers if i not in stored]
        if missing or not layers:
            raise UsageError(f"--layers {','.join(map(str, layers))}: feature set {self.name!r} holds hidden states "
                             f"{','.join(map(str, stored))}" + (f"; not {','.join(map(str, missing))}" if missing else ""))
        return [stored.index(i) for i in layers]

    def column(self, field: str, ids: Sequence[str], layers: Sequence[int] | None = None) -> ArrayColumn:
        """One array field of these utterances (each must have a fresh entry), to read by position."""
        self.require_fields([field])
        stage, name = field.split(".", 1)
        fresh = self.fresh([stage])[stage]
        lacking = [u for u in ids if u not in fresh]
        if lacking:
            raise NotFound(f"no fresh {stage!r} entry for {len(lacking)} utterance(s), e.g. {lacking[0]!r}")
        select = self.layer_positions(layers) if field == "acoustic.frames" else None
        return ArrayColumn([(self.store.shard_path(stage, fresh[u].shard), fresh[u].row) for u in ids], name,
                           select, squeeze=select is not None and len(select) == 1)

    def frames_in(self, seconds: float, stage: str, ids: list[str]) -> int | None:
        """`seconds` in frames of a stage's frame axis (the `frame_rate` its records hold), at least one;
        None when there is nothing to read it from."""
        rate = self.records(stage, ids[:1])[ids[0]].get("frame_rate") if ids else None
        return max(1, int(round(seconds * float(rate)))) if rate else None

    def dataset(self, split: str, fields: Sequence[str], layers: Sequence[int] | None = None,
                max_seconds: float | None = None) -> CacheDataset:
        """A torch Dataset of the split's utterances that have a fresh entry for every field's stage
        (sorted by id). `layers`: hidden states of `acoustic.frames` to read (T x len(layers) x D);
        `max_seconds`: array fields with a frame axis keep their first max_seconds (by the stage's
        frame rate; words and phones are not cut)."""
        self.require_fields(fields)
        utts = sorted((u for u in self.utterances if u.split == split), key=lambda u: u.id)
        if not utts:
            splits = sorted({u.split for u in self.utterances if u.split})
            raise UsageError(f"feature set {self.name!r} has no split {split!r}; its splits: {', '.join(splits)}")
        stages = sorted({f.split(".", 1)[0] for f in fields})
        fresh = self.fresh(stages)
        utts = [u for u in utts if all(u.id in fresh[s] for s in stages)]
        ids = [u.id for u in utts]
        spec = self.fields
        arrays: dict[str, ArrayColumn] = {}
        values: dict[str, list[Any]] = {}
        max_frames: dict[str, int | None] = {}
        for f in fields:
            stage, name = f.split(".", 1)
            if spec[f].shape and spec[f].dtype not in ("str", "unknown"):
                arrays[f] = self.column(f, ids, layers if f == "acoustic.frames" else None)
                if max_seconds is not None and spec[f].shape[0] == "T":
                    max_frames[f] = self.frames_in(max_seconds, stage, ids)
            else:
                recs = self.records(stage, ids)
                values[f] = [recs[u][name] for u in ids]
        from msf.pipeline.cache.dataset import CacheDataset

        return CacheDataset(utts, arrays, values, max_frames, frozenset(f for f in arrays if spec[f].varying),
                            target_names(utts))

