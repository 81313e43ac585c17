"""The driver of an extraction: records what the cache is made from (each utterance's manifest row, the
named feature set's settings), plans, runs what is not fresh as shard-sized tasks on an executor, and
commits each finished shard to the index in one transaction, so an interrupted run keeps everything
committed and resumes from there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Iterator

from rich.progress import Progress

from msf.pipeline.cache.index import INDEX_FILE, FeatureSetRecord, Failure, index_path
from msf.pipeline.config import ConfigError, MsfConfig
from msf.pipeline.cache.view import CacheView, corpus_recorded, recorded_corpus, recorded_problems
from msf.pipeline.corpus import (Corpus, CorpusError, CorpusProblem, Streaming, Utterance, corpus_digest, corpus_source,
                                 load_corpus, no_usable_utterances)
from msf.pipeline.errors import MsfError
from msf.pipeline.run.costs import RunCosts
from msf.pipeline.run.executors import DaskExecutor, Executor
from msf.pipeline.faults import fault_point
from msf.pipeline.cache.lock import CacheLock
from msf.pipeline.cache.fingerprint import params_digest
from msf.pipeline.cache.planning import (Plan, RowsDigest, Source, chunk_plans, complete_markers, rows_digest,
                                         sources_from_corpus, stage_keys, stage_state)
from msf.pipeline.progress import progress_bar
from msf.pipeline.run.requirements import require_all
from msf.pipeline.run.tasks import TaskPlanner
from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.stage import load_plugins, stage_class, stage_order
from msf.pipeline.run.worker import TaskItem, TaskResult, describe_error, run_task


@dataclass
class StageReport:
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0


@dataclass
class _StageTally:
    """One stage's run summed over the chunks, and what its completion marker needs."""

    report: StageReport = field(default_factory=StageReport)
    shards: set[str] = field(default_factory=set)
    entries: int = 0
    nbytes: int = 0
    complete: bool = True


def reports_json(reports: dict[str, StageReport]) -> str:
    return json.dumps({"stages": {k: asdict(v) for k, v in reports.items()}})


def preflight(config: MsfConfig, stages: list[str]) -> None:
    """Stop before anything is computed (or a cache created) when a stage of this run cannot run with
    its settings or lacks a model: everything missing in one message (run/requirements.py)."""
    require_all(config, stages)


def _recorded_corpus_hint(config: MsfConfig) -> str:
    """What the feature set was last extracted from, to suggest when a rerun names no corpus."""
    if config.cache is None or not index_path(config.cache).is_file():
        return ""
    store = ShardStore(config.cache, readonly=True)
    try:
        record = store.index.feature_set(config.name)
    finally:
        store.close()
    return f" (feature set {config.name!r} of {config.cache} was extracted from {record.corpus})" if record else ""


