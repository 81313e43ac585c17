"""The read side of a cache: one named feature set, seen from the cache directory alone.

Training, evaluation, `msf status`, `show` and `inspect` use this view. It needs no audio and no
manifest: the cache recorded every utterance's manifest row (labels, speaker, split, transcript, the
audio's content hash) and the set's settings at extraction. A newer manifest may still supply labels
and splits (`labels_from`), and `msf status` may compare against a corpus or settings given now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from msf.pipeline.cache_index import CacheIndex, Entry, Failure, FeatureSetRecord
from msf.pipeline.config import ConfigError, MsfConfig
from msf.pipeline.corpus import Corpus, CorpusProblem, Utterance, corpus_source
from msf.pipeline.errors import NotFound
from msf.pipeline.fingerprint import params_digest
from msf.pipeline.planning import (Plan, Source, StageState, completion_keys, reasons, rows_digest,
                                   sources_from_cache, sources_from_corpus, stage_state, status_of)
from msf.pipeline.shard_store import ShardStore
from msf.pipeline.stage import Record, load_plugins, stage_class


def require_cache(cache: Path) -> None:
    if not (Path(cache) / "index.sqlite").is_file():
        raise ConfigError(f"no msf cache at {cache} (run `msf extract --cache {cache}` first)")


def open_store(cache: Path) -> ShardStore:
    require_cache(cache)
    return ShardStore(Path(cache))


def recorded_corpus(index: CacheIndex, config: MsfConfig, digest_now: str | None) -> Corpus | None:
    """The corpus as the feature set's last extraction recorded it, when the corpus's inputs (its
    `corpus_digest`: the manifest's bytes, or every label and transcript file's size and mtime) are
    unchanged since; None otherwise (then the reader parses it). The rows the reader refused then are
    refused again; missing audio is found again by the content-hash pass."""
    record = index.feature_set(config.name)
    if record is None or not record.corpus_digest or config.corpus is None or record.corpus != config.corpus:
        return None
    if digest_now != record.corpus_digest:
        return None
    rows = index.utterances()
    if not all(m in rows for m in record.members):
        return None
    problems = []
    for text in json.loads(index.get_meta("corpus_problems") or "[]"):
        if not text.endswith(" (kept)"):  # the kept ones (missing audio) are not the reader's
            where, _, message = text.partition(": ")
            problems.append(CorpusProblem(where, message))
    return Corpus(corpus_source(config.corpus)[0], config.corpus, [Utterance.from_dict(rows[m].row)
                                                                   for m in record.members], problems)


class CacheView:
    """One named feature set of a cache: its settings, its utterances, and which entries are fresh."""

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

    @cached_property
    def sources(self) -> list[Source]:
        if self.corpus is not None:  # status against a corpus given now: its audio is hashed again
            return sources_from_corpus(self.corpus, self.store.index)
        recorded = self.store.index.utterances(self.record.members)
        return sources_from_cache(recorded[u] for u in self.record.members if u in recorded)

    @cached_property
    def rows_digest(self) -> str:
        recorded = self.store.index.get_meta("utterances_digest")
        if self.corpus is None and recorded == self.record.rows_digest:  # the set's rows as recorded
            return recorded
        return rows_digest(self.sources)

    def _complete(self) -> dict[str, tuple[list[str], int, int]] | None:
        """The completion markers of every stage, when all of them match (planning.completion_keys)."""
        order = self.record.stages
        params = {n: params_digest(stage_class(n), self.config.params_for(stage_class(n))) for n in order}
        out = {}
        for name, key in completion_keys(self.rows_digest, params, order).items():
            marker = self.store.index.completion(name, key)
            if marker is None or not set(marker[0]) <= self.store.shard_names(name):
                return None
            out[name] = marker
        return out

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

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
        """Per stage, the fresh entry of each utterance that has one."""
        out: dict[str, dict[str, Entry]] = {}
        for stage in stages:
            state = self.state(stage)
            fps = self.plan[stage].fingerprints
            entries = self.store.index.entries(stage, [(u, fps[u]) for u in state.fresh])
            out[stage] = {u: e for (u, _), e in entries.items()}
        return out

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
