"""Planning: the fingerprint of every (stage, utterance) for one configuration and corpus, and the one
rule that decides what is fresh, stale, missing or failed, with the reason. The runner, `msf status`,
the dry run, the trainer and `msf predict` all ask this module; nothing here computes a feature.

An entry is fresh when the index holds an entry of that stage and utterance under the fingerprint
computed now and its shard exists. Entries are kept under the fingerprint that made them, so
several variants of a stage live side by side and returning to a setting finds its entries again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from msf.pipeline.cache.fingerprint import (Parts, canonical_json, digest, fingerprint_for, join_parts, params_digest,
                                            split_parts)
from msf.pipeline.cache.index import CacheIndex, Entry, Failure, RecordedUtterance
from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.config import MsfConfig
from msf.pipeline.corpus import FILE_EXTRAS, Utterance
from msf.pipeline.stage import Stage, StageParams, needs_for, stage_class, stage_order


@dataclass(slots=True)  # not frozen: at 100k utterances a frozen dataclass costs 0.3 s to build
class Source:
    """One utterance as fingerprints see it: its manifest row and the content hashes of its files."""

    utt: Utterance
    audio_hash: str
    files: dict[str, str] = field(default_factory=dict)  # extra key -> content hash (FILE_EXTRAS)

    def record(self) -> tuple:
        """The row the cache records (CacheIndex.record_utterances)."""
        return (*self.utt.to_row(), self.audio_hash, canonical_json(self.files) if self.files else "{}")


def sources_from_corpus(utterances: list[Utterance], index: CacheIndex,
                        progress: Callable[[int], None] | None = None) -> list[Source]:
    """Hashes the audio (and provided alignment files) by content, re-reading a file only when its
    size or mtime changed since the cache last saw it."""
    paths = [u.audio for u in utterances]
    with_files = [u for u in utterances if u.extra and not FILE_EXTRAS.isdisjoint(u.extra)]
    paths += [u.extra[k] for u in with_files for k in FILE_EXTRAS if k in u.extra]
    hashes = index.file_hashes(paths, progress)
    files = {u.id: {k: hashes[u.extra[k]] for k in FILE_EXTRAS if k in u.extra} for u in with_files}
    return [Source(u, hashes[u.audio], files.get(u.id, {})) for u in utterances]


class RowsDigest:
    """Everything a fingerprint can take from the corpus, each utterance's recorded row and hashes,
    digested as the rows come (a chunk at a time): equal to `rows_digest` of them all."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self._first = True

    def update(self, sources: Iterable[Source]) -> None:
        for s in sources:
            self._h.update(("" if self._first else "\n").encode() + "\x1f".join(map(str, s.record())).encode())
            self._first = False

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def rows_digest(sources: Iterable[Source]) -> str:
    h = RowsDigest()
    h.update(sources)
    return h.hexdigest()


def run_chunks(index: CacheIndex, size: int, group_by: str | None) -> Iterator[list[Source]]:
    """The run's members (CacheIndex.add_members) as sources, at most `size` at a time, each chunk
    ending where a `group_by` group ends (a group stage's group is planned and computed whole; an
    unknown speaker is a group of its own); a group larger than `size` is a chunk of its own. A corpus
    that fits in one chunk keeps its manifest order."""
    n = index.run_member_count()
    group_by = group_by if n > size else None
    index.order_members(group_by)
    pending: list[Source] = []
    for first in range(1, n + 1, size):
        pending += [Source(r.utt, r.audio_hash, r.files) for r in index.run_rows(first, first + size - 1)]
        more = first + size <= n
        while len(pending) > size or (pending and not more):
            cut = _chunk_end(pending, size, group_by, more)
            if cut is None:  # a group that may go on in the rows not read yet
                break
            yield pending[:cut]
            pending = pending[cut:]


def chunk_plans(index: CacheIndex, params_of: Callable[[type[Stage]], StageParams], stages: list[str],
                size: int) -> Iterator[Plan]:
    """The run's members (`run_chunks`) planned for `stages` a chunk at a time, whole groups of the
    stages' group field in a chunk (every member in one, when two stages group by different fields),
    the index's per-stage reads scoped to each chunk while it is used: the driver's and the view's."""
    groups = {stage_class(n).group_by for n in stage_order(stages)} - {None}
    if len(groups) > 1:
        size = max(1, index.run_member_count())
    for chunk in run_chunks(index, size, next(iter(groups), None)):
        plan = Plan(chunk, params_of, stages)
        with index.scope(plan.sources):
            yield plan


