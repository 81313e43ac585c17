"""The runner: plans what is stale from fingerprints, runs shard-sized tasks on Dask, commits the index.

Workers compute and write whole shards; only this (driver) process writes the index, one shard's
results per transaction, so an interrupted run keeps everything committed and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from msf.pipeline.cache_index import Entry, Failure
from msf.pipeline.config import ConfigError, MsfConfig
from msf.pipeline.corpus import Corpus, Utterance, load_corpus
from msf.pipeline.faults import fault_point
from msf.pipeline.fingerprint import canonical_json, fingerprint_for
from msf.pipeline.lock import CacheLock
from msf.pipeline.shard_store import ShardFormatError, ShardReader, ShardStore, normalise, write_shard
from msf.pipeline.model_loading import ModelUnavailable
from msf.pipeline.stage import (
    Item, Record, Stage, StageParams, UtteranceError, load_plugins, stage_class, stage_order,
)

log = logging.getLogger("msf")
STDERR = Console(stderr=True)


# ----------------------------------------------------------------------------------------------
# Worker side: one task = one shard
# ----------------------------------------------------------------------------------------------
_STAGES: dict[tuple[str, str], Stage] = {}  # models load once per worker process, not per task
_READERS: dict[str, ShardReader] = {}


def _stage_instance(name: str, params: dict[str, Any], root: str) -> Stage:
    key = (name, canonical_json(params))
    if key not in _STAGES:
        cls = stage_class(name)
        stage = cls(cls.Params(**params), workdir=Path(root) / "_work" / name)
        stage.setup()
        _STAGES[key] = stage
    return _STAGES[key]


def describe_error(e: BaseException) -> str:
    return str(e) if isinstance(e, UtteranceError) else f"{type(e).__name__}: {e}"


@dataclass
class TaskItem:
    utt: dict[str, Any]
    fingerprint: str
    audio_hash: str
    upstream: dict[str, tuple[str, int]]  # stage -> (shard, row)


@dataclass
class TaskResult:
    shard: str | None = None
    done: list[tuple[str, int, str, str]] = field(default_factory=list)  # utt, row, fingerprint, checksum
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # utt, fingerprint, error


def _compute_batch(stage: Stage, batch: list[Item]) -> list[Record | Exception]:
    try:
        out = stage.compute(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"stage {stage.name} returned {len(out)} records for {len(batch)} items")
        return out
    except Exception:  # noqa: BLE001 - isolate the culprit: redo the batch one item at a time
        if len(batch) == 1:
            raise
        results: list[Record | Exception] = []
        for item in batch:
            try:
                results.extend(stage.compute([item]))
            except Exception as e:  # noqa: BLE001
                results.append(e)
        return results


def _batches(stage: Stage, prepared: list[tuple[TaskItem, Item]]) -> Iterator[list[tuple[TaskItem, Item]]]:
    if stage.group_by:  # one whole group per compute() call
        groups: dict[str, list[tuple[TaskItem, Item]]] = {}
        for p in prepared:
            groups.setdefault(str(getattr(p[1].utt, stage.group_by)), []).append(p)
        yield from groups.values()
        return
    # Length-bucketed batches: similar durations together, so padding wastes little.
    prepared = sorted(prepared, key=lambda p: p[1].inputs.get("audio", {}).get("duration", 0.0))
    for start in range(0, len(prepared), stage.batch_size):
        yield prepared[start : start + stage.batch_size]


def run_task(
    root: str, stage_name: str, params: dict[str, Any], items: list[TaskItem], plugins: list[str] = ()  # type: ignore[assignment]
) -> TaskResult:
    load_plugins(list(plugins))
    stage = _stage_instance(stage_name, params, root)
    reader = _READERS.setdefault(root, ShardReader())
    prepared: list[tuple[TaskItem, Item]] = []
    result = TaskResult()
    for ti in items:
        try:
            inputs = {s: reader.row(Path(root) / s / shard, row) for s, (shard, row) in ti.upstream.items()}
        except Exception as e:  # noqa: BLE001 - an unreadable upstream shard fails only these items
            result.failed.append((ti.utt["id"], ti.fingerprint, f"cannot read upstream entry: {describe_error(e)}"))
            continue
        prepared.append((ti, Item(Utterance.from_dict(ti.utt), inputs, ti.audio_hash)))
    ok_ids: list[str] = []
    ok_records: list[Record] = []
    ok_fps: list[str] = []
    for chunk in _batches(stage, prepared):
        try:
            outputs = _compute_batch(stage, [it for _, it in chunk])
        except Exception as e:  # noqa: BLE001
            outputs = [e]
        for (ti, _), out in zip(chunk, outputs):
            if isinstance(out, BaseException):
                result.failed.append((ti.utt["id"], ti.fingerprint, describe_error(out)))
                continue
            try:
                out = normalise(out)
            except ShardFormatError as e:
                result.failed.append((ti.utt["id"], ti.fingerprint, f"stage {stage_name} returned {e}"))
                continue
            ok_ids.append(ti.utt["id"])
            ok_records.append(out)
            ok_fps.append(ti.fingerprint)
    if ok_records:
        shard, sums = write_shard(Path(root) / stage_name, ok_ids, ok_records)
        result.shard = shard
        result.done = [(u, i, fp, s) for i, (u, fp, s) in enumerate(zip(ok_ids, ok_fps, sums))]
    return result


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------
@dataclass
class StageReport:
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0


@dataclass
class StagePlan:
    stage: type[Stage]
    params: StageParams
    fingerprints: dict[str, str]  # utt -> current fingerprint


@contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None) -> Iterator[Any]:
    """An existing cluster by address, or a local one (in-process threads for one worker)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=workers > 1,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def require_cache(cache: Path) -> None:
    if not (cache / "index.sqlite").is_file():
        raise ConfigError(f"no msf cache at {cache} (run `msf extract --cache {cache}` first)")


