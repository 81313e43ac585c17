"""What an extraction would cost before it runs: per stage, the entries it would compute (and why, as
`msf status --why` says it), the bytes they would take on disk and the wall time, so a researcher
about to extract WavLM-Large frames over MSP-Podcast learns "0.9 TB, 30 hours" before the disk fills.

Bytes come from the stage's declared output shape per second of audio (`Stage.declared_bytes`),
scaled by what a short calibration run actually wrote (compression); time comes from that
calibration run: a few of the corpus's own utterances, spread over its durations, each extracted
alone, in this process, into a temporary directory, fitted as `a + b * seconds of audio` per entry.
Nothing is computed in the cache and nothing is written to it.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from msf.pipeline.corpus import Corpus, Utterance
from msf.pipeline.errors import MsfError
from msf.pipeline.run.executors import InProcessExecutor
from msf.pipeline.stage import Stage, stage_class


@dataclass
class StageCost:
    """The calibration's measurements for one stage."""

    setup_s: float = 0.0  # loading models, once per worker
    shard_overhead: float = 0.0  # bytes of one shard beyond its records' data (HDF5 headers, chunks)
    # (audio s, wall s, bytes of data on disk, CPU s of all the process's threads)
    entries: list[tuple[float, float, int, float]] = field(default_factory=list)

    def fit(self, column: int) -> tuple[float, float]:
        """(a, b) of `a + b * audio seconds`, both >= 0, by least squares; a flat mean when the
        calibration's durations are too alike to tell a slope."""
        x = np.array([e[0] for e in self.entries])
        y = np.array([e[column] for e in self.entries], float)
        if len(x) >= 2 and np.ptp(x) > 0.2 * max(x.mean(), 1e-9):
            b, a = np.polyfit(x, y, 1)
            if b >= 0 and a >= 0:
                return float(a), float(b)
            if b >= 0:  # clamp the intercept: all cost scales with duration
                return 0.0, float(y.sum() / x.sum())
        return float(y.mean()) if len(y) else 0.0, 0.0


@dataclass
class Sends:
    """What a stage would send off this process: at most `requests` requests (answers already in the
    stage's answer cache are not asked again) and `audio_seconds` of audio (None: words only)."""

    host: str
    requests: int
    audio_seconds: float | None
    loopback: bool

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "requests": self.requests, "loopback": self.loopback,
                "audio_seconds": None if self.audio_seconds is None else round(self.audio_seconds, 1)}

    def __str__(self) -> str:
        audio = "words only" if self.audio_seconds is None else f"{self.audio_seconds / 60:.1f} min of audio"
        where = "this machine" if self.loopback else "a remote host"
        return f"up to {self.requests:,} requests ({audio}) to {self.host} ({where})"


@dataclass
class Estimate:
    to_compute: int
    reused: int
    audio_seconds: float  # of the entries to compute
    bytes: float | None
    seconds: float | None
    declared_bytes: float | None  # from the declared shape alone, before compression
    why: dict[str, int]
    sends: Sends | None = None  # words or audio this stage would send to an endpoint
    blocked: str | None = None  # why the stage cannot run as set (a model missing, ...), else None

    def to_dict(self) -> dict[str, Any]:
        out = {"to_compute": self.to_compute, "reused": self.reused, "bytes": _round(self.bytes),
               "seconds": _round(self.seconds), "declared_bytes": _round(self.declared_bytes),
               "audio_seconds": round(self.audio_seconds, 1), "why": self.why}
        if self.sends is not None:
            out["sends"] = self.sends.to_dict()
        if self.blocked is not None:
            out["blocked"] = self.blocked
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def audio_durations(paths: Iterable[str]) -> dict[str, float]:
    """Seconds of each file from its header (soundfile.info), read by a few threads; 0 if unreadable."""
    import soundfile as sf

    def one(p: str) -> float:
        try:
            return float(sf.info(p).duration)
        except Exception:  # noqa: BLE001 - the audio stage will say why; it costs nothing here
            return 0.0

    paths = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
        return dict(zip(paths, pool.map(one, paths)))


class TimedExecutor(InProcessExecutor):
    """Runs each task in this process and notes its wall time and CPU time (all threads)."""

    def __init__(self, on_task: Callable[[tuple, float, float], None]):
        self.on_task = on_task

    def run(self, fn: Callable[..., Any], argsets: Iterable[tuple], window: int) -> Iterator[tuple[int, Any]]:
        for i, args in enumerate(argsets):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001
                result = e
            self.on_task(args, time.perf_counter() - t0, time.process_time() - c0)
            yield i, result


