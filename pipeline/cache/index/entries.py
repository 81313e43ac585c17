"""Entries and failures by (stage, utterance, fingerprint), the parameters behind their digests, and the
completion markers: what planning reads and the driver commits."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from msf.pipeline.cache.index.records import Entry, Failure
from msf.pipeline.cache.index.schema import ENTRY_COLUMNS, FAILURE_COLUMNS, IndexConnection


class EntryTables(IndexConnection):
    # -- a chunk of a large corpus at a time ------------------------------------------------
    @contextmanager
    def scope(self, utts: Iterable[str]) -> Iterator[None]:
        """While open, the per-stage reads below (stored, locations, entries, latest, failures) see
        these utterances only: a run over a corpus of a million plans a chunk at a time, and the
        driver never holds a stage's million index rows. A TEMP table: nothing is written to the cache."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS scope (utt TEXT PRIMARY KEY)")
        self.db.execute("DELETE FROM temp.scope")
        self.db.executemany("INSERT OR IGNORE INTO temp.scope VALUES (?)", ((u,) for u in utts))
        self._scoped = " AND utt IN (SELECT utt FROM temp.scope)"
        try:
            yield
        finally:
            self._scoped = ""
            self.db.execute("DELETE FROM temp.scope")

    # -- entries ---------------------------------------------------------------------------
    def stored(self, stage: str) -> dict[tuple[str, str], tuple[str, int]]:
        """(utterance, fingerprint) -> (shard, bytes), for every entry of a stage: the cheap freshness check."""
        rows = self.db.execute(f"SELECT utt, fingerprint, shard, bytes FROM entries WHERE stage=?{self._scoped}",
                               (stage,))
        return {(u, fp): (shard, n) for u, fp, shard, n in rows}

    def locations(self, stage: str) -> dict[tuple[str, str], tuple[str, int]]:
        """(utterance, fingerprint) -> (shard, row): where a task reads its upstream inputs."""
        rows = self.db.execute(f"SELECT utt, fingerprint, shard, row FROM entries WHERE stage=?{self._scoped}",
                               (stage,))
        return {(u, fp): (shard, r) for u, fp, shard, r in rows}

    def entries(self, stage: str, keys: Iterable[tuple[str, str]] | None = None) -> dict[tuple[str, str], Entry]:
        """Entries of a stage by (utterance, fingerprint); all of them, or those of `keys`."""
        rows = self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE stage=?{self._scoped}", (stage,))
        out = {(r[1], r[2]): Entry(*r) for r in rows}
        return out if keys is None else {k: out[k] for k in keys if k in out}

    def latest(self, stage: str) -> dict[str, Entry]:
        """The most recently computed entry of each utterance (what `--why` compares against)."""
        rows = self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE stage=?{self._scoped} ORDER BY created",
                               (stage,))
        return {r[1]: Entry(*r) for r in rows}

    def stages(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT stage FROM entries ORDER BY stage")]

    def commit(self, entries: Iterable[Entry], failures: Iterable[Failure]) -> None:
        """One shard's results in one transaction. A success clears the failure of its own fingerprint
        only; a failure leaves every stored variant in place (they are still what their fingerprints say)."""
        self.commits += 1
        with self.transaction():
            rows = [(e.stage, e.utt, e.fingerprint, e.shard, e.row, e.checksum, e.bytes, e.params, e.audio,
                     e.fields, e.upstream, e.grp, e.created or time.time()) for e in entries]
            self.db.executemany(f"INSERT OR REPLACE INTO entries ({ENTRY_COLUMNS}) VALUES "
                                "(?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.db.executemany("DELETE FROM failures WHERE stage=? AND utt=? AND fingerprint=?",
                                [(r[0], r[1], r[2]) for r in rows])
            self.db.executemany(f"INSERT OR REPLACE INTO failures ({FAILURE_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                                [(f.stage, f.utt, f.fingerprint, f.error, f.at, f.kind, f.cause) for f in failures])

    def drop(self, stage: str, keys: Iterable[tuple[str, str]]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM entries WHERE stage=? AND utt=? AND fingerprint=?",
                                [(stage, u, fp) for u, fp in keys])
            self.db.execute("DELETE FROM completions WHERE stage=?", (stage,))  # they may name a dropped entry

    def referenced_shards(self, stage: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT shard FROM entries WHERE stage=?", (stage,))}

    def bytes_by_stage(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT stage, SUM(bytes) FROM entries GROUP BY stage"))

    # -- parameters, by digest (so `--why` can name the key that changed) --------------------
    def record_params(self, digest: str, stage: str, version: str, params: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO params VALUES (?,?,?,?)",
                            (digest, stage, version, json.dumps(params, sort_keys=True)))

    def params(self, digest: str) -> tuple[str, dict[str, Any]] | None:
        r = self.db.execute("SELECT version, params FROM params WHERE digest=?", (digest,)).fetchone()
        return (r[0], json.loads(r[1])) if r else None

    # -- failures --------------------------------------------------------------------------
    def failures(self, stage: str | None = None) -> list[Failure]:
        # read-only over a schema 2-4 index: no kind column, converted as read (Failure.from_row)
        columns = FAILURE_COLUMNS if "kind" in {r[1] for r in self.db.execute("PRAGMA table_info(failures)")} \
            else "stage, utt, fingerprint, error, at"
        if stage is None:
            rows = self.db.execute(f"SELECT {columns} FROM failures WHERE 1{self._scoped} ORDER BY stage, utt")
        else:
            rows = self.db.execute(f"SELECT {columns} FROM failures WHERE stage=?{self._scoped} ORDER BY utt",
                                   (stage,))
        return [Failure.from_row(r) for r in rows]

    # -- completion markers (the cheapest check first; planning.completion_keys) ---------------
    def completion(self, stage: str, key: str) -> tuple[list[str], int, int] | None:
        """(shards, entries, bytes) of a run that left every entry of this stage fresh for `key`."""
        r = self.db.execute("SELECT shards, n, bytes FROM completions WHERE stage=? AND key=?", (stage, key)).fetchone()
        return (json.loads(r[0]), r[1], r[2]) if r else None

    def record_completion(self, stage: str, key: str, shards: Iterable[str], n: int, nbytes: int,
                          keep: int = 8) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO completions VALUES (?,?,?,?,?,?)",
                            (stage, key, json.dumps(sorted(shards)), n, nbytes, time.time()))
            self.db.execute("DELETE FROM completions WHERE stage=? AND key NOT IN (SELECT key FROM completions "
                            "WHERE stage=? ORDER BY at DESC LIMIT ?)", (stage, stage, keep))