class Extraction:
    """One cache, one corpus, one resolved configuration."""

    def __init__(self, config: MsfConfig, corpus: Corpus | None = None):
        if corpus is None and config.corpus is None:
            raise ConfigError("no corpus: pass --corpus SPEC or set `corpus` in msf.toml")
        load_plugins(config.plugins)
        self.config = config
        self.corpus = corpus or load_corpus(config.corpus, config.label_range)  # type: ignore[arg-type]
        self.root = config.cache_dir()
        self.store = ShardStore(self.root)
        self._hashes: dict[str, str] | None = None

    @classmethod
    def from_cache(cls, cache: Path) -> tuple["Extraction", list[str]]:
        """The extraction a cache was made by (its recorded settings and corpus), and its stages."""
        require_cache(Path(cache))
        store = ShardStore(Path(cache))
        raw = store.index.get_meta("config")
        stages = json.loads(store.index.get_meta("stages") or "[]")
        store.close()
        if raw is None:
            raise ConfigError(f"the cache {cache} has no recorded extraction settings")
        return cls(MsfConfig.model_validate_json(raw).model_copy(update={"cache": Path(cache)})), stages

    def corpus_problems(self) -> list[str]:
        return json.loads(self.store.index.get_meta("corpus_problems") or "[]")

    def fresh(self, stages: list[str]) -> dict[str, dict[str, Entry]]:
        """Per stage, the entries whose fingerprint matches the current corpus and settings (one plan)."""
        plans = self.plan(stages)
        return {st: {u: e for u, e in self.store.index.entries(st).items()
                     if plans[st].fingerprints.get(u) == e.fingerprint} for st in stages}

    def close(self) -> None:
        self.store.close()

    @property
    def audio_hashes(self) -> dict[str, str]:
        if self._hashes is None:
            self._hashes = self.store.index.audio_hashes([u.audio for u in self.corpus.utterances])
        return self._hashes

    def plan(self, stages: list[str]) -> dict[str, StagePlan]:
        """Current fingerprints of every stage and utterance, upstream first; nothing is computed."""
        plans: dict[str, StagePlan] = {}
        for name in stage_order(stages):
            cls = stage_class(name)
            params = self.config.params_for(cls)
            fps = {}
            for u in self.corpus.utterances:
                ah = self.audio_hashes[u.audio]
                fields = {f: getattr(u, f) for f in cls.reads}
                upstream = {up: plans[up].fingerprints[u.id] for up in cls.needs}
                fps[u.id] = fingerprint_for(cls, params, ah, fields, upstream)
            if cls.group_by:
                fps = self._group_fingerprints(cls.group_by, fps)
            plans[name] = StagePlan(cls, params, fps)
        return plans

    def groups(self, field: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u in self.corpus.utterances:
            out.setdefault(str(getattr(u, field)), []).append(u.id)
        return out

    def _group_fingerprints(self, field: str, fps: dict[str, str]) -> dict[str, str]:
        """Each member's fingerprint also covers its group's: any member's change touches them all."""
        out = {}
        for members in self.groups(field).values():
            group = hashlib.blake2b(canonical_json(sorted((m, fps[m]) for m in members)).encode(),
                                    digest_size=16).hexdigest()
            out.update({m: hashlib.blake2b(f"{fps[m]}:{group}".encode(), digest_size=16).hexdigest()
                        for m in members})
        return out

    def status(self, stages: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, plan in self.plan(stages).items():
            entries = self.store.index.entries(name)
            failed = {f.utt for f in self.store.index.failures(name)}
            counts = {"total": len(plan.fingerprints), "fresh": 0, "stale": 0, "missing": 0, "failed": 0}
            for utt, fp in plan.fingerprints.items():
                e = entries.get(utt)
                if e is not None and e.fingerprint == fp:
                    counts["fresh"] += 1
                elif utt in failed:
                    counts["failed"] += 1
                elif e is not None:
                    counts["stale"] += 1
                else:
                    counts["missing"] += 1
            out[name] = counts
        return out

    def run(self, stages: list[str], progress: bool = True, wait_s: float = 0.0) -> dict[str, StageReport]:
        with CacheLock(self.root, wait_s=wait_s):
            self.store.index.set_meta("config", self.config.model_dump_json())
            self.store.index.set_meta("stages", json.dumps(stage_order(stages)))
            # Refused manifest rows never reach a stage: keep them where `msf status --failed` looks.
            self.store.index.set_meta("corpus_problems", json.dumps([str(p) for p in self.corpus.problems]))
            plans = self.plan(stages)
            reports: dict[str, StageReport] = {}
            with dask_client(self.config.workers, self.config.scheduler) as client, _progress(progress) as bar:
                for name, plan in plans.items():
                    reports[name] = self._run_stage(client, bar, plan, plans)
            return reports

    def _run_stage(self, client: Any, bar: Progress, plan: StagePlan, plans: dict[str, StagePlan]) -> StageReport:
        from dask.distributed import as_completed

        t0 = time.perf_counter()
        name = plan.stage.name
        report = StageReport()
        index = self.store.index
        entries = index.entries(name)
        upstream_entries = {up: index.entries(up) for up in plan.stage.needs}
        upstream_failures = {up: {f.utt: f.error for f in index.failures(up)} for up in plan.stage.needs}
        existing_shards = {s for s in {e.shard for e in entries.values()} if self.store.shard_path(name, s).exists()}
        todo: list[TaskItem] = []
        ready: dict[str, TaskItem] = {}  # every item whose inputs are fresh (group stages need them all)
        blocked: list[Failure] = []
        for u in self.corpus.utterances:
            fp = plan.fingerprints[u.id]
            e = entries.get(u.id)
            fresh = e is not None and e.fingerprint == fp and e.shard in existing_shards
            upstream: dict[str, tuple[str, int]] = {}
            for up in plan.stage.needs:
                ue = upstream_entries[up].get(u.id)
                if ue is None or ue.fingerprint != plans[up].fingerprints[u.id]:
                    if not fresh:
                        why = upstream_failures[up].get(u.id, "no fresh entry")
                        blocked.append(Failure(name, u.id, fp, f"upstream stage {up!r} failed: {why}", time.time()))
                    break
                upstream[up] = (ue.shard, ue.row)
            else:
                ready[u.id] = TaskItem(u.to_dict(), fp, self.audio_hashes[u.audio], upstream)
                if not fresh:
                    todo.append(ready[u.id])
            if fresh:
                report.reused += 1
        if blocked:
            index.commit([], blocked)
            report.failed += len(blocked)
        if plan.stage.group_by:
            groups = self._whole_groups(plan, todo, ready, report)
        else:
            sizes = index.audio_sizes()
            todo.sort(key=lambda t: sizes.get(t.utt["audio"], 0))  # similar lengths share a task
            # Shard-sized tasks, but never fewer tasks than workers: a small corpus still uses them all.
            size = max(1, min(self.config.shard_size, -(-len(todo) // max(1, len(client.nthreads())))))
            groups = [todo[i : i + size] for i in range(0, len(todo), size)]
        task = bar.add_task(name, total=len(todo))
        params = plan.params.model_dump(mode="json")
        futures = {
            client.submit(run_task, str(self.root), name, params, g, self.config.plugins, pure=False): g
            for g in groups
        }
        for fut in as_completed(list(futures)):
            group = futures[fut]
            try:
                res: TaskResult = fut.result()
            except ModelUnavailable:
                for other in futures:  # no model, no stage: one clear error instead of N failures
                    other.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - a crashed task fails its items, not the run
                res = TaskResult(failed=[(t.utt["id"], t.fingerprint, f"task failed: {describe_error(e)}")
                                         for t in group])
            index.commit(
                [Entry(name, u, res.shard, row, fp, cs) for u, row, fp, cs in res.done],  # type: ignore[arg-type]
                [Failure(name, u, fp, err, time.time()) for u, fp, err in res.failed],
            )
            fault_point("commit")
            report.computed += len(res.done)
            report.failed += len(res.failed)
            bar.advance(task, len(group))
        report.seconds = round(time.perf_counter() - t0, 3)
        return report


    def _whole_groups(self, plan: StagePlan, todo: list[TaskItem], ready: dict[str, TaskItem],
                      report: StageReport) -> list[list[TaskItem]]:
        """Tasks of whole groups: a group with anything to compute is computed with all its ready
        members, since its statistics need them; groups are packed up to shard_size per task."""
        stale = {t.utt["id"] for t in todo}
        tasks: list[list[TaskItem]] = [[]]
        for members in self.groups(plan.stage.group_by).values():  # type: ignore[arg-type]
            if not stale.intersection(members):
                continue
            items = [ready[m] for m in members if m in ready]
            report.reused -= sum(1 for t in items if t.utt["id"] not in stale)
            todo.extend(t for t in items if t.utt["id"] not in stale)
            if tasks[-1] and len(tasks[-1]) + len(items) > self.config.shard_size:
                tasks.append([])
            tasks[-1].extend(items)
        return [t for t in tasks if t]


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("[bold]{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=STDERR,
        disable=not enabled,
    )
    with bar:
        yield bar


def reports_json(reports: dict[str, StageReport]) -> str:
    return json.dumps({"stages": {k: asdict(v) for k, v in reports.items()}})
