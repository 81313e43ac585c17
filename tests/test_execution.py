"""Execution: kill -9 at fixed points then resume equals a clean run (extraction and compaction);
Ctrl-C at a fixed point; an existing Dask cluster by address; two local clusters side by side; the
worker reading the next batch's audio ahead and writing one shard while the next task computes; Dask's
own worker logs kept off the console."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_manifest
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.cache.view import CacheView


def _msf(*args: str) -> list[str]:
    return [sys.executable, "-m", "msf.cli", *args]


def _entries(cache: Path, stage: str) -> int:
    try:
        db = sqlite3.connect(f"file:{cache / 'index.sqlite'}?mode=ro", uri=True, timeout=5)
        n = db.execute("SELECT COUNT(*) FROM entries WHERE stage=?", (stage,)).fetchone()[0]
        db.close()
        return n
    except sqlite3.Error:
        return 0


def _all_visible_shards_readable(cache: Path) -> None:
    for shard in cache.glob("*/shard-*.h5"):
        with h5py.File(shard, "r", locking=False) as f:
            assert len(f["utt"]) > 0


def _records(cache: Path, stage: str) -> dict[str, dict]:
    view = CacheView(cache)
    out = {u: view.store.read(e) for u, e in view.fresh([stage])[stage].items()}
    view.close()
    return out


def _assert_same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for utt in a:
        assert sorted(a[utt]) == sorted(b[utt])
        for k, v in a[utt].items():
            if isinstance(v, np.ndarray):
                assert v.dtype == b[utt][k].dtype and v.tobytes() == b[utt][k].tobytes(), (utt, k)
            else:
                assert v == b[utt][k], (utt, k)


def test_ctrl_c_says_what_is_kept_and_the_rerun_computes_only_the_rest(tmp_path: Path) -> None:
    """SIGINT right after the 2nd committed shard: exit 130 with one line (no traceback), exactly two
    shards' entries kept, and the rerun computes the rest."""
    corpus = write_manifest(tmp_path / "c", 24)
    common = ["--corpus", str(corpus), "--cache", str(tmp_path / "cache"), "--set", 'plugins=["toy_stages"]',
              "--set", "shard_size=3", "--json", "--stage"]
    # audio first, so every commit of the interrupted run is a toy_slow shard of 3 entries
    subprocess.run(_msf("extract", *common, "audio"), check=True, capture_output=True)
    common.append("toy_slow")
    # A foreground process's SIGINT: a shell without job control starts background jobs (`make test &`
    # in a script) with SIGINT ignored, the child inherits that, and the signal would do nothing.
    proc = subprocess.run(_msf("extract", *common), env={**os.environ, "MSF_KILL_AT": "commit:2:INT"},
                          capture_output=True, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted; everything committed so far is kept" in proc.stderr and "Traceback" not in proc.stderr
    assert _entries(tmp_path / "cache", "toy_slow") == 6
    done = subprocess.run(_msf("extract", *common), check=True, capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])["stages"]["toy_slow"]
    assert (summary["computed"], summary["reused"]) == (18, 6)


@pytest.mark.slow
def test_kill9_at_fixed_points_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    """Five runs, each SIGKILLed by its own fault point right after its k-th committed shard (k drawn
    from a seed): every visible shard stays readable, exactly k shards' entries survive each kill,
    and the final run computes exactly the rest, byte-identical to a clean run."""
    corpus = write_manifest(tmp_path / "c", 80)
    common = ["--corpus", str(corpus), "--set", 'plugins=["toy_stages"]', "--set", "shard_size=3", "--json"]
    clean, crashy = tmp_path / "clean", tmp_path / "crashy"
    subprocess.run(_msf("extract", "--cache", str(clean), "--stage", "toy_slow", *common), check=True,
                   capture_output=True)
    # audio first, so every commit of the killed runs is a toy_slow shard of 3 entries
    subprocess.run(_msf("extract", "--cache", str(crashy), "--stage", "audio", *common), check=True,
                   capture_output=True)
    rng = random.Random(7)
    points = [rng.randint(1, 4) for _ in range(5)]
    for k in points:
        before = _entries(crashy, "toy_slow")
        proc = subprocess.run(_msf("extract", "--cache", str(crashy), "--stage", "toy_slow", *common),
                              env={**os.environ, "MSF_KILL_AT": f"commit:{k}"}, capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert _entries(crashy, "toy_slow") == before + 3 * k  # exactly what was committed survives
        _all_visible_shards_readable(crashy)  # nothing half-written under a shard name
    interrupted = _entries(crashy, "toy_slow")
    assert interrupted == 3 * sum(points) < 80
    done = subprocess.run(_msf("extract", "--cache", str(crashy), "--stage", "toy_slow", *common), check=True,
                          capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])["stages"]["toy_slow"]
    assert summary["computed"] == 80 - interrupted and summary["reused"] == interrupted
    for stage in ("audio", "toy_slow"):
        _assert_same(_records(clean, stage), _records(crashy, stage))