def _chunk_end(pending: list[Source], size: int, group_by: str | None, more: bool) -> int | None:
    """Where the next chunk of `pending` ends: at the last group's end within `size`, else at the end of
    the first group (larger than `size`); None when that group may go on (`more` rows to read)."""
    if len(pending) <= size and not more:
        return len(pending)
    if group_by is None:
        return size
    keys = [s.utt.group_key(group_by) for s in pending]
    ends = [i for i in range(1, len(keys)) if keys[i - 1] != keys[i]]  # a group ends before i
    within = [i for i in ends if i <= size]
    if within:
        return within[-1]
    return ends[0] if ends else (None if more else len(pending))


def completion_keys(rows: str, params: dict[str, str], order: list[str]) -> dict[str, str]:
    """Per stage, a digest of everything its fingerprints are made of: the utterances' rows and hashes
    (`rows`), and the parameter digests of the stage and everything upstream of it. A run that
    leaves every entry of a stage fresh records its key with the shards those entries are in; a
    later run (or `msf status`) with the same key only checks that those shards still exist, and
    plans nothing: the cheapest check first, as `dvc status` does. Dropping an entry (verify, gc)
    forgets the stage's keys."""
    keys: dict[str, str] = {}
    for name in order:
        ups = sorted(keys[up] for up in stage_class(name).needs)
        keys[name] = digest("|".join([params[name], *ups] if ups else [params[name], rows]))
    return keys


def stage_keys(config: MsfConfig, rows: str, stages: list[str]) -> dict[str, str]:
    """`completion_keys` of `stages` and everything upstream of them under these settings and rows."""
    order = stage_order(stages)
    params = {n: params_digest(stage_class(n), config.params_for(stage_class(n))) for n in order}
    return completion_keys(rows, params, order)


def complete_markers(store: ShardStore, keys: dict[str, str]) -> dict[str, tuple[list[str], int, int]] | None:
    """Each stage's completion marker (shards, entries, bytes) for its key, when every stage has one and
    its shards are all there; None otherwise (then plan): the cheapest check, shared by the runner and
    the read API."""
    out = {}
    for name, key in keys.items():
        marker = store.index.completion(name, key)
        if marker is None or not set(marker[0]) <= store.shard_names(name):
            return None
        out[name] = marker
    return out


def sources_from_cache(recorded: Iterable[RecordedUtterance]) -> list[Source]:
    """The utterances as the cache recorded them: no audio needed."""
    return [Source(r.utt, r.audio_hash, r.files) for r in recorded]


@dataclass
class StagePlan:
    stage: type[Stage]
    params: StageParams
    params_digest: str
    fingerprints: dict[str, str]  # utterance -> fingerprint now
    group_digests: dict[str, str] = field(default_factory=dict)  # group key -> digest (group stages)


