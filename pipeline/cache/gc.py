"""`msf cache gc`: what no named feature set references any more, and removing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msf.pipeline.cache.shard_store import ShardStore
from msf.pipeline.cache.view import CacheView


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
