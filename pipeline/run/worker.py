"""The worker side of an extraction: one task computes one stage over up to a shard's worth of
utterances and writes them as one new shard. Workers never touch the index; the driver commits.

Models load once per worker process (the stage instances are kept here), not once per task. A worker
runs two tasks at a time; one lock lets only one of them compute, so the shard write of one task
overlaps the next task's forwards and the model is never used by two threads at once.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from msf.pipeline.errors import MsfError
from msf.pipeline.cache.fingerprint import canonical_json
from msf.pipeline.cache.shard_store import ShardFormatError, ShardReader, normalise, shard_path, write_shard
from msf.pipeline.stage import Item, Record, Stage, UtteranceError, load_plugins, stage_class
from msf.pipeline.corpus import Utterance

_STAGES: dict[tuple[str, str], Stage] = {}
_READERS: dict[str, ShardReader] = {}
# Everything a task does but write its shard runs under this lock: the stage instances, the shard
# readers and the process-wide BLAS and torch thread settings are not for two threads at once.
_COMPUTE = threading.Lock()


@dataclass
class TaskItem:
    utt: dict[str, Any]
    audio_hash: str
    upstream: dict[str, tuple[str, int]]  # stage -> (shard, row)


@dataclass
class TaskResult:
    shard: str | None = None
    done: list[tuple[str, int, str, int]] = field(default_factory=list)  # utt, row, checksum, bytes
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # utt, error, kind (index.Failure)


def describe_error(e: BaseException) -> str:
    return str(e) if isinstance(e, (UtteranceError, MsfError)) else f"{type(e).__name__}: {e}"


def failure_kind(e: BaseException) -> str:
    """The kind of failure an exception a stage returned or raised for one utterance stands for."""
    from msf.pipeline.audio_io import AudioError

    if isinstance(e, UtteranceError):
        return e.kind
    return "bad input" if isinstance(e, AudioError) else "error"


def stage_instance(name: str, params: dict[str, Any], root: str) -> Stage:
    key = (name, canonical_json(params), root)  # the root too: a stage's workdir lives in its cache
    if key not in _STAGES:
        cls = stage_class(name)
        stage = cls(cls.Params(**params), workdir=Path(root) / "_work" / name)
        stage.setup()
        _STAGES[key] = stage
    return _STAGES[key]


def _compute_batch(stage: Stage, batch: list[Item]) -> list[Record | Exception]:
    try:
        out = stage.compute(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"stage {stage.name} returned {len(out)} records for {len(batch)} items")
        return out
    except MsfError:  # a setting every item would trip over (no model, a bad parameter): stop the run
        raise
    except Exception:  # noqa: BLE001 - isolate the culprit: redo the batch one item at a time
        if len(batch) == 1:
            raise
        results: list[Record | Exception] = []
        for item in batch:
            try:
                results.extend(stage.compute([item]))
            except MsfError:
                raise
            except Exception as e:  # noqa: BLE001
                results.append(e)
        return results


def _batches(stage: Stage, prepared: list[tuple[TaskItem, Item]]) -> Iterator[list[tuple[TaskItem, Item]]]:
    if stage.group_by:  # one whole group per compute() call
        groups: dict[str, list[tuple[TaskItem, Item]]] = {}
        for p in prepared:
            groups.setdefault(p[1].utt.group_key(stage.group_by), []).append(p)
        yield from groups.values()
        return
    # Length-bucketed batches: similar durations together, so padding wastes little.
    prepared = sorted(prepared, key=lambda p: p[1].inputs.get("audio", {}).get("duration", 0.0))
    for start in range(0, len(prepared), stage.batch_size):
        yield prepared[start : start + stage.batch_size]


def _decode(chunk: list[tuple[TaskItem, Item]]) -> None:
    for _, item in chunk:
        try:
            item.waveform  # noqa: B018 - cached on the item
        except Exception:  # noqa: BLE001 - not cached: compute() meets the error again and records it
            pass


def _read_ahead(stage: Stage, chunks: list[list[tuple[TaskItem, Item]]]) -> Iterator[list[tuple[TaskItem, Item]]]:
    """The batches in order, each one's audio decoded on a second thread while the previous batch
    computes (soundfile and numpy release the GIL, so do torch's kernels). A batch is handed over only
    once its decoding has finished, so the two threads never touch one item at the same time."""
    if not stage.reads_waveform or len(chunks) < 2:
        yield from chunks
        return
    with ThreadPoolExecutor(1, thread_name_prefix="msf-read-ahead") as pool:
        ahead = pool.submit(_decode, chunks[0])
        try:
            for k, chunk in enumerate(chunks):
                ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(_decode, chunks[k + 1])
                yield chunk
        finally:
            ahead.cancel()


def _upstream_records(root: Path, reader: ShardReader, items: list[TaskItem]) -> dict[tuple[str, str], Record | Exception]:
    """Every upstream record the task needs, read one shard at a time (a task's inputs usually sit
    in the few shards the upstream tasks wrote)."""
    wanted: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for ti in items:
        for stage, (shard, row) in ti.upstream.items():
            wanted.setdefault((stage, shard), []).append((ti.utt["id"], row))
    out: dict[tuple[str, str], Record | Exception] = {}
    for (stage, shard), rows in wanted.items():
        try:
            records = reader.rows(shard_path(root, stage, shard), [r for _, r in rows])
        except Exception as e:  # noqa: BLE001 - an unreadable upstream shard fails only these items
            records = [e] * len(rows)
        out.update({(stage, uid): rec for (uid, _), rec in zip(rows, records)})
    return out


def run_task(root: str, stage_name: str, params: dict[str, Any], items: list[TaskItem],
             plugins: list[str] = (), torch_threads: int = 0) -> TaskResult:  # type: ignore[assignment]
    """One shard. numpy's BLAS runs on one thread here whatever the worker count: a float32 matrix
    product split over two threads rounds differently in the last bit, and an int8 encoder (the
    Whisper encoder of the offline profile) amplifies that to differences of 0.25 in its output. So
    the same fingerprint gives the same bytes with one worker or many (Dask's worker processes get
    one BLAS thread from its nanny; a single in-process worker would otherwise use them all).
    torch's intra-op threads are set to `torch_threads` (the driver passes cores // workers for a
    local cluster, so workers x threads never exceeds the cores; 0 leaves the worker's setting)."""
    from threadpoolctl import threadpool_limits

    with _COMPUTE:  # the BLAS limit is set and restored inside it: another task's restore never lands mid-compute
        with threadpool_limits(1, user_api="blas"):
            result, ok_ids, ok_records = _compute_task(root, stage_name, params, items, plugins, torch_threads)
    if ok_records:
        written = write_shard(Path(root) / stage_name, ok_ids, ok_records)
        result.shard = written.name
        result.done = [(u, i, c, b) for i, (u, c, b) in enumerate(zip(ok_ids, written.checksums, written.bytes))]
    return result


def _compute_task(root: str, stage_name: str, params: dict[str, Any], items: list[TaskItem], plugins: list[str],
                  torch_threads: int) -> tuple[TaskResult, list[str], list[Record]]:
    load_plugins(list(plugins))
    stage = stage_instance(stage_name, params, root)
    if torch_threads > 0 and "torch" in sys.modules:  # after setup, which imports it if the stage uses it
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    reader = _READERS.setdefault(root, ShardReader())
    upstream = _upstream_records(Path(root), reader, items)
    prepared: list[tuple[TaskItem, Item]] = []
    result = TaskResult()
    for ti in items:
        inputs = {s: upstream[(s, ti.utt["id"])] for s in ti.upstream}
        bad = next((r for r in inputs.values() if isinstance(r, Exception)), None)
        if bad is not None:
            result.failed.append((ti.utt["id"], f"cannot read upstream entry: {describe_error(bad)}", "cache"))
            continue
        prepared.append((ti, Item(Utterance.from_dict(ti.utt), inputs, ti.audio_hash)))  # type: ignore[arg-type]
    ok_ids: list[str] = []
    ok_records: list[Record] = []
    for chunk in _read_ahead(stage, list(_batches(stage, prepared))):
        try:
            outputs = _compute_batch(stage, [it for _, it in chunk])
        except MsfError:
            raise
        except Exception as e:  # noqa: BLE001
            outputs = [e] * len(chunk)
        for _, it in chunk:  # a task's audio is not held until its shard is written
            it.__dict__.pop("waveform", None)
        for (ti, _), out in zip(chunk, outputs):
            if isinstance(out, BaseException):
                result.failed.append((ti.utt["id"], describe_error(out), failure_kind(out)))
                continue
            try:
                out = normalise(out)
            except ShardFormatError as e:
                result.failed.append((ti.utt["id"], f"stage {stage_name} returned {e}", "error"))
                continue
            ok_ids.append(ti.utt["id"])
            ok_records.append(out)
    return result, ok_ids, ok_records
