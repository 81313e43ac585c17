"""The read side of a cache: one named feature set, seen from the cache directory alone.

Training, evaluation, `msf status`, `show` and `inspect` use this view. It needs no audio and no
manifest: the cache recorded every utterance's manifest row (labels, speaker, split, transcript, the
audio's content hash) and the set's settings at extraction. A newer manifest may still supply labels
and splits (`labels_from`), and `msf status` may compare against a corpus or settings given now.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.cache.index import CacheIndex, Entry, Failure, index_path
from msf.pipeline.cache.planning import (NEW_UTTERANCE, NOT_EXTRACTED, Plan, Source, StageState,  # noqa: F401
                                         complete_markers, reasons, rows_digest, sources_from_cache,
                                         sources_from_corpus, stage_keys, stage_state, status_of)
from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.config import ConfigError, MsfConfig
from msf.pipeline.corpus import Corpus, CorpusProblem, Utterance, corpus_source, target_names
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.stage import OutputField, Record, load_plugins, stage_class

if TYPE_CHECKING:  # torch is imported by `dataset()` only: `msf status` stays quick
    from msf.pipeline.cache.dataset import CacheDataset


def require_cache(cache: Path) -> None:
    if not index_path(cache).is_file():
        raise ConfigError(f"no msf cache at {cache} (run `msf extract --cache {cache}` first)")


def open_store(cache: Path, readonly: bool = False) -> ShardStore:
    """The cache's store; `readonly`: the index refuses every write (nor does it migrate an older schema),
    so reading a cache never changes it under another msf reading or writing it."""
    require_cache(cache)
    return ShardStore(Path(cache), readonly=readonly)


def open_view(cache: Path, name: str = "default", config: Path | None = None, sets: Sequence[str] = (),
              corpus: str | None = None) -> "CacheView":
    """The named feature set of a cache, read-only (status, show, inspect read, never write): as
    recorded, or compared with the settings of an msf.toml (`config`), `--set` overrides and a corpus
    given now (each over the recorded settings; the corpus parsed again only when its inputs changed)."""
    from msf.pipeline.config import load_config
    from msf.pipeline.corpus import corpus_digest, load_corpus

    store = open_store(cache, readonly=True)
    try:
        record = store.index.feature_set(name)
        cfg = source = None
        if record is not None and (config or sets or corpus):
            base = MsfConfig.model_validate_json(record.config).model_dump(mode="json", exclude_none=True)
            cfg = load_config(config, list(sets), base=base, read_cwd=False, corpus=corpus)
            if corpus:
                source = recorded_corpus(store.index, cfg, corpus_digest(cfg.corpus, cfg.label_range)) or load_corpus(
                    cfg.corpus, cfg.label_range)  # type: ignore[arg-type]
        return CacheView(cache, name, config=cfg, corpus=source, store=store, owns_store=True)
    except BaseException:
        store.close()
        raise


@contextmanager
def locked_store(cache: Path) -> Iterator[ShardStore]:
    """The cache's store under the writer lock, for the commands that change a cache (verify, compact,
    gc, forget); the cache is checked to be one (and migrated) before the lock is taken."""
    from msf.pipeline.cache.lock import CacheLock

    open_store(cache).close()
    with CacheLock(cache):
        store = open_store(cache)
        try:
            yield store
        finally:
            store.close()


def corpus_recorded(index: CacheIndex, config: MsfConfig, digest_now: str | None) -> bool:
    """Whether the corpus's inputs (its `corpus_digest`: the manifest's bytes, or every label and
    transcript file's size and mtime) are unchanged since the feature set's last extraction recorded
    its rows: then they need not be parsed again."""
    record = index.feature_set(config.name)
    return not (record is None or not record.corpus_digest or config.corpus is None or record.corpus != config.corpus
                or digest_now != record.corpus_digest)


def recorded_problems(index: CacheIndex) -> list[CorpusProblem]:
    """The rows the reader refused at the last extraction (not the missing audio it kept: the
    content-hash pass finds that again)."""
    problems = []
    for text in json.loads(index.get_meta("corpus_problems") or "[]"):
        if not text.endswith(" (kept)"):
            where, _, message = text.partition(": ")
            problems.append(CorpusProblem(where, message))
    return problems


def recorded_corpus(index: CacheIndex, config: MsfConfig, digest_now: str | None) -> Corpus | None:
    """The corpus as the feature set's last extraction recorded it, when its inputs are unchanged since
    (`corpus_recorded`); None otherwise (then the reader parses it). The rows the reader refused then
    are refused again; missing audio is found again by the content-hash pass."""
    if not corpus_recorded(index, config, digest_now):
        return None
    recorded = list(index.member_utterances(config.name))
    if any(isinstance(r, str) for r in recorded):  # a member without its recorded row
        return None
    return Corpus(corpus_source(config.corpus)[0], config.corpus, [r.utt for r in recorded],  # type: ignore
                  recorded_problems(index))


class CacheView:
    """One named feature set of a cache: its settings, its utterances, which entries are fresh, and the
    public read API over them (`msf.open_cache`, docs/api.md): records, array columns, a torch Dataset."""

    def __init__(self, cache: Path, name: str = "default", config: MsfConfig | None = None,
                 corpus: Corpus | None = None, store: ShardStore | None = None, owns_store: bool = False):
        self.root = Path(cache)
        self.store = store or open_store(self.root)
        self._owns_store = store is None or owns_store
        index = self.store.index
        record = index.feature_set(name)
        if record is None:
            known = index.feature_sets()  # before close(): the index closes with the store
            self.close()
            raise NotFound(f"no feature set {name!r} in {cache}" + (f"; it has {', '.join(map(repr, known))}"
                                                                    if known else "; extract into it first"))
        self.name, self.record = name, record
        self.config = (config or MsfConfig.model_validate_json(record.config)).model_copy(update={"cache": self.root})
        load_plugins(self.config.plugins)
        self.corpus = corpus
        self._fresh: dict[str, dict[str, Entry]] = {}

    @classmethod
    def open(cls, cache: Path, name: str = "default") -> "CacheView":
        """Read-only (the public API, training, evaluation): the index refuses every write."""
        return cls(Path(cache), name, store=open_store(cache, readonly=True), owns_store=True)

    @cached_property
    def sources(self) -> list[Source]:
        if self.corpus is not None:  # status against a corpus given now: its audio is hashed again
            return sources_from_corpus(self.corpus.utterances, self.store.index)
        return sources_from_cache(r for r in self.store.index.member_utterances(self.name) if not isinstance(r, str))

    @cached_property
    def rows_digest(self) -> str:
        recorded = self.store.index.get_meta("utterances_digest")
        if self.corpus is None and recorded == self.record.rows_digest:  # the set's rows as recorded
            return recorded
        return rows_digest(self.sources)

    def _complete(self) -> dict[str, tuple[list[str], int, int]] | None:
        """The completion markers of every stage, when all of them match (planning.completion_keys)."""
        return complete_markers(self.store, stage_keys(self.config, self.rows_digest, self.record.stages))

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "CacheView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stages(self) -> list[str]:
        return self.record.stages

    @property
    def utterances(self) -> list[Utterance]:
        return [s.utt for s in self.sources]

    @cached_property
    def plan(self) -> Plan:
        return Plan(self.sources, self.config.params_for, self.record.stages)

    def state(self, stage: str) -> StageState:
        self._require_stage(stage)
        return stage_state(self.store.index, self.store.shard_names(stage), self.plan[stage])

    def status(self, why: bool = False) -> dict[str, dict[str, Any]]:
        complete = self._complete()
        if complete is None:
            return status_of(self.plan, self.store, why)
        stored = self.store.index.bytes_by_stage()
        return {name: {"total": n, "fresh": n, "stale": 0, "missing": 0, "failed": 0, "bytes": nbytes,
                       "bytes_all": stored.get(name, 0), **({"why": {}} if why else {})}
                for name, (_, n, nbytes) in complete.items()}

    def failures(self) -> list[Failure]:
        """The recorded failures of this set's current fingerprints, stage by stage."""
        return [f for stage in self.stages for f in self.state(stage).failed.values()]

    def fresh(self, stages: list[str]) -> dict[str, dict[str, Entry]]:
        """Per stage, the fresh entry of each utterance that has one: found once per view and stage (a
        snapshot: the readers of a view, chunk after chunk, do not search the index again)."""
        for stage in stages:
            if stage not in self._fresh:
                state = self.state(stage)
                fps = self.plan[stage].fingerprints
                entries = self.store.index.entries(stage, [(u, fps[u]) for u in state.fresh])
                self._fresh[stage] = {u: e for (u, _), e in entries.items()}
        return {stage: self._fresh[stage] for stage in stages}

    def why_not_fresh(self, stage: str) -> dict[str, str]:
        """Utterance -> the reason its entry is not fresh (stale, missing or failed)."""
        state = self.state(stage)
        out: dict[str, str] = {}
        for reason, utts in reasons(self.plan, self.store.index, stage, state).items():
            out.update(dict.fromkeys(utts, reason))
        return out

    def read(self, stage: str, utt: str) -> tuple[Record, str | None]:
        """The entry of (stage, utterance) this set uses, and None; or, when it has no fresh one, the
        newest entry the cache holds, and the reason it is not fresh."""
        fresh = self.fresh([stage])[stage].get(utt)
        if fresh is not None:
            return self.store.read(fresh), None
        latest = self.store.index.latest(stage).get(utt)
        if latest is None:
            raise NotFound(f"no {stage!r} entry for utterance {utt!r} in {self.root}")
        return self.store.read(latest), self.why_not_fresh(stage).get(utt, "not fresh")

    def corpus_problems(self) -> list[str]:
        return json.loads(self.store.index.get_meta("corpus_problems") or "[]")

    # -- the public read API (docs/api.md) --------------------------------------------------------

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

    def _require_stage(self, stage: str) -> None:
        if stage not in self.record.stages:
            raise NotFound(f"feature set {self.name!r} of {self.root} has no {stage!r} features; extract them "
                           f"with `msf extract --cache {self.root} --name {self.name} --stage {stage}`")


