"""Scale-out as it is deployed: a `dask scheduler` and two `dask worker` processes started from the command
line on 127.0.0.1, `msf extract --scheduler tcp://...`, one worker process SIGKILLed mid-run (by a
fault injected at a fixed utterance), and a result equal to a local run. Everything it starts, it stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TESTS, write_manifest
from test_execution import _assert_same, _records

DASK = str(Path(sys.executable).parent / "dask")


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.slow
def test_extract_on_a_command_line_cluster_survives_a_killed_worker(tmp_path: Path) -> None:
    from dask.distributed import Client

    corpus = write_manifest(tmp_path / "c", 24)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    args = ["extract", "--corpus", str(corpus), "--set", 'plugins=["toy_stages"]', "--set", "shard_size=3",
            "--stage", "toy_fragile", "--json"]
    msf = [sys.executable, "-m", "msf.cli"]
    subprocess.run([*msf, *args, "--cache", str(tmp_path / "local")], env=env, check=True, capture_output=True,
                   timeout=300)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                            tmp_path / "scheduler.log", env))
        deadline, address = time.monotonic() + 60, None
        while address is None and time.monotonic() < deadline and procs[0].poll() is None:
            found = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", (tmp_path / "scheduler.log").read_text())
            address = found.group(1) if found else time.sleep(0.2)
        assert address, (tmp_path / "scheduler.log").read_text()
        for i in range(2):
            procs.append(_start([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                 "--name", f"worker-{i}"], tmp_path / f"worker-{i}.log", env))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        marker = tmp_path / "killed"
        done = subprocess.run([*msf, *args, "--cache", str(tmp_path / "remote"), "--scheduler", address,
                               "--set", "toy_fragile.die_on=u0007", "--set", f"toy_fragile.marker={marker}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert marker.exists()  # a worker process died by SIGKILL in the middle of the run
        summary = json.loads(done.stdout.strip().splitlines()[-1])["stages"]
        assert {s: (r["computed"], r["failed"]) for s, r in summary.items()} == {
            "audio": (24, 0), "toy_energy": (24, 0), "toy_fragile": (24, 0)}
        logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
        assert f"Worker process {marker.read_text()} was killed by signal 9" in logs  # its nanny saw it die
    finally:
        _stop(procs)
    for stage in ("audio", "toy_energy", "toy_fragile"):
        _assert_same(_records(tmp_path / "local", stage), _records(tmp_path / "remote", stage))
