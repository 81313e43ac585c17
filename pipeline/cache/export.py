"""`msf export`: a feature set as one `.npy` per utterance and field plus a manifest CSV, the layout
EmoBox and s3prl recipes consume. Streamed (a chunk of utterances at a time, read shard by shard) and
resumable (each file is written under a temporary name and renamed, so a file that exists is whole and
a rerun skips it)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from msf.pipeline.cache.view import CacheView
from msf.pipeline.corpus import target_names
from msf.pipeline.errors import UsageError
from msf.pipeline.progress import progress_bar

# What is exported when no --fields are given: the arrays the trainer's sources read, where extracted.
DEFAULT_FIELDS = ("acoustic.frames", "global.embedding", "local.embedding", "extended.embedding")
CHUNK = 64


def export_npy(cache: CacheView, out: Path, fields: Sequence[str] | None = None,
               layers: Sequence[int] | None = None, progress: bool = True) -> dict[str, int]:
    """OUT/<stage.field>/<id>.npy for every utterance with a fresh entry of the field's stage, and
    OUT/manifest.csv (id, split, speaker, labels, transcript, then one column per field: the file's path
    relative to OUT, empty where the utterance has none). Returns files written and kept."""
    chosen = list(fields) if fields else [f for f in DEFAULT_FIELDS if f.split(".", 1)[0] in cache.stages]
    cache.require_fields(chosen)
    not_arrays = [f for f in chosen if not cache.fields[f].shape or cache.fields[f].dtype == "str"]
    if not_arrays:
        raise UsageError(f"export writes numeric array fields; {', '.join(not_arrays)} are not (read them with "
                         "msf.open_cache(...).records)")
    utts = sorted(cache.utterances, key=lambda u: u.id)
    written = kept = 0
    have: dict[str, set[str]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("export", total=len(utts) * len(chosen))
        for field in chosen:
            stage = field.split(".", 1)[0]
            fresh = cache.fresh([stage])[stage]
            ids = [u.id for u in utts if u.id in fresh]
            have[field] = set(ids)
            folder = out / field
            folder.mkdir(parents=True, exist_ok=True)
            column = cache.column(field, ids, layers if field == "acoustic.frames" else None)
            for start in range(0, len(ids), CHUNK):
                todo = [k for k in range(start, min(start + CHUNK, len(ids))) if not (folder / f"{ids[k]}.npy").exists()]
                kept += min(start + CHUNK, len(ids)) - start - len(todo)
                for k, array in zip(todo, column.read(todo) if todo else []):
                    tmp = folder / f".{ids[k]}.npy.tmp"
                    with open(tmp, "wb") as f:
                        np.save(f, array)
                    os.replace(tmp, folder / f"{ids[k]}.npy")
                    written += 1
                bar.advance(task, min(start + CHUNK, len(ids)) - start)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        targets = target_names(utts)
        w.writerow(["id", "split", "speaker", *targets, "transcript", *chosen])
        for u in utts:
            w.writerow([u.id, u.split, u.speaker, *(u.targets.get(t, "") for t in targets),
                        u.transcript or "", *(f"{fld}/{u.id}.npy" if u.id in have[fld] else "" for fld in chosen)])
    return {"written": written, "kept": kept, "utterances": len(utts), "fields": len(chosen)}