@dataclass(frozen=True)
class GcPlan:
    """What `msf cache gc` removes: entries no named feature set references, then unreferenced files."""

    entries: dict[str, list[tuple[str, str]]]  # stage -> (utterance, fingerprint)
    entry_bytes: int
    files: int  # shard files left with no entry (removed now)
    file_bytes: int
    kept_in_shared_shards: int  # bytes of removed entries inside shards that keep other entries

    def to_dict(self) -> dict[str, Any]:
        return {"entries": sum(map(len, self.entries.values())), "entry_bytes": self.entry_bytes,
                "files": self.files, "file_bytes": self.file_bytes,
                "kept_in_shared_shards": self.kept_in_shared_shards,
                "by_stage": {s: len(k) for s, k in self.entries.items() if k}}


def gc_plan(store: ShardStore) -> GcPlan:
    """The gc rule: an entry is kept when some named feature set references it, i.e. it is that set's
    entry for the set's current settings and recorded utterances. Everything else (earlier variants
    no set names any more, utterances no longer in any set) is removed; `msf cache forget NAME`
    drops a set from the kept ones."""
    index = store.index
    keep: dict[str, set[tuple[str, str]]] = {}
    for name in index.feature_sets():
        view = CacheView(store.root, name, store=store)
        for stage, sp in view.plan.stages.items():
            keep.setdefault(stage, set()).update(sp.fingerprints.items())
    drop: dict[str, list[tuple[str, str]]] = {}
    entry_bytes = files = file_bytes = shared = 0
    for stage in index.stages():
        stored = index.stored(stage)
        kept = keep.get(stage, set())
        drop[stage] = [k for k in stored if k not in kept]
        entry_bytes += sum(stored[k][1] for k in drop[stage])
        live = {stored[k][0] for k in stored if k in kept}
        for shard in {stored[k][0] for k in drop[stage]} - live:
            path = store.shard_path(stage, shard)
            files += 1
            file_bytes += path.stat().st_size if path.exists() else 0
        shared += sum(stored[k][1] for k in drop[stage] if stored[k][0] in live)
    stray = store.sweep(dry_run=True)  # leftovers of crashes, and shards already unreferenced
    return GcPlan(drop, entry_bytes, files + stray["files"], file_bytes + stray["bytes"], shared)


def collect_garbage(store: ShardStore, plan: GcPlan) -> dict[str, int]:
    for stage, keys in plan.entries.items():
        store.index.drop(stage, keys)
    return store.sweep()
