"""The cache index (SQLite): utterance -> shard, row, fingerprint, checksum per stage; failures; audio hashes.

SQLite gives atomic, crash-safe commits, so a kill at any point leaves the index at its last commit.
Only the driver process writes it; workers only write whole shards.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from msf.pipeline.audio_io import content_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    stage TEXT NOT NULL, utt TEXT NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, checksum TEXT NOT NULL, PRIMARY KEY (stage, utt));
CREATE TABLE IF NOT EXISTS failures (
    stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL, error TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (stage, utt));
CREATE TABLE IF NOT EXISTS audio_hashes (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    stage: str
    utt: str
    shard: str
    row: int
    fingerprint: str
    checksum: str


@dataclass(frozen=True)
class Failure:
    stage: str
    utt: str
    fingerprint: str
    error: str
    at: float


class CacheIndex:
    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "index.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- entries ---------------------------------------------------------------------------
    def entries(self, stage: str) -> dict[str, Entry]:
        rows = self.db.execute("SELECT * FROM entries WHERE stage=?", (stage,))
        return {r[1]: Entry(*r) for r in rows}

    def entry(self, stage: str, utt: str) -> Entry | None:
        r = self.db.execute("SELECT * FROM entries WHERE stage=? AND utt=?", (stage, utt)).fetchone()
        return Entry(*r) if r else None

    def stages(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT stage FROM entries ORDER BY stage")]

    def commit(self, entries: Iterable[Entry], failures: Iterable[Failure]) -> None:
        """One shard's results in one transaction: successes replace failures and vice versa."""
        with self.db:
            self.db.execute("BEGIN")
            for e in entries:
                self.db.execute("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?)",
                                (e.stage, e.utt, e.shard, e.row, e.fingerprint, e.checksum))
                self.db.execute("DELETE FROM failures WHERE stage=? AND utt=?", (e.stage, e.utt))
            for f in failures:
                self.db.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?)",
                                (f.stage, f.utt, f.fingerprint, f.error, f.at))
                # The old entry no longer matches the inputs; leaving it would let it pass for fresh.
                self.db.execute("DELETE FROM entries WHERE stage=? AND utt=?", (f.stage, f.utt))

    def drop(self, stage: str, utts: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM entries WHERE stage=? AND utt=?", [(stage, u) for u in utts])

    def referenced_shards(self, stage: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT shard FROM entries WHERE stage=?", (stage,))}

    # -- failures --------------------------------------------------------------------------
    def failures(self, stage: str | None = None) -> list[Failure]:
        if stage is None:
            rows = self.db.execute("SELECT * FROM failures ORDER BY stage, utt")
        else:
            rows = self.db.execute("SELECT * FROM failures WHERE stage=? ORDER BY utt", (stage,))
        return [Failure(*r) for r in rows]

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r[0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    # -- audio hashes ----------------------------------------------------------------------
    def audio_hashes(self, paths: list[str]) -> dict[str, str]:
        """Content hashes, re-reading a file only when its size or mtime changed since last time."""
        known = {r[0]: r[1:] for r in self.db.execute("SELECT * FROM audio_hashes")}
        out: dict[str, str] = {}
        fresh: list[tuple[str, int, int, str]] = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                out[p] = "missing"
                continue
            k = known.get(p)
            if k and k[0] == st.st_size and k[1] == st.st_mtime_ns:
                out[p] = k[2]
                continue
            out[p] = content_hash(p)
            fresh.append((p, st.st_size, st.st_mtime_ns, out[p]))
        if fresh:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO audio_hashes VALUES (?,?,?,?)", fresh)
        return out

    def audio_sizes(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT path, size FROM audio_hashes")}
