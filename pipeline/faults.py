"""Fault injection at fixed points, so crash tests are deterministic instead of racing a random sleep.

With MSF_KILL_AT="<point>:<k>" in the environment, the k-th call of `fault_point("<point>")` in this
process kills it (and its child processes) with SIGKILL, exactly as a power cut or the OOM killer
would. With MSF_KILL_AT="<point>:<k>:INT" it sends this process SIGINT instead, as Ctrl-C would, and
msf shuts down on its own. Points: "commit" (the runner committed one shard's entries to the index),
"train-batch" (a training batch has its gradients, before the optimiser step), "compact" (compact
committed one rewritten shard, before deleting the old files). Unset, a fault point costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(point: str) -> None:
    spec = os.environ.get("MSF_KILL_AT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    k, _, how = rest.partition(":")
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] != int(k or 1):
        return
    if how == "INT":
        os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt right here, in the main thread
        return
    import psutil

    for child in psutil.Process().children(recursive=True):  # Dask workers die with their driver
        try:
            child.kill()
        except psutil.Error:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