class Plan:
    """Fingerprints of the requested stages and everything upstream of them, upstream first."""

    def __init__(self, sources: list[Source], params_of: Callable[[type[Stage]], StageParams], stages: list[str]):
        self.sources = {s.utt.id: s for s in sources}
        self.order = stage_order(stages)
        self.stages: dict[str, StagePlan] = {}
        self._fields: dict[tuple[tuple[str, ...], str], str] = {}
        for name in self.order:
            cls = stage_class(name)
            params = params_of(cls)
            self.stages[name] = self._plan(cls, params)

    def __getitem__(self, stage: str) -> StagePlan:
        return self.stages[stage]

    def _plan(self, cls: type[Stage], params: StageParams) -> StagePlan:
        pd = params_digest(cls, params)
        ups = [(up, self.stages[up].fingerprints, cls.needed_unless.get(up)) for up in cls.needs]
        fps: dict[str, str] = {}
        upstream_of: dict[str, str] = {}
        for uid, src in self.sources.items():  # the hot loop at 100k utterances: plain strings only
            upstream = upstream_of[uid] = ";".join(f"{up}={fp[uid]}" for up, fp, unless in ups
                                                   if not (unless and getattr(src.utt, unless)))
            fps[uid] = fingerprint_for(pd, src.audio_hash, self.fields(cls, src), upstream)
        plan = StagePlan(cls, params, pd, fps)
        if cls.group_by:  # every member's fingerprint also covers its group's members
            members: dict[str, list[str]] = {}
            for uid, src in self.sources.items():
                members.setdefault(src.utt.group_key(cls.group_by), []).append(uid)
            for key, ms in members.items():
                plan.group_digests[key] = digest(canonical_json(sorted((m, fps[m]) for m in ms)))
            # the group's digest joins the member's own: fingerprint_for's second step, on the base
            plan.fingerprints = {uid: fingerprint_for(pd, src.audio_hash, self.fields(cls, src), upstream_of[uid],
                                                      plan.group_digests[self.group_of(cls, uid)])
                                 for uid, src in self.sources.items()}
        return plan

    def fields(self, cls: type[Stage], src: Source) -> str:
        """`name=digest;...` of the utterance fields a stage reads (absent ones left out)."""
        if not cls.reads:
            return ""
        key = (cls.reads, src.utt.id)
        if key not in self._fields:
            pairs = {}
            for f in cls.reads:
                if f.startswith("extra."):
                    name = f[6:]
                    if name in src.utt.extra:
                        pairs[f] = src.files.get(name) or digest(str(src.utt.extra[name]))
                elif getattr(src.utt, f) not in (None, ""):
                    pairs[f] = digest(str(getattr(src.utt, f)))
            self._fields[key] = join_parts(pairs)
        return self._fields[key]

    def group_of(self, cls: type[Stage], uid: str) -> str:
        return self.sources[uid].utt.group_key(cls.group_by)  # type: ignore[arg-type]

    def parts(self, stage: str, uid: str) -> Parts:
        """The fingerprint of (stage, utterance) taken apart, as the index keeps it beside the entry."""
        sp = self.stages[stage]
        cls, src = sp.stage, self.sources[uid]
        upstream = join_parts({up: self.stages[up].fingerprints[uid] for up in needs_for(cls, src.utt)})
        group = sp.group_digests[self.group_of(cls, uid)] if cls.group_by else ""
        return Parts(sp.params_digest, src.audio_hash, self.fields(cls, src), upstream, group)

    def entry(self, stage: str, uid: str, shard: str, row: int, checksum: str, nbytes: int) -> Entry:
        p = self.parts(stage, uid)
        return Entry(stage, uid, self.stages[stage].fingerprints[uid], shard, row, checksum, nbytes, p.params,
                     p.audio, p.fields, p.upstream, p.group)


# The reasons of an entry with nothing stored for it (`reasons`): the utterance is new to the cache, or
# known (an upstream stage has it) and this stage has not run on it yet.
NEW_UTTERANCE, NOT_EXTRACTED = "new utterance", "not extracted yet"


@dataclass
class StageState:
    """Where each utterance of one stage stands now."""

    fresh: dict[str, str] = field(default_factory=dict)  # utterance -> shard of its fresh entry
    fresh_bytes: int = 0
    failed: dict[str, Failure] = field(default_factory=dict)  # failed under the current fingerprint
    stale: list[str] = field(default_factory=list)  # has entries, none fresh under the current fingerprint
    shard_gone: dict[str, str] = field(default_factory=dict)  # stale: the entry wanted is indexed, its file gone
    missing: list[str] = field(default_factory=list)  # no entry at all

    def counts(self) -> dict[str, int]:
        return {"total": len(self.fresh) + len(self.failed) + len(self.stale) + len(self.missing),
                "fresh": len(self.fresh), "stale": len(self.stale), "missing": len(self.missing),
                "failed": len(self.failed)}

    @property
    def todo(self) -> list[str]:
        return [*self.stale, *self.missing, *self.failed]


def stage_state(index: CacheIndex, shards: set[str], sp: StagePlan) -> StageState:
    """The one freshness rule: an entry under the current fingerprint whose shard exists."""
    name = sp.stage.name
    stored = index.stored(name)
    seen = {u for u, _ in stored}
    failures = {(f.utt, f.fingerprint): f for f in index.failures(name)}
    state = StageState()
    for uid, fp in sp.fingerprints.items():
        where = stored.get((uid, fp))
        if where is not None and where[0] in shards:
            state.fresh[uid] = where[0]
            state.fresh_bytes += where[1]
        elif (uid, fp) in failures:
            state.failed[uid] = failures[(uid, fp)]
        elif uid in seen:
            state.stale.append(uid)
            if where is not None:  # deleted outside msf
                state.shard_gone[uid] = where[0]
        else:
            state.missing.append(uid)
    return state