class Extraction(RunCosts):
    """One cache, one corpus, one resolved configuration, recorded under a feature-set name."""

    def __init__(self, config: MsfConfig, corpus: Corpus | None = None, executor: Executor | None = None,
                 dry_run: bool = False):
        """`dry_run`: the cache is opened read-only (and not created); only `dry_run()` makes sense."""
        if corpus is None and config.corpus is None:
            raise ConfigError("no corpus: pass --corpus SPEC or set `corpus` in msf.toml" + _recorded_corpus_hint(config))
        load_plugins(config.plugins)
        for name in config.stages:  # a mistyped setting fails now, not after the content-hash pass
            config.params_for(stage_class(name))
        if corpus is None:
            corpus_source(config.corpus)  # a mistyped --corpus leaves no empty cache behind
        self.config = config
        self._corpus = corpus
        self.root = config.cache_dir()
        # a cache this extraction creates is removed again if the run stops before anything is in it
        # (a manifest refused as not UTF-8, empty, ...): an empty cache left behind would look like one
        self._created = not dry_run and not index_path(self.root).exists()
        self._removed = False
        self.store = ShardStore(self.root, readonly=dry_run)
        self.executor: Executor = executor or DaskExecutor(config.workers, config.scheduler)
        self._sources: list[Source] | None = None
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._problems: list[str] | None = None  # the run's (`_take_in`)

    def close(self) -> None:
        self.executor.close()
        self.store.close()

    @property
    def corpus(self) -> Corpus:
        """The whole corpus in memory, for the dry run and the inspecting methods below (a run streams
        it: `_take_in`). Read on first use; a corpus unchanged since this feature set's last
        extraction is taken from the rows recorded then."""
        if self._corpus is None:
            # the audio is stat-ed once, by the content-hash pass, not by the reader too
            self._corpus = recorded_corpus(self.store.index, self.config, self.corpus_digest) or load_corpus(
                self.config.corpus, self.config.label_range, check_audio=False)  # type: ignore[arg-type]
        return self._corpus

    def corpus_problems(self) -> list[str]:
        """The manifest's refused rows (or, when this run did not read it, the last recorded ones)."""
        if self._problems is not None:
            return self._problems
        if self._corpus is not None:
            return [str(p) for p in self._corpus.problems]
        if self._removed:  # a refused manifest: its error says why, and the cache is gone
            return []
        return json.loads(self.store.index.get_meta("corpus_problems") or "[]")

    @property
    def sources(self) -> list[Source]:
        if self._sources is None:
            self._sources = sources_from_corpus(self.corpus.utterances, self.store.index)
            self.corpus.missing_audio({s.utt.audio: s.audio_hash for s in self._sources})
        return self._sources

    @cached_property
    def corpus_digest(self) -> str | None:
        """The corpus's inputs now (see `corpus_digest`): computed once per run, a directory scan."""
        return corpus_digest(self.config.corpus, self.config.label_range) if self.config.corpus else None

    @cached_property
    def rows_digest(self) -> str:
        return rows_digest(self.sources)

    def plan(self, stages: list[str]) -> Plan:
        key = tuple(stages)
        if key not in self._plans:  # the corpus and settings are fixed for an Extraction's life
            self._plans[key] = Plan(self.sources, self.config.params_for, stages)
        return self._plans[key]

    def view(self) -> CacheView:
        """The read API (CacheView) over what this extraction's feature set holds, under its settings."""
        return CacheView(self.root, self.config.name, config=self.config, store=self.store)

    def failures(self, stage: str) -> dict[str, Failure]:
        """Utterance -> its recorded failure under the current settings (other variants' are not these)."""
        return stage_state(self.store.index, self.store.shard_names(stage), self.plan([stage])[stage]).failed

    def completion_keys(self, stages: list[str], rows: str | None = None) -> dict[str, str]:
        return stage_keys(self.config, rows or self.rows_digest, stages)

    def _complete(self, keys: dict[str, str]) -> dict[str, StageReport] | None:
        """Reports of a run with nothing to do (planning.complete_markers); None otherwise (then plan)."""
        markers = complete_markers(self.store, keys)
        return None if markers is None else {name: StageReport(reused=m[1]) for name, m in markers.items()}

    def _unchanged(self, stages: list[str]) -> dict[str, StageReport] | None:
        """The cheapest check of all, before the manifest is even parsed: the same manifest bytes and
        settings as this feature set's last recorded extraction, every file it names with the size and
        mtime it had, and complete stages for those inputs. Then nothing is read or planned."""
        if self._corpus is not None or self.config.corpus is None:
            return None
        index = self.store.index
        record = index.feature_set(self.config.name)
        digest_now = self.corpus_digest
        if (record is None or not digest_now or record.corpus_digest != digest_now
                or record.config != self._config_json() or not set(stage_order(stages)) <= set(record.stages)
                or index.get_meta("utterances_digest") != record.rows_digest
                or not index.recorded_files_unchanged()):
            return None
        return self._complete(self.completion_keys(stages, record.rows_digest))

    def _config_json(self) -> str:
        return self.config.model_dump_json(exclude={"cache", "workers", "scheduler", "chunk_size"})

    def run(self, stages: list[str], progress: bool = True, wait_s: float = 0.0,
            force: bool = False) -> dict[str, StageReport]:
        """Bring the stages up to date. Unless `force`, first check that what the stages with a
        declared output size would write fits in the cache's filesystem."""
        preflight(self.config, stages)
        try:
            return self._run(stages, progress, wait_s, force)
        except MsfError as e:
            self._remove_if_unused(refused_corpus=isinstance(e, CorpusError))
            raise

    def _remove_if_unused(self, refused_corpus: bool) -> None:
        """Remove the cache folder this extraction created when nothing was recorded in it (a file hash
        is kept, unless the corpus was refused: its rows read before the refusal are no corpus) and it
        holds nothing but the index and the lock (never a folder of the user's)."""
        import shutil

        if not self._created or not self.store.index.is_empty(
                ("utterances", "file_hashes") if refused_corpus else ()):
            return
        ours = {INDEX_FILE, *(f"{INDEX_FILE}{x}" for x in ("-wal", "-shm", "-journal")), ".lock"}
        if all(p.name in ours or (p.is_dir() and not any(p.iterdir())) for p in self.root.iterdir()):
            self.store.close()
            shutil.rmtree(self.root, ignore_errors=True)
            self._removed = True

    def _run(self, stages: list[str], progress: bool, wait_s: float, force: bool) -> dict[str, StageReport]:
        with CacheLock(self.root, wait_s=wait_s):
            unchanged = self._unchanged(stages)
            if unchanged is not None:
                return unchanged
            index = self.store.index
            index.save_set(self.config.name)
            commits = index.commits
            try:
                with progress_bar(progress) as bar:
                    self._take_in(bar)
                    self._record(stages)
                    keys = self.completion_keys(stages)
                    complete = self._complete(keys)  # everything fresh at the last run with these very inputs
                    if complete is not None:
                        return complete
                    if not force:
                        self._check_free_space(stages)
                    return self._run_chunks(bar, stages, keys)
            except BaseException:
                # A run that stopped before committing anything (a model that cannot load, no scheduler,
                # a full disk) leaves the feature set as it was: re-recorded with settings nothing was
                # extracted with, it would point training at nothing and `cache gc` at the features
                # that do exist. After a commit the new settings stand, so gc keeps the partial work.
                if index.commits == commits:
                    index.restore_set(self.config.name)
                raise

    # -- the corpus, a chunk at a time ---------------------------------------------------------
    def _take_in(self, bar: Progress) -> None:
        """The first pass over the corpus, `chunk_size` utterances at a time: each one's files hashed by
        content (read once, or not at all when their size and mtime are as recorded), its row recorded
        and digested (`rows_digest`), its id kept by SQLite as one of the run's members (a duplicate of
        an earlier chunk is refused there). The driver never holds the corpus whole."""
        index = self.store.index
        rows = RowsDigest()
        task = bar.add_task("hashing", total=None)
        missing: list[str] = []

        def take(utts: list[Utterance]) -> None:
            sources = sources_from_corpus(utts, index, lambda n: bar.advance(task, n))
            missing.extend(str(CorpusProblem.missing_audio(s.utt.id, s.utt.audio))
                           for s in sources if s.audio_hash == "missing")
            index.record_utterances(s.record() for s in sources)
            rows.update(sources)

        size = self.config.chunk_size
        if self._corpus is not None:  # given whole (calibration, tests)
            corpus = self._corpus
            index.start_members()
            for start in range(0, len(corpus.utterances), size):
                chunk = corpus.utterances[start : start + size]
                index.add_members([u.id for u in chunk])
                take(chunk)
        elif corpus_recorded(index, self.config, self.corpus_digest) and self._members_recorded():
            # unchanged since this set's last extraction: its rows as recorded, the reader not run
            corpus = Corpus(corpus_source(self.config.corpus)[0], self.config.corpus, [],  # type: ignore
                            recorded_problems(index))
            index.order_members(None)
            n = index.run_member_count()
            for start in range(1, n + 1, size):
                take([r.utt for r in index.run_rows(start, start + size - 1)])
        else:
            index.start_members()  # (anew: a recorded set whose rows are gone left its members there)
            corpus = load_corpus(self.config.corpus, self.config.label_range, check_audio=False,  # type: ignore
                                 stream=Streaming(take, index.add_members, size))
        if index.run_member_count() == 0:
            no_usable_utterances(corpus)
        bar.update(task, total=bar.tasks[task].completed)
        self._problems = [str(p) for p in corpus.problems] + missing
        self.rows_digest = rows.hexdigest()

    def _members_recorded(self) -> bool:
        """The set's members taken as the run's, when every one has its recorded row."""
        index = self.store.index
        index.members_from_set(self.config.name)
        return index.run_member_count(recorded=True) == index.run_member_count()

    def _chunk_plans(self, stages: list[str]) -> Iterator[Plan]:
        """The run's members planned `chunk_size` at a time (planning.chunk_plans)."""
        return chunk_plans(self.store.index, self.config.params_for, stages, self.config.chunk_size)

    def planner(self, plan: Plan) -> TaskPlanner:
        return TaskPlanner(self.store, plan, self.config.shard_size, self.executor.workers)

    # -- what the cache is made from -------------------------------------------------------
    def _record(self, stages: list[str]) -> None:
        """The run's problems and the named set's settings and members (the rows were recorded by
        `_take_in`), so the cache stands alone: training, status and show need only the cache
        directory. Written only when something changed."""
        index = self.store.index
        # Refused manifest rows never reach a stage: keep them where `msf status --failed` looks.
        index.set_meta("corpus_problems", json.dumps(self._problems))
        rows = self.rows_digest
        if index.get_meta("utterances_digest") != rows:
            index.set_meta("utterances_digest", rows)
        name = self.config.name
        config = self._config_json()
        spec = self._corpus.spec if self._corpus is not None else self.config.corpus
        corpus = self.corpus_digest or ""
        old = index.feature_set(name)
        order = stage_order(stages)
        wanted = stage_order(list(dict.fromkeys([*(old.stages if old else []), *order])))  # upstream first
        # the rows digest covers every member's id, in order: equal digests, equal members
        if old is None or (old.config, old.stages, old.corpus, old.rows_digest, old.corpus_digest) != (
                config, wanted, spec, rows, corpus):
            index.record_set(FeatureSetRecord(name, config, wanted, spec, rows, corpus, time.time()))  # type: ignore

    # -- the stages, chunk by chunk ---------------------------------------------------------------
    def _run_chunks(self, bar: Progress, stages: list[str], keys: dict[str, str]) -> dict[str, StageReport]:
        """Every stage over each chunk in turn (a chunk's plan is made once and dropped after it), each
        finished shard committed at once; a stage whose every entry ends fresh records its marker."""
        index = self.store.index
        order = stage_order(stages)
        for name in order:
            cls = stage_class(name)
            params = self.config.params_for(cls)
            index.record_params(params_digest(cls, params), name, cls.version, cls.fingerprint_params(params))
        n = index.run_member_count()
        bars = {name: bar.add_task(name, total=n) for name in order}
        tally = {name: _StageTally() for name in order}
        plans = self._chunk_plans(stages)
        try:
            for plan in plans:
                for name in plan.order:
                    self._run_stage(bar, bars[name], plan, name, tally[name])
        finally:
            plans.close()
        for name in order:
            t = tally[name]
            if t.complete:
                index.record_completion(name, keys[name], t.shards, t.entries, t.nbytes)
        return {name: tally[name].report for name in order}

    def _run_stage(self, bar: Progress, task: Any, plan: Plan, name: str, tally: _StageTally) -> None:
        """One stage over one chunk's plan."""
        t0 = time.perf_counter()
        sp = plan[name]
        index = self.store.index
        work = self.planner(plan).work(name, locate=True)
        state, groups, blocked = work.state, work.tasks, work.blocked
        report = tally.report
        reused = len(state.fresh) - work.recomputed
        report.reused += reused
        tally.shards.update(state.fresh.values())  # of the fresh entries, for the marker
        tally.nbytes += state.fresh_bytes
        tally.entries += len(sp.fingerprints)
        bar.advance(task, reused)
        computed = failed = 0
        if blocked:
            index.commit([], blocked)
            failed += len(blocked)
            bar.advance(task, len(blocked))
        if groups:
            params = sp.params.model_dump(mode="json")
            threads = 0 if self.config.scheduler else max(1, (os.cpu_count() or 1) // self.executor.workers)
            # A task's items (each utterance's manifest row) are made as the executor takes the task
            argsets = ((str(self.root), name, params, [self._task_item(plan, u, work.upstream[u]) for u in g],
                        self.config.plugins, threads) for g in groups)
            # two tasks per worker in flight: one running, one queued, and nothing more held anywhere
            results = self.executor.run(run_task, argsets, window=2 * self.executor.workers)
            try:
                for i, res in results:
                    group = groups[i]
                    if isinstance(res, MsfError):  # no model, a bad setting: one clear error, not N failures
                        raise res
                    if isinstance(res, BaseException):  # a crashed task fails its items, not the run
                        res = TaskResult(failed=[(u, f"task failed: {describe_error(res)}", "task") for u in group])
                    index.commit([plan.entry(name, u, res.shard, row, checksum, size)  # type: ignore[arg-type]
                                  for u, row, checksum, size in res.done],
                                 [Failure(name, u, sp.fingerprints[u], err, time.time(), kind)
                                  for u, err, kind in res.failed])
                    fault_point("commit")
                    if res.shard:
                        tally.shards.add(res.shard)
                        tally.nbytes += sum(size for *_, size in res.done)
                    computed += len(res.done)
                    failed += len(res.failed)
                    bar.advance(task, len(group))
            finally:
                results.close()
        report.computed += computed
        report.failed += failed
        tally.complete &= failed == 0 and computed + reused == len(sp.fingerprints)
        report.seconds = round(report.seconds + time.perf_counter() - t0, 3)

    @staticmethod
    def _task_item(plan: Plan, uid: str, upstream: dict[str, tuple[str, int]]) -> TaskItem:
        src = plan.sources[uid]
        return TaskItem(src.utt.to_dict(), src.audio_hash, upstream)
