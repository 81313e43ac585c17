"""The read side of a cache: one named feature set, seen from the cache directory alone.

Training, evaluation, `msf status`, `show` and `inspect` use this view. It needs no audio and no
manifest: the cache recorded every utterance's manifest row (labels, speaker, split, transcript, the
audio's content hash) and the set's settings at extraction. A newer manifest may still supply labels
and splits (`labels_from`), and `msf status` may compare against a corpus or settings given now.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from msf.pipeline.cache.index import CacheIndex, Entry, Failure, index_path
from msf.pipeline.cache.planning import (NEW_UTTERANCE, NOT_EXTRACTED, Plan, Source, StageState,  # noqa: F401
                                         chunk_plans, complete_markers, reasons, rows_digest, sources_from_cache,
                                         sources_from_corpus, stage_keys, stage_state, status_of)
from msf.pipeline.cache.read_api import ReadApi
from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.config import ConfigError, MsfConfig
from msf.pipeline.corpus import Corpus, CorpusProblem, Utterance, corpus_source
from msf.pipeline.errors import NotFound
from msf.pipeline.stage import Record, load_plugins


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


class CacheView(ReadApi):
    """One named feature set of a cache: its settings, its utterances and which of its entries are fresh
    (here), and the public read API over them (`msf.open_cache`, docs/api.md: records, array columns, a
    torch Dataset; read_api.py)."""

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

    def _plans(self) -> Iterable[Plan]:
        """The set's plan whole when it is made already (or the corpus was given now), else by chunks."""
        return [self.plan] if self.corpus is not None or "plan" in self.__dict__ else self._chunk_plans()

    def _chunk_plans(self) -> Iterator[Plan]:
        """The set's recorded members planned `chunk_size` at a time, in chunks of whole groups (as a run
        plans them), the index's per-stage reads scoped to each chunk while it is used."""
        self.store.index.members_from_set(self.name)
        return chunk_plans(self.store.index, self.config.params_for, self.record.stages, self.config.chunk_size)

    def state(self, stage: str) -> StageState:
        self._require_stage(stage)
        return stage_state(self.store.index, self.store.shard_names(stage), self.plan[stage])

    def status(self, why: bool = False) -> dict[str, dict[str, Any]]:
        complete = self._complete()
        if complete is None:  # counted a chunk at a time: a set of a million is never planned whole
            return status_of(self._plans(), self.store, why)
        stored = self.store.index.bytes_by_stage()
        return {name: {"total": n, "fresh": n, "stale": 0, "missing": 0, "failed": 0, "bytes": nbytes,
                       "bytes_all": stored.get(name, 0), **({"why": {}} if why else {})}
                for name, (_, n, nbytes) in complete.items()}

    def failures(self) -> list[Failure]:
        """The recorded failures of this set's current fingerprints, stage by stage (found a chunk at a
        time, unless the set's whole plan is made already)."""
        found: dict[str, list[Failure]] = {stage: [] for stage in self.stages}
        for plan in self._plans():
            for stage in self.stages:
                state = stage_state(self.store.index, self.store.shard_names(stage), plan[stage])
                found[stage] += state.failed.values()
        return [f for stage in self.stages for f in found[stage]]

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

    def _require_stage(self, stage: str) -> None:
        if stage not in self.record.stages:
            raise NotFound(f"feature set {self.name!r} of {self.root} has no {stage!r} features; extract them "
                           f"with `msf extract --cache {self.root} --name {self.name} --stage {stage}`")