def status_of(plans: Iterable[Plan], store: ShardStore, why: bool = False) -> dict[str, dict[str, Any]]:
    """Per stage: total, fresh, stale, missing, failed; `bytes` of the fresh entries and `bytes_all` of
    every variant the cache keeps; with `why`, the stale, missing and failed entries grouped by reason.
    Summed over `plans`: one plan of the whole set, or a chunk's at a time (each chunk's index reads
    scoped to it while it is counted)."""
    stored_bytes = store.index.bytes_by_stage()
    out: dict[str, dict[str, Any]] = {}
    for plan in plans:
        for name in plan.order:
            state = stage_state(store.index, store.shard_names(name), plan[name])
            row = out.setdefault(name, {"total": 0, "fresh": 0, "stale": 0, "missing": 0, "failed": 0, "bytes": 0,
                                        "bytes_all": stored_bytes.get(name, 0), **({"why": {}} if why else {})})
            for k, v in state.counts().items():
                row[k] += v
            row["bytes"] += state.fresh_bytes
            if why:
                for r, u in reasons(plan, store.index, name, state).items():
                    row["why"][r] = row["why"].get(r, 0) + len(u)
    if why:  # the commonest reason first, as `reasons` orders them
        for row in out.values():
            row["why"] = dict(sorted(row["why"].items(), key=lambda kv: -kv[1]))
    return out


def reasons(plan: Plan, index: CacheIndex, stage: str, state: StageState) -> dict[str, list[str]]:
    """Stale, missing and failed entries grouped by why (reason -> utterances), as `msf status --why`
    prints them: `acoustic.layers: [6] -> [12]`, `audio content changed`, `transcript changed`,
    `upstream align changed`, `new utterance`, ... A stale entry is compared with the newest entry
    the cache holds for it."""
    out: dict[str, list[str]] = {}
    if state.stale:
        latest = index.latest(stage)
        diffs: dict[tuple[str, str], str] = {}
        for uid in state.stale:
            gone = state.shard_gone.get(uid)
            why = (f"shard file {gone} missing (deleted outside msf)" if gone is not None
                   else _why(plan, index, stage, uid, latest[uid], diffs))
            out.setdefault(why, []).append(uid)
    if state.missing:
        root = plan.order[0]
        known = {u for u, _ in index.stored(root)} if stage != root else set()
        for uid in state.missing:
            out.setdefault(NOT_EXTRACTED if uid in known else NEW_UTTERANCE, []).append(uid)
    if state.failed:
        out["failed (msf status --failed lists the errors)"] = list(state.failed)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def _why(plan: Plan, index: CacheIndex, stage: str, uid: str, old: Entry, diffs: dict[tuple[str, str], str]) -> str:
    now = plan.parts(stage, uid)
    found: list[str] = []
    if old.params != now.params:
        key = (old.params, now.params)
        if key not in diffs:
            diffs[key] = _params_diff(index, plan[stage], old.params)
        found.append(diffs[key])
    if old.audio != now.audio:
        found.append("audio content changed")
    before, after = split_parts(old.fields), split_parts(now.fields)
    found += [f"{f} changed" for f in sorted(set(before) | set(after)) if before.get(f) != after.get(f)]
    if old.audio == now.audio:  # new audio changes every upstream entry too: the audio is the reason
        before, after = split_parts(old.upstream), split_parts(now.upstream)
        found += [f"upstream {u} changed" for u in plan[stage].stage.needs if before.get(u) != after.get(u)]
    if old.grp != now.group and not found:
        found.append(f"another utterance of its {plan[stage].stage.group_by} group changed")
    return ", ".join(found) or "fingerprint changed"


def _params_diff(index: CacheIndex, sp: StagePlan, old_digest: str) -> str:
    name = sp.stage.name
    old = index.params(old_digest)
    if old is None:
        return f"{name} parameters changed"
    version, before = old
    if version != sp.stage.version:
        return f"{name} version {version} -> {sp.stage.version}"
    return ", ".join(params_changes(name, before, sp.stage.fingerprint_params(sp.params))) or f"{name} parameters changed"


def params_changes(stage: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`stage.key: old -> new` for every parameter that differs."""
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return [f"{stage}.{k}: {canonical_json(before.get(k))} -> {canonical_json(after.get(k))}" for k in keys]


def settings_changes(before: MsfConfig, after: MsfConfig, stages: list[str]) -> list[str]:
    """What differs, between two feature sets' settings, in the parameters that shape `stages` and
    everything upstream of them (profile defaults included; volatile ones such as devices left out)."""
    out: list[str] = []
    for name in stage_order(stages):
        cls = stage_class(name)
        out += params_changes(name, cls.fingerprint_params(before.params_for(cls)),
                              cls.fingerprint_params(after.params_for(cls)))
    return out
