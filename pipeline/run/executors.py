"""Where extraction tasks run: a Dask cluster (local processes, or an existing cluster by address), or
this process (`msf predict` on one file, a calibration run: no cluster to start). The driver sees one
small interface either way: run a function over argument tuples, a bounded number at a time, and get
each result (or its exception) as it finishes.

Two things keep the driver's memory flat at 100k utterances (it held 1.1 GB): a window of a few
tasks per worker, so only a few shards' worth of task items are in flight; and Dask's low-level
message log off. That log (`distributed.admin.low-level-log-length`, a debugging aid) keeps the last
1000 messages of every connection, task arguments included: ~140 KB per task here, for ever.

A local cluster also runs without the worker's stack profiler and with the tick and the system
monitor slowed (QUIET_LOCAL_CLUSTER: only a dashboard reads them, and msf starts none). With one worker
the scheduler's and the worker's event loops share the process with the model's forward, and the
profiler (100 samples a second), the 20 ms tick and the 500 ms monitor preempted it: 4x the involuntary
context switches of a bare forward loop (about 1.3x without them), and bench/acoustic.py's large-sized
pipeline/bare went from 0.88 to 0.98 on 2 cores.
An existing cluster (`--scheduler`) keeps its own settings.

Dask's scheduler and workers serve HTTP (health, metrics) even without a dashboard. Left to itself a
local cluster's scheduler takes port 8787 (on every interface when the workers are threads), so a
second msf run beside the first warned "Port 8787 is already in use". They now listen on loopback,
on a port the OS picks.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from typing import Any, Callable, Iterable, Iterator, Protocol

from msf.pipeline.errors import MsfError

LOOPBACK_ANY_PORT = "127.0.0.1:0"
TASKS_PER_WORKER = 2
CONNECT_TIMEOUT_S = 30  # a scheduler that is up answers at once; this only bounds a wrong address
# A local cluster's own logs show only what is critical. At ERROR, a worker process whose heartbeat met
# the scheduler already closing printed a traceback ("Failed to communicate with scheduler during
# heartbeat") at the end of a successful `make demo` on a busy machine. msf reports every failure a
# task or a worker causes itself, in one line.
DASK_LOG_LEVEL = logging.CRITICAL
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",  # it only warns of a blocked event loop: logs we silence
    "distributed.admin.system-monitor.interval": "5s",
}


class Executor(Protocol):
    @property
    def workers(self) -> int: ...

    def run(self, fn: Callable[..., Any], argsets: Iterable[tuple], window: int) -> Iterator[tuple[int, Any]]:
        """fn(*args) for each argument tuple, at most `window` in flight; yields (index, result), the
        result being the exception when the call raised. Closing the iterator cancels the rest."""
        ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs each task in this process, one after the other; models stay loaded between calls."""

    workers = 1

    def run(self, fn: Callable[..., Any], argsets: Iterable[tuple], window: int) -> Iterator[tuple[int, Any]]:
        for i, args in enumerate(argsets):
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001 - delivered to the driver like a worker's failure
                result = e
            yield i, result

    def close(self) -> None:
        pass


class SchedulerUnreachable(MsfError):
    """`--scheduler` names an address where no Dask scheduler answers."""


def unreachable(address: str) -> str | None:
    """Why nothing listens at a TCP/TLS scheduler address, or None (other transports are left to Dask).
    A plain socket, before any Client: Dask's Client retries a refused connection until its timeout, and
    one that fails leaves its IO-loop thread running for the rest of the process."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return None
        with socket.create_connection(parse_host_port(location), timeout=CONNECT_TIMEOUT_S):
            return None
    except (OSError, ValueError) as e:
        return str(e)


class DaskExecutor:
    """A local Dask cluster (threads in this process for one worker, else worker processes), or an
    existing cluster by address. Started on first use, so a run with nothing to do starts nothing."""

    def __init__(self, workers: int = 1, scheduler: str | None = None):
        self._workers, self.scheduler = workers, scheduler
        self._client: Any = None
        self._cluster: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import dask
            from dask.distributed import Client, LocalCluster

            dask.config.set({"distributed.admin.low-level-log-length": 0})
            os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "0")  # worker processes too

            if self.scheduler:
                problem = unreachable(self.scheduler)
                if problem is None:
                    try:
                        self._client = Client(self.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
                    except (OSError, ValueError) as e:  # it went away since the probe
                        problem = str(e)
                if problem is not None:
                    # A half-built Client keeps an IO-loop thread whose only way out is its finalizer, in
                    # a reference cycle with the exception. Collect it here, in this thread: a later
                    # collection can run it inside the next cluster's new loop thread before that thread
                    # reports itself started, where it waits for LoopRunner's class lock that the starting
                    # thread holds, and both wait for ever (a test process that ran several extracts hung so).
                    gc.collect()
                    raise SchedulerUnreachable(
                        f"cannot reach the Dask scheduler at {self.scheduler} ({problem}); start one with "
                        "`dask scheduler` and its workers with `dask worker ADDRESS`, or drop --scheduler "
                        "to run local workers")
            else:
                dask.config.set(QUIET_LOCAL_CLUSTER)
                # Two threads per worker: one task computes while the one before writes its shard
                # (worker.py lets only one compute at a time, so the cores are never oversubscribed).
                self._cluster = LocalCluster(n_workers=self._workers, threads_per_worker=TASKS_PER_WORKER,
                                             processes=self._workers > 1, dashboard_address=None,
                                             worker_dashboard_address=LOOPBACK_ANY_PORT,
                                             scheduler_kwargs={"dashboard_address": LOOPBACK_ANY_PORT},
                                             silence_logs=DASK_LOG_LEVEL)
                self._client = Client(self._cluster)
        return self._client

    @property
    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values())) if self.scheduler else self._workers

    def run(self, fn: Callable[..., Any], argsets: Iterable[tuple], window: int) -> Iterator[tuple[int, Any]]:
        from dask.distributed import as_completed

        client = self.client  # started before as_completed, which looks for it
        pending = enumerate(argsets)
        running: dict[Any, int] = {}
        finished = as_completed()

        def submit_next() -> None:
            nxt = next(pending, None)
            if nxt is not None:
                future = client.submit(fn, *nxt[1], pure=False)
                running[future] = nxt[0]
                finished.add(future)

        for _ in range(max(1, window)):
            submit_next()
        try:
            for future in finished:
                i = running.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001 - a crashed task (or a dead worker, after retries)
                    result = e
                future.release()  # the scheduler forgets its arguments now, not at the end of the stage
                submit_next()
                yield i, result
        finally:
            for future in running:
                future.cancel()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