def calibrate(extraction_factory: Callable[..., Any], utterances: list[Utterance], stages: list[str],
              params_of: Callable[[type[Stage]], Any]) -> dict[str, StageCost]:
    """Extract `utterances` one per task, in this process, into a temporary directory; per stage the
    model setup time and each entry's (audio seconds, wall seconds, bytes on disk)."""
    from msf.pipeline.run.worker import stage_instance

    costs: dict[str, StageCost] = {}
    durations = audio_durations(u.audio for u in utterances)
    seconds_of: dict[tuple[str, str], tuple[float, float]] = {}

    def on_task(args: tuple, seconds: float, cpu: float) -> None:
        _, stage, _, items, *_ = args  # one utterance per task (a whole group for group stages)
        seconds_of.update({(stage, item.utt["id"]): (seconds / len(items), cpu / len(items)) for item in items})

    with tempfile.TemporaryDirectory(prefix="msf-calibrate-") as tmp:
        ex = extraction_factory(Path(tmp) / "cache", Corpus("calibration", "calibration", utterances),
                                TimedExecutor(on_task))
        try:
            for name in ex.plan(stages).order:  # load each model first, so its setup is timed apart
                cls = stage_class(name)
                t0 = time.perf_counter()
                stage_instance(name, params_of(cls).model_dump(mode="json"), str(ex.root))
                costs.setdefault(name, StageCost()).setup_s = time.perf_counter() - t0
            ex.run(stages, progress=False, force=True)  # a few entries in a temporary directory
            rows = ex.store.index.db.execute("SELECT stage, utt, bytes FROM entries").fetchall()
            split = {stage: _data_and_overhead(ex, stage) for stage in costs}
            for stage, (_, overhead) in split.items():
                costs[stage].shard_overhead = overhead
            for stage, uid, nbytes in rows:
                nbytes = split[stage][0].get(uid, nbytes)
                if (stage, uid) in seconds_of:
                    audio = durations[next(u.audio for u in utterances if u.id == uid)]
                    wall, cpu = seconds_of[(stage, uid)]
                    costs[stage].entries.append((audio, wall, nbytes, cpu))
        finally:
            ex.close()
    return costs


def _data_and_overhead(ex: Any, stage: str, fill: int = 256) -> tuple[dict[str, int], float]:
    """Each calibration entry's data bytes, and a shard's fixed overhead (HDF5 headers, heaps, one
    chunk per dataset). Charged to a handful of calibration entries, the overhead overstated small
    records up to 9x; so the records are written as one shard of all of them and one of a single
    record: the difference is their data, the rest the overhead, which a real run pays once per
    shard. Small records grow a shard in steps (heap blocks) that a handful never reaches, so a
    shard of `fill` records, the calibration's repeated, bounds the data from below; repeats let
    lzf compress large arrays away, so that bound only ever raises the first figure."""
    from msf.pipeline.cache.shard_store import record_nbytes, write_shard
    from msf.pipeline.cache.view import CacheView

    view = CacheView(ex.root, ex.config.name, store=ex.store)  # the calibration run's own feature set
    by_utt = view.records(stage)
    if len(by_utt) < 2:
        return {}, 0.0
    utts = sorted(by_utt)
    records = [by_utt[u] for u in utts]
    with tempfile.TemporaryDirectory(prefix="msf-calibrate-shard-") as tmp:
        def size(name: str, ids: list[str], recs: list[Any]) -> int:
            shard = write_shard(Path(tmp) / name, ids, recs)
            return (Path(tmp) / name / shard.name).stat().st_size

        size_all = size("all", utts, records)
        size_one = size("one", utts[:1], records[:1])
        size_fill = size("fill", [f"u{i}" for i in range(fill)], [records[i % len(records)] for i in range(fill)])
    logical = [record_nbytes(r) for r in records]
    data = max(0, size_all - size_one) * sum(logical) / max(1, sum(logical) - logical[0])  # all entries' data
    overhead = max(0.0, size_all - data)
    data = max(data, (size_fill - overhead) * len(records) / fill)
    return {u: round(data * n / sum(logical)) for u, n in zip(utts, logical)}, overhead


def pick_for_calibration(utterances: list[Utterance], durations: dict[str, float], n: int) -> list[Utterance]:
    """n utterances spread over the durations (shortest to longest), so the fit sees both ends."""
    ranked = sorted((u for u in utterances if durations.get(u.audio, 0) > 0), key=lambda u: durations[u.audio])
    if len(ranked) <= n:
        return ranked
    return [ranked[int(round(i * (len(ranked) - 1) / max(1, n - 1)))] for i in range(n)]


def estimate_stage(stage: Stage, to_compute: list[float], reused: int, why: dict[str, int],
                   cost: StageCost | None, shards: int, workers: int, cores: int | None) -> Estimate:
    """Bytes and time for entries of these audio durations, written as `shards` shards (one per task:
    run/tasks.py, the run's own planner), on `workers` parallel workers sharing
    `cores` (None: a cluster's, unknown here). The calibration ran with every core of this process
    available, so workers only divide the wall time as far as the cores allow: a model runtime that
    kept two cores busy per entry takes the same time on one worker or two of a 2-core machine."""
    declared = None
    if to_compute:
        try:  # the shape comes from the model's config: a model not on this machine leaves it unknown
            per = stage.declared_bytes(float(np.mean(to_compute)))
        except MsfError:
            per = None
        if per is not None:
            declared = float(sum(stage.declared_bytes(d) or 0.0 for d in to_compute))  # type: ignore[misc]
    nbytes = seconds = None
    if not to_compute:
        nbytes = seconds = 0.0
    elif cost is not None and cost.entries:
        a, b = cost.fit(2)
        fitted = sum(a + b * d for d in to_compute)
        if declared is not None:  # the declared shape, times what compression did to it
            sample = sum(stage.declared_bytes(e[0]) or 0.0 for e in cost.entries)
            written = sum(e[2] for e in cost.entries)
            nbytes = declared * (written / sample) if sample else fitted
        else:
            nbytes = fitted
        nbytes += cost.shard_overhead * shards
        a, b = cost.fit(1)
        wall = sum(a + b * d for d in to_compute) / max(1, workers)
        if cores:
            a, b = cost.fit(3)
            wall = max(wall, sum(a + b * d for d in to_compute) / cores)
        seconds = cost.setup_s + wall
    elif declared is not None:
        nbytes = declared
    return Estimate(len(to_compute), reused, float(sum(to_compute)), nbytes, seconds, declared, why)