@pytest.mark.slow
def test_kill9_inside_cache_compact_leaves_a_valid_cache(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 20)
    cache = tmp_path / "cache"
    subprocess.run(_msf("extract", "--cache", str(cache), "--corpus", str(corpus), "--stage", "toy_energy",
                        "--set", 'plugins=["toy_stages"]', "--set", "shard_size=3"), check=True, capture_output=True)
    before = {s: _records(cache, s) for s in ("audio", "toy_energy")}
    for k in (2, 6):  # inside the first stage's rewrite, then inside the second's
        proc = subprocess.run(_msf("cache", "compact", "--cache", str(cache), "--shard-size", "4"),
                              env={**os.environ, "MSF_KILL_AT": f"compact:{k}"}, capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        _all_visible_shards_readable(cache)
        verify = subprocess.run(_msf("cache", "verify", "--cache", str(cache), "--json"), capture_output=True, text=True)
        assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout
        for stage, records in before.items():
            _assert_same(records, _records(cache, stage))
    subprocess.run(_msf("cache", "compact", "--cache", str(cache), "--shard-size", "4"), check=True, capture_output=True)
    for stage, records in before.items():
        _assert_same(records, _records(cache, stage))
        assert len(list((cache / stage).glob("shard-*.h5"))) == 5  # 20 entries in shards of 4, nothing left over


def test_extract_on_an_existing_dask_cluster(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    corpus = write_manifest(tmp_path / "c", 8)
    args = ["extract", "--corpus", str(corpus), "--set", 'plugins=["toy_stages"]', "--set", "shard_size=2",
            "--stage", "toy_summary", "--json"]
    local = CliRunner().invoke(app, [*args, "--cache", str(tmp_path / "local")])
    assert local.exit_code == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        r = CliRunner().invoke(app, [*args, "--cache", str(tmp_path / "remote"), "--scheduler",
                                     cluster.scheduler_address])
        assert r.exit_code == 0, r.stderr
        with Client(cluster) as client:
            loaded = client.run(lambda: sorted({k[0] for k in __import__("msf.pipeline.run.worker").pipeline.run.worker._STAGES}))
    assert json.loads(r.stdout.splitlines()[-1])["stages"]["toy_summary"]["computed"] == 8
    # the stages were instantiated on the cluster's worker processes (once each), not here
    assert any("toy_summary" in v for v in loaded.values())
    for stage in ("audio", "toy_energy", "toy_summary"):
        _assert_same(_records(tmp_path / "local", stage), _records(tmp_path / "remote", stage))


def test_two_local_clusters_side_by_side_listen_on_loopback_without_a_port_warning() -> None:
    """Two msf runs at once each start a local cluster; neither may take Dask's fixed port 8787 (the second
    warned) nor listen beyond loopback. One cluster of threads, one of processes."""
    import warnings

    import psutil

    from msf.pipeline.run.executors import DaskExecutor

    def listening() -> set[tuple[str, int]]:
        out = set()
        for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:  # a process of an earlier test may be exiting as we look
                out |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                        if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
        return out

    before = listening()
    executors = [DaskExecutor(workers=1), DaskExecutor(workers=2)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ex in executors:
                assert [r for _, r in ex.run(int, [("7",)], window=1)] == [7]
        opened = listening() - before
    finally:
        for ex in executors:
            ex.close()
    assert not [w for w in caught if "already in use" in str(w.message)]
    assert opened and all(ip == "127.0.0.1" for ip, _ in opened), opened
    assert 8787 not in {port for _, port in opened}


def test_an_unreachable_scheduler_leaves_no_event_loop_thread_behind() -> None:
    """The refused Client's IO-loop thread is stopped before the error reaches the caller. Left for a later
    garbage collection, its finalizer could run inside the next local cluster's loop-thread start and
    deadlock there (a test process that ran several extracts hung so)."""
    import socket
    import threading

    from msf.pipeline.run.executors import DaskExecutor, SchedulerUnreachable

    with socket.socket() as s:  # a loopback port with nothing listening on it: refused at once
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    loops_before = {t for t in threading.enumerate() if t.name == "IO loop"}
    for scheduler in (address, "no-port-here"):
        ex = DaskExecutor(scheduler=scheduler)
        with pytest.raises(SchedulerUnreachable, match="cannot reach the Dask scheduler"):
            ex.run(int, [("7",)], window=1).__next__()
        ex.close()
    assert {t for t in threading.enumerate() if t.name == "IO loop"} <= loops_before


DEADLOCK_PROBE = """
import gc, threading
from msf.pipeline.run.executors import DaskExecutor, SchedulerUnreachable
try:
    DaskExecutor(scheduler="no-port-here").client
except SchedulerUnreachable:
    pass
gc.disable()  # whatever the refused run left stays uncollected until...
bootstrap = threading.Thread._bootstrap_inner
def collect_then_bootstrap(self):
    gc.collect()  # ...a collection inside the next thread's start: the fixed point of the fault
    bootstrap(self)
threading.Thread._bootstrap_inner = collect_then_bootstrap
ex = DaskExecutor(workers=1)
print([r for _, r in ex.run(int, [("7",)], window=1)])
ex.close()
"""


def test_a_local_cluster_starts_after_an_unreachable_scheduler_whenever_garbage_is_collected() -> None:
    """The hang behind a test that timed out once under load, made certain: a refused Client collected
    while the next cluster's loop thread starts. Before the fix this deadlocked every time."""
    r = subprocess.run([sys.executable, "-c", DEADLOCK_PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[7]", r.stderr[-2000:]


def test_the_runner_decodes_the_next_batch_ahead_and_lets_go_of_each_batch_audio(tmp_path: Path) -> None:
    """A stage that reads the waveform finds each batch's audio already decoded (read ahead on a second
    thread while the batch before computes); a file that cannot be read still fails alone, with the
    stage's own message; no item keeps its audio once its batch is done; a stage that does not read
    the waveform gets nothing decoded for it."""
    import soundfile as sf

    from msf.pipeline.run import worker
    from msf.pipeline.corpus import Utterance
    from msf.pipeline.stage import REGISTRY, Item, Record, Stage, UtteranceError, register

    seen: list[list[bool]] = []
    items: list[Item] = []

    @register
    class ReadsAudio(Stage):
        name = "test_reads_audio"
        needs = ()
        batch_size = 2
        reads_waveform = True

        def compute(self, batch: list[Item]) -> list[Record | Exception]:
            seen.append(["waveform" in it.__dict__ for it in batch])
            items.extend(batch)
            out: list[Record | Exception] = []
            for it in batch:
                try:
                    out.append({"samples": int(len(it.waveform))})
                except Exception as e:  # noqa: BLE001
                    out.append(UtteranceError(f"cannot read audio: {e}"))
            return out

    tasks = []
    for k in range(5):
        path = tmp_path / f"u{k}.wav"
        if k != 3:  # u3 is listed but missing
            sf.write(path, np.full(1600 * (k + 1), 0.1, np.float32), 16000)
        tasks.append(worker.TaskItem(Utterance(f"u{k}", str(path)).to_dict(), "", {}))

    try:
        result = worker.run_task(str(tmp_path / "cache"), "test_reads_audio", {}, tasks, [], 0)
        seen_ahead = list(seen)
        seen.clear()
        ReadsAudio.reads_waveform = False
        worker.run_task(str(tmp_path / "cache2"), "test_reads_audio", {}, tasks, [], 0)
    finally:
        del REGISTRY["test_reads_audio"]  # `msf extract` without --stage runs every registered stage
    assert seen_ahead == [[True, True], [True, False], [True]]  # u3 could not be decoded ahead
    assert seen == [[False, False], [False, False], [False]]
    assert [d[0] for d in result.done] == ["u0", "u1", "u2", "u4"]
    assert [f[0] for f in result.failed] == ["u3"] and "cannot read audio" in result.failed[0][1]
    assert not any("waveform" in it.__dict__ for it in items)


def test_a_local_cluster_keeps_dask_worker_errors_off_the_console(capfd: pytest.CaptureFixture[str]) -> None:
    """A worker process whose heartbeat meets the scheduler closing logs a traceback at ERROR; seen at
    the end of a successful `make demo` on a busy machine. The worker processes log only what is
    critical, so that message, raised here in each worker, never reaches the user's terminal."""
    from msf.pipeline.run.executors import DaskExecutor

    ex = DaskExecutor(workers=2)
    try:
        def heartbeat_failure() -> int:
            try:
                raise OSError("Stream is closed")
            except OSError:
                logging.getLogger("distributed.worker").exception("Failed to communicate with scheduler during heartbeat.")
            return os.getpid()

        pids = ex.client.run(heartbeat_failure)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()  # two worker processes
    finally:
        ex.close()
    err = capfd.readouterr().err
    assert "Failed to communicate with scheduler" not in err and "Traceback" not in err


def test_a_worker_writes_one_shard_while_the_next_task_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local worker runs two tasks at a time: the first task's shard write waits (at a fixed point,
    not a sleep) until the second task has started computing, which only happens if the write and the
    next compute overlap. The two computes never run at once: the first one holds on until the second
    task is waiting at the worker's compute lock. Each task's entries land in a shard of their own."""
    import threading

    from msf.pipeline.run import worker
    from msf.pipeline.corpus import Utterance
    from msf.pipeline.run.executors import DaskExecutor
    from msf.pipeline.stage import REGISTRY, Item, Record, Stage, register

    lock = threading.Lock()
    computing, most_at_once, computes = [0], [0], [0]
    second_compute, second_at_the_lock = threading.Event(), threading.Event()
    second_waited: list[bool] = []  # whether the second task found the compute lock taken

    class ObservedLock:
        """The worker's compute lock, telling the test when the second task arrives at it and whether
        it found the lock taken."""

        def __init__(self) -> None:
            self._lock, self._arrivals = threading.Lock(), 0

        def __enter__(self) -> None:
            free = self._lock.acquire(blocking=False)
            with lock:
                self._arrivals += 1
                if self._arrivals == 2:
                    second_waited.append(not free)
                    second_at_the_lock.set()
            if not free:
                self._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self._lock.release()

    @register
    class Counts(Stage):
        name = "test_counts"
        needs = ()

        def compute(self, batch: list[Item]) -> list[Record | Exception]:
            with lock:
                computing[0] += 1
                computes[0] += 1
                most_at_once[0] = max(most_at_once[0], computing[0])
                first = computes[0] == 1
                if computes[0] == 2:
                    second_compute.set()
            if first:  # hold on while the second task reaches the lock: it must not compute meanwhile
                second_at_the_lock.wait(timeout=60)  # the bound only ends a failing run
            with lock:
                computing[0] -= 1
            return [{"n": len(it.utt.id)} for it in batch]

    real_write = worker.write_shard
    writes: list[int] = []
    overlapped: list[bool] = []

    def write_after_the_next_compute_starts(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            writes.append(len(writes))
            first = len(writes) == 1
        if first:
            overlapped.append(second_compute.wait(timeout=60))  # the bound only ends a failing run
        return real_write(*args, **kwargs)

    monkeypatch.setattr(worker, "write_shard", write_after_the_next_compute_starts)
    monkeypatch.setattr(worker, "_COMPUTE", ObservedLock())
    argsets = [(str(tmp_path / "cache"), "test_counts", {}, [worker.TaskItem(Utterance(u, "").to_dict(), "", {})],
                [], 0) for u in ("a", "bb")]
    ex = DaskExecutor(workers=1)
    try:
        results = dict(ex.run(worker.run_task, argsets, window=2))
    finally:
        ex.close()
        del REGISTRY["test_counts"]
    assert second_waited == [True] and overlapped == [True] and most_at_once == [1]
    assert sorted(d[0] for r in results.values() for d in r.done) == ["a", "bb"]
    assert len({r.shard for r in results.values()}) == 2
