"""What a run of one stage computes, and in which tasks: the one planner that the run, the dry run and
the free-space guard share, so an estimate or a refusal is about exactly the work a run would do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from msf.pipeline.cache.index import Failure
from msf.pipeline.cache.planning import Plan, StageState, stage_state
from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.stage import needs_for

Location = tuple[str, int]  # (shard, row) of an upstream entry


@dataclass
class StageWork:
    """One stage's work: its entries' state, the utterances to compute (not fresh; for a group stage
    also the fresh members of every group it touches, whose statistics need them), cut into tasks."""

    state: StageState
    compute: list[str]
    tasks: list[list[str]]  # one shard each
    recomputed: int = 0  # fresh entries computed again with their group
    # located runs only: where each ready utterance's upstream entries are, and the utterances that
    # cannot run because an upstream entry is not fresh (a failure record each, naming it)
    upstream: dict[str, dict[str, Location]] = field(default_factory=dict)
    blocked: list[Failure] = field(default_factory=list)


class TaskPlanner:
    """Tasks are shard-sized (`shard_size` utterances) but never fewer than the workers, so a small
    corpus still uses them all; utterances of similar length share a task; a group stage's tasks hold
    whole groups."""

    def __init__(self, store: ShardStore, plan: Plan, shard_size: int, workers: int):
        self.store, self.plan = store, plan
        self.shard_size, self.workers = shard_size, max(1, workers)

    def work(self, name: str, locate: bool = False) -> StageWork:
        """`locate` (a run): upstream entries must be fresh now, and their places are found. Without it
        (a dry run, the free-space guard) upstream stages are taken as done, as the run will make them."""
        state = stage_state(self.store.index, self.store.shard_names(name), self.plan[name])
        todo = state.todo
        upstream: dict[str, dict[str, Location]] = {}
        blocked: list[Failure] = []
        if locate and todo:
            upstream, blocked = self.locate(name, todo)
            todo = [u for u in todo if u in upstream]
        if self.plan[name].stage.group_by:
            compute, tasks = self._whole_groups(name, state, todo, upstream if locate else None)
            return StageWork(state, compute, tasks, len(compute) - len(todo), upstream, blocked)
        return StageWork(state, todo, self._by_length(todo), 0, upstream, blocked)

    def _by_length(self, utts: list[str]) -> list[list[str]]:
        if not utts:
            return []
        sizes = self.store.index.file_sizes(self.plan.sources[u].utt.audio for u in utts)
        ordered = sorted(utts, key=lambda u: sizes.get(self.plan.sources[u].utt.audio, 0))
        size = max(1, min(self.shard_size, -(-len(ordered) // self.workers)))
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def _whole_groups(self, name: str, state: StageState, todo: list[str],
                      upstream: dict[str, dict[str, Location]] | None) -> tuple[list[str], list[list[str]]]:
        """Every group with a member to compute, computed whole: with its fresh members too (those whose
        upstream entries are fresh, when located); whole groups packed up to shard_size per task."""
        cls = self.plan[name].stage
        members: dict[str, list[str]] = {}
        for uid in self.plan.sources:
            members.setdefault(self.plan.group_of(cls, uid), []).append(uid)
        wanted = set(todo)
        touched = [ms for ms in members.values() if not wanted.isdisjoint(ms)]
        again = [m for ms in touched for m in ms if m in state.fresh]
        if upstream is not None:
            found, _ = self.locate(name, again)  # a fresh member whose upstream is gone stays as it is
            upstream.update(found)
            again = [m for m in again if m in found]
        wanted.update(again)
        tasks: list[list[str]] = [[]]
        for ms in touched:
            group = [m for m in ms if m in wanted]
            if tasks[-1] and len(tasks[-1]) + len(group) > self.shard_size:
                tasks.append([])
            tasks[-1].extend(group)
        tasks = [t for t in tasks if t]
        return [u for t in tasks for u in t], tasks

    def locate(self, name: str, utts: list[str]) -> tuple[dict[str, dict[str, Location]], list[Failure]]:
        """Where the upstream entries (stage -> shard, row) of each utterance whose upstream entries
        are all fresh are; a failure record for the others, naming the upstream stage and its error."""
        plan, index = self.plan, self.store.index
        cls = plan[name].stage
        located = {up: index.locations(up) for up in cls.needs}
        shards = {up: self.store.shard_names(up) for up in cls.needs}
        errors = {up: {(f.utt, f.fingerprint): f for f in index.failures(up)} for up in cls.needs}
        found: dict[str, dict[str, Location]] = {}
        blocked: list[Failure] = []
        for uid in utts:
            where: dict[str, Location] = {}
            for up in needs_for(cls, plan.sources[uid].utt):
                loc = located[up].get((uid, plan[up].fingerprints[uid]))
                if loc is None or loc[0] not in shards[up]:
                    root = errors[up].get((uid, plan[up].fingerprints[uid]))  # its root cause, said once
                    blocked.append(Failure(name, uid, plan[name].fingerprints[uid],
                                           root.error if root else "no fresh entry", time.time(), "upstream",
                                           root.root if root else up))
                    break
                where[up] = loc
            else:
                found[uid] = where
        return found, blocked
