"""One writer per cache (and per training run): an advisory flock that the kernel releases even on
kill -9."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from msf.pipeline.errors import MsfError


class CacheBusy(MsfError, RuntimeError):
    """Another process holds the cache's writer lock."""


class CacheLock:
    """`kind` and `way_out` name the folder and the option to pick another in the busy message."""

    def __init__(self, root: Path, wait_s: float = 0.0, kind: str = "cache",
                 way_out: str = "(or pass --wait SECONDS), or use another --cache"):
        self.path = root / ".lock"
        self.wait_s = wait_s
        self.kind, self.way_out = kind, way_out
        self._fd: int | None = None

    def __enter__(self) -> "CacheLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace")
                    os.close(fd)
                    raise CacheBusy(self._busy_message(holder)) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def _busy_message(self, holder: str) -> str:
        try:
            h = json.loads(holder)
            who = f"msf process {h['pid']} on {h['host']} (since {h['since']})"
        except (ValueError, KeyError):
            who = "another msf process"
        return f"the {self.kind} {self.path.parent} is in use by {who}; wait for it to finish {self.way_out}"

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
