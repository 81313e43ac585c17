"""The cache index (SQLite): what each entry was computed from and where it is, the utterances the cache
was made from, the named feature sets, failures and file hashes.

Entries are keyed by (stage, utterance, fingerprint), like DVC's run cache: several variants of a stage
live side by side, and going back to an earlier setting finds its entries again. Beside each entry the
parts of its fingerprint are kept (parameter digest, audio hash, field digests, upstream fingerprints,
group digest), so `msf status --why` can say what changed, not only that something did.

SQLite gives atomic, crash-safe commits: a kill at any point leaves the index at its last commit.
Only the driver process writes it; workers only write whole shards.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from msf.pipeline.audio_io import content_hash
from msf.pipeline.config import ConfigError
from msf.pipeline.corpus import Utterance
from msf.pipeline.errors import CacheDamaged

INDEX_FILE = "index.sqlite"


def index_path(cache: Path) -> Path:
    """Where a cache's index is: the file whose presence makes a folder a cache."""
    return Path(cache) / INDEX_FILE


# 3: failures kept per fingerprint, like entries; 4: labels as named targets (one JSON column), not three;
# 5: a failure's kind and, for one blocked upstream, the stage where it began (its cause)
SCHEMA_VERSION = "5"
READS = f"index schemas 2 to {SCHEMA_VERSION}"  # every earlier one is migrated by a writer
# A failure belongs to the fingerprint that failed: other variants of the stage keep theirs.
FAILURES_TABLE = """CREATE TABLE IF NOT EXISTS failures (
    stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL, error TEXT NOT NULL,
    at REAL NOT NULL, kind TEXT NOT NULL DEFAULT 'error', cause TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stage, utt, fingerprint))"""
FAILURE_COLUMNS = "stage, utt, fingerprint, error, at, kind, cause"
# Schemas 2-4 wrote a failure blocked upstream as this sentence around the upstream stage's error.
OLD_UPSTREAM = re.compile(r"upstream stage '([^']+)' failed: (.*)", re.S)
# An utterance as recorded (Utterance.to_row, then the content hashes fingerprints use).
UTTERANCES_TABLE = """CREATE TABLE IF NOT EXISTS utterances (
    id TEXT PRIMARY KEY, audio TEXT NOT NULL, speaker TEXT NOT NULL, split TEXT NOT NULL, transcript TEXT,
    targets TEXT NOT NULL, extra TEXT NOT NULL, audio_hash TEXT NOT NULL, files TEXT NOT NULL)"""
# Schemas 2 and 3 kept three label columns where `targets` is
FIXED_LABELS = ("valence", "arousal", "dominance")
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL,
    shard TEXT NOT NULL, row INTEGER NOT NULL, checksum TEXT NOT NULL, bytes INTEGER NOT NULL,
    params TEXT NOT NULL, audio TEXT NOT NULL, fields TEXT NOT NULL, upstream TEXT NOT NULL,
    grp TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (stage, utt, fingerprint));
CREATE TABLE IF NOT EXISTS params (
    digest TEXT PRIMARY KEY, stage TEXT NOT NULL, version TEXT NOT NULL, params TEXT NOT NULL);
%s;
%s;
CREATE TABLE IF NOT EXISTS feature_sets (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, stages TEXT NOT NULL, corpus TEXT NOT NULL,
    members TEXT NOT NULL, rows_digest TEXT NOT NULL, corpus_digest TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS completions (
    stage TEXT NOT NULL, key TEXT NOT NULL, shards TEXT NOT NULL, n INTEGER NOT NULL, bytes INTEGER NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (stage, key));
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" % (FAILURES_TABLE, UTTERANCES_TABLE)
ENTRY_COLUMNS = "stage, utt, fingerprint, shard, row, checksum, bytes, params, audio, fields, upstream, grp, created"


@dataclass(frozen=True)
class Entry:
    stage: str
    utt: str
    fingerprint: str
    shard: str
    row: int
    checksum: str
    bytes: int = 0
    # the fingerprint's parts (see pipeline/cache/fingerprint.py)
    params: str = ""
    audio: str = ""
    fields: str = ""
    upstream: str = ""
    grp: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class Failure:
    """An utterance a stage could not compute under one fingerprint. `kind` says what went wrong, so
    nothing reads it from the message: `bad input` (the utterance's audio, words or files), `endpoint`
    (an LLM endpoint's answer), `task` (the task computing it crashed), `cache` (an upstream entry
    could not be read), `error` (anything else a stage raised), `upstream` (not computed because stage
    `cause` failed for it: `error` is that stage's message, said once, not once per stage)."""

    stage: str
    utt: str
    fingerprint: str
    error: str
    at: float
    kind: str = "error"
    cause: str = ""  # kind upstream: the stage where the failure began

    @property
    def root(self) -> str:
        """The stage where this failure began."""
        return self.cause or self.stage

    def message(self) -> str:
        return f"upstream stage {self.cause!r} failed: {self.error}" if self.kind == "upstream" else self.error

    @classmethod
    def from_row(cls, row: tuple) -> "Failure":
        """A row of any schema: before schema 5 a failure had no kind, and one blocked upstream was a
        sentence wrapped around the upstream error, once per stage it crossed (read here, once)."""
        if len(row) > 5:
            return cls(*row)
        stage, utt, fp, error, at = row
        cause = ""
        while (m := OLD_UPSTREAM.fullmatch(error)) is not None:
            cause, error = m.group(1), m.group(2)
        return cls(stage, utt, fp, error, at, "upstream" if cause else "error", cause)


def root_causes(failures: Iterable[Failure]) -> list[tuple[Failure, list[str]]]:
    """Each utterance's failures as their root causes, each once, with the stages it blocked (in the
    order given): what `msf status --failed` shows."""
    roots: dict[tuple[str, str], Failure] = {}
    blocked: dict[tuple[str, str], list[str]] = {}
    for f in failures:
        key = (f.utt, f.root)
        if f.kind == "upstream":
            blocked.setdefault(key, []).append(f.stage)
            roots.setdefault(key, Failure(f.root, f.utt, "", f.error, f.at))  # until the root's own row comes
        else:
            roots[key] = f
            blocked.setdefault(key, [])
    return [(roots[k], blocked[k]) for k in sorted(roots)]


@dataclass(frozen=True)
class RecordedUtterance:
    """A manifest row as the cache recorded it, with the content hashes fingerprints use."""

    utt: Utterance
    audio_hash: str
    files: dict[str, str]  # extra key -> content hash, for extras naming files


@dataclass(frozen=True)
class FeatureSetRecord:
    name: str
    config: str  # MsfConfig JSON
    stages: list[str]
    corpus: str
    rows_digest: str  # of the members' recorded rows (Source.record), see planning.completion_keys
    corpus_digest: str  # of the manifest the rows came from ("" when the reader has none)
    updated: float


class CacheIndex:
    def __init__(self, root: Path, readonly: bool = False):
        """`readonly` (a dry run): SQLite refuses every write, and a cache that does not exist yet is
        an empty index in memory, so nothing is created on disk."""
        self.path = index_path(root)
        self.commits = 0  # shards' results committed through this index object (Extraction.run reads it)
        self._scoped = ""  # the SQL condition of an open `scope`
        try:
            self._open(root, readonly)
        except sqlite3.DatabaseError as e:  # overwritten, truncated, or not SQLite at all
            raise CacheDamaged(
                f"the cache index {self.path} is damaged ({e}). The shards cannot be read without it (it "
                "holds their fingerprints): restore index.sqlite from a backup, salvage what SQLite can "
                "(`sqlite3 index.sqlite .recover | sqlite3 recovered.sqlite`, then put that in its place), or "
                "extract into a new --cache") from None

    def _open(self, root: Path, readonly: bool) -> None:
        self.readonly = readonly
        if not readonly:
            root.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        elif self.path.is_file():  # immutable: not even SQLite's -shm/-wal files, unless a WAL is there
            wal = self.path.with_name(self.path.name + "-wal").exists()
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro" + ("" if wal else "&immutable=1"), uri=True,
                                      isolation_level=None)
        else:
            self.db = sqlite3.connect(":memory:", isolation_level=None)
        old = {r[1] for r in self.db.execute("PRAGMA table_info(entries)")}
        if old and "params" not in old:
            self.db.close()
            raise ConfigError(f"the cache {root} was written by an older msf (index schema 1) that kept one "
                              f"entry per stage and utterance; msf 0.1 reads {READS}: extract into a new cache "
                              "directory")
        try:
            written = self.get_meta("schema") if old else None
        except sqlite3.OperationalError:  # no meta table yet
            written = None
        if written is not None and written.isdigit() and int(written) > int(SCHEMA_VERSION):
            self.db.close()
            raise ConfigError(f"the cache {root} was written by a newer msf (index schema {written}); this msf "
                              f"reads {READS}: upgrade msf to read it")
        if not old or not readonly:
            self._kind_failures()
            self._key_failures_by_fingerprint()
            self._name_targets()
            self.db.executescript(SCHEMA)
        # read-only over a schema 2/3 index: its rows are converted as they are read (`utterances`)
        self._fixed_labels = "valence" in {r[1] for r in self.db.execute("PRAGMA table_info(utterances)")}
        if not readonly and self.get_meta("schema") != SCHEMA_VERSION:  # new, or migrated above
            self.set_meta("schema", SCHEMA_VERSION)

    def _key_failures_by_fingerprint(self) -> None:
        """Schema 2 kept one failure per (stage, utterance): another variant's success erased it, and
        the failed variant then read as stale. Rekey the table by fingerprint, keeping its rows."""
        pk = [r[1] for r in sorted(self.db.execute("PRAGMA table_info(failures)"), key=lambda r: r[5]) if r[5]]
        if pk != ["stage", "utt"]:
            return
        with self.transaction():
            self.db.execute("ALTER TABLE failures RENAME TO failures_schema2")
            self.db.execute(FAILURES_TABLE)
            self.db.execute(f"INSERT INTO failures SELECT {FAILURE_COLUMNS} FROM failures_schema2")
            self.db.execute("DROP TABLE failures_schema2")

    def _kind_failures(self) -> None:
        """Schemas 2-4 kept no kind: add the columns, and give each old failure its kind and cause."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(failures)")}
        if not columns or "kind" in columns:
            return
        with self.transaction():
            self.db.execute("ALTER TABLE failures ADD COLUMN kind TEXT NOT NULL DEFAULT 'error'")
            self.db.execute("ALTER TABLE failures ADD COLUMN cause TEXT NOT NULL DEFAULT ''")
            old = [Failure.from_row(r) for r in self.db.execute(
                "SELECT stage, utt, fingerprint, error, at FROM failures WHERE error LIKE 'upstream stage %'")]
            self.db.executemany("UPDATE failures SET error=?, kind=?, cause=? WHERE stage=? AND utt=? AND fingerprint=?",
                                [(f.error, f.kind, f.cause, f.stage, f.utt, f.fingerprint) for f in old])

    def _name_targets(self) -> None:
        """Schemas 2 and 3 kept the labels in three columns (valence, arousal, dominance): move them into
        the named `targets` of each row, keeping every row."""
        if "valence" not in {r[1] for r in self.db.execute("PRAGMA table_info(utterances)")}:
            return
        with self.transaction():
            self.db.execute("ALTER TABLE utterances RENAME TO utterances_schema3")
            self.db.execute(UTTERANCES_TABLE)
            rows = self.db.execute("SELECT * FROM utterances_schema3")
            self.db.executemany("INSERT INTO utterances VALUES (?,?,?,?,?,?,?,?,?)", map(_named_targets, rows))
            self.db.execute("DROP TABLE utterances_schema3")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write. With autocommit (isolation_level=None), `with db:` alone opens no
        transaction: every row of an executemany would commit, and fsync, on its own."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

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

    def entry(self, stage: str, utt: str, fingerprint: str) -> Entry | None:
        r = self.db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE stage=? AND utt=? AND fingerprint=?",
                            (stage, utt, fingerprint)).fetchone()
        return Entry(*r) if r else None

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

    # -- utterances and named feature sets ---------------------------------------------------
    def record_utterances(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows as `Source.record` makes them; only those that differ from the recorded ones are written
        (a rerun after one edited transcript writes one row, not a million)."""
        rows = list(rows)
        known: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(rows), 500):
            ids = [r[0] for r in rows[start : start + 500]]
            known.update((r[0], r) for r in self.db.execute(
                f"SELECT * FROM utterances WHERE id IN ({','.join('?' * len(ids))})", ids))
        changed = [r for r in rows if known.get(r[0]) != tuple(r)]
        if changed:
            with self.transaction():
                self.db.executemany("INSERT OR REPLACE INTO utterances VALUES (?,?,?,?,?,?,?,?,?)", changed)

    def utterances(self, ids: Iterable[str] | None = None) -> dict[str, RecordedUtterance]:
        rows = self.db.execute("SELECT * FROM utterances")
        out = {r.utt.id: r for r in map(self._recorded, rows)}
        return out if ids is None else {i: out[i] for i in ids if i in out}

    def _recorded(self, r: tuple[Any, ...]) -> RecordedUtterance:
        if self._fixed_labels:  # read-only over a schema 2/3 index: converted as read
            r = _named_targets(r)
        return RecordedUtterance(Utterance.from_row(r), r[7], json.loads(r[8]) if r[8] != "{}" else {})

    def record_set(self, s: FeatureSetRecord, members: Iterable[str] | None = None) -> None:
        """The set's record; its members are `members`, or, when None, the run's (`add_members`),
        joined by SQLite so that a million ids never pass through a Python list."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO feature_sets VALUES (?,?,?,?,?,?,?,?)",
                            (s.name, s.config, json.dumps(s.stages), s.corpus,
                             "[]" if members is None else json.dumps(list(members)), s.rows_digest,
                             s.corpus_digest, s.updated))
            if members is None:
                self.db.execute("UPDATE feature_sets SET members = (SELECT json_group_array(utt) FROM "
                                "(SELECT utt FROM temp.run_members ORDER BY pos)) WHERE name=?", (s.name,))

    def feature_set(self, name: str) -> FeatureSetRecord | None:
        """The set's record, without its members (`members`, `member_utterances`)."""
        r = self.db.execute("SELECT name, config, stages, corpus, rows_digest, corpus_digest, updated "
                            "FROM feature_sets WHERE name=?", (name,)).fetchone()
        return FeatureSetRecord(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6]) if r else None

    def members(self, name: str) -> list[str]:
        """The set's utterance ids, in manifest order."""
        r = self.db.execute("SELECT members FROM feature_sets WHERE name=?", (name,)).fetchone()
        return json.loads(r[0]) if r else []

    def member_utterances(self, name: str) -> Iterator[RecordedUtterance | str]:
        """The set's members as recorded, in manifest order, as SQLite yields them (a member with no
        recorded row: its id)."""
        rows = self.db.execute("SELECT j.value, u.* FROM feature_sets s, json_each(s.members) j "
                               "LEFT JOIN utterances u ON u.id = j.value WHERE s.name=? ORDER BY j.key", (name,))
        return (self._recorded(r[1:]) if r[1] is not None else r[0] for r in rows)

    def save_set(self, name: str) -> None:
        """Keep the set's record as it is now (in a TEMP table), for `restore_set`."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS saved_sets AS SELECT * FROM feature_sets WHERE 0")
        self.db.execute("DELETE FROM temp.saved_sets WHERE name=?", (name,))
        self.db.execute("INSERT INTO temp.saved_sets SELECT * FROM feature_sets WHERE name=?", (name,))

    def restore_set(self, name: str) -> None:
        """The set's record as `save_set` kept it (none then: none now)."""
        with self.transaction():
            self.db.execute("DELETE FROM feature_sets WHERE name=?", (name,))
            self.db.execute("INSERT INTO feature_sets SELECT * FROM temp.saved_sets WHERE name=?", (name,))

    # -- the utterances of one run, held by SQLite (a TEMP table) rather than by the driver --------
    def start_members(self) -> None:
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS run_members (pos INTEGER PRIMARY KEY, utt TEXT UNIQUE)")
        self.db.execute("DELETE FROM temp.run_members")

    def add_members(self, ids: list[str]) -> set[str]:
        """Append `ids` (distinct) to the run's members; those already there are returned, not added."""
        dups: set[str] = set()
        for start in range(0, len(ids), 500):
            block = ids[start : start + 500]
            dups.update(r[0] for r in self.db.execute(
                f"SELECT utt FROM temp.run_members WHERE utt IN ({','.join('?' * len(block))})", block))
        self.db.executemany("INSERT INTO temp.run_members (utt) VALUES (?)", ((u,) for u in ids if u not in dups))
        return dups

    def order_members(self, group_by: str | None) -> None:
        """Number the run's members for `run_rows`: in manifest order, or each group of `group_by` (a
        recorded column: speaker, split) together, in manifest order within it."""
        assert group_by in (None, "speaker", "split")
        order = f"u.{group_by}, m.pos" if group_by else "m.pos"
        self.db.execute("DROP TABLE IF EXISTS temp.run_order")
        self.db.execute("CREATE TEMP TABLE run_order (n INTEGER PRIMARY KEY, utt TEXT NOT NULL)")
        self.db.execute("INSERT INTO temp.run_order (utt) SELECT m.utt FROM temp.run_members m "
                        f"JOIN utterances u ON u.id = m.utt ORDER BY {order}")

    def run_rows(self, first: int, last: int) -> list[RecordedUtterance]:
        """Members `first` to `last` (from 1) of the order `order_members` numbered, as recorded; read
        whole (no cursor stays open while the run commits)."""
        rows = self.db.execute("SELECT u.* FROM temp.run_order o JOIN utterances u ON u.id = o.utt "
                               "WHERE o.n BETWEEN ? AND ? ORDER BY o.n", (first, last)).fetchall()
        return [self._recorded(r) for r in rows]

    def members_from_set(self, name: str) -> None:
        """The run's members are the set's recorded ones (a corpus unchanged since its last extraction)."""
        self.start_members()
        self.db.execute("INSERT INTO temp.run_members (utt) SELECT j.value FROM feature_sets s, json_each(s.members) j "
                        "WHERE s.name=? ORDER BY j.key", (name,))

    def run_member_count(self, recorded: bool = False) -> int:
        """The run's members (`recorded`: those with a recorded row)."""
        join = " JOIN utterances u ON u.id = m.utt" if recorded else ""
        return self.db.execute(f"SELECT COUNT(*) FROM temp.run_members m{join}").fetchone()[0]

    def feature_sets(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM feature_sets ORDER BY name")]

    def forget_set(self, name: str) -> bool:
        with self.transaction():
            return self.db.execute("DELETE FROM feature_sets WHERE name=?", (name,)).rowcount > 0

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

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r[0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    # -- file hashes -----------------------------------------------------------------------
    def file_hashes(self, paths: Iterable[str], progress: Callable[[int], None] | None = None) -> dict[str, str]:
        """Content hashes, re-reading a file only when its size or mtime changed since last time;
        "missing" for a file that is not there. New files are read by a few threads (reads and
        blake2b release the GIL): a first run over a large corpus is I/O, not Python."""
        paths = list(dict.fromkeys(paths))
        known = self._known_hashes(paths)
        out: dict[str, str] = {}
        todo: list[tuple[str, int, int]] = []
        stat = os.stat
        for p in paths:
            if p in out:
                continue
            try:
                st = stat(p)
            except OSError:
                out[p] = "missing"
                continue
            k = known.get(p)
            if k is not None and k[0] == st.st_size and k[1] == st.st_mtime_ns:
                out[p] = k[2]
                continue
            out[p] = ""
            todo.append((p, st.st_size, st.st_mtime_ns))
        if todo and self.readonly:  # hashed, not recorded
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
                out.update(zip([t[0] for t in todo], pool.map(lambda t: content_hash(t[0]), todo)))
        elif todo:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
                for start in range(0, len(todo), 1024):  # committed in blocks: an interrupted first run keeps them
                    block = todo[start : start + 1024]
                    hashed = list(pool.map(lambda t: content_hash(t[0]), block))
                    with self.transaction():
                        self.db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?,?,?,?)",
                                            [(p, size, mtime, h) for (p, size, mtime), h in zip(block, hashed)])
                    out.update((p, h) for (p, _, _), h in zip(block, hashed))
                    if progress:
                        progress(len(block))
        return out

    def _known_hashes(self, paths: list[str]) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, hash) of those of `paths` hashed before: looked up in blocks, never
        the whole table (a million rows would be the driver's largest object)."""
        known: dict[str, tuple[int, int, str]] = {}
        for start in range(0, len(paths), 500):
            block = paths[start : start + 500]
            rows = self.db.execute(f"SELECT * FROM file_hashes WHERE path IN ({','.join('?' * len(block))})", block)
            known.update((p, (size, mtime, h)) for p, size, mtime, h in rows)
        return known

    def is_empty(self, ignore: Iterable[str] = ()) -> bool:
        """Nothing recorded yet: no entry, failure, utterance, feature set or file hash (but `ignore`'s)."""
        return not any(self.db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                       for t in ("entries", "failures", "utterances", "feature_sets", "file_hashes") if t not in ignore)

    def recorded_files_unchanged(self) -> bool:
        """Whether every file the recorded utterances name (audio, provided alignments) still has the
        size and mtime it had when hashed: one stat each, no read."""
        from msf.pipeline.corpus import FILE_EXTRAS

        extras = {p for (e,) in self.db.execute("SELECT DISTINCT extra FROM utterances") if e != "{}"
                  for k, p in json.loads(e).items() if k in FILE_EXTRAS}
        known = self._known_hashes(sorted(extras))
        rows = itertools.chain(  # a cursor: a million rows are stat-ed as they come, never held
            self.db.execute("SELECT u.audio, f.size, f.mtime_ns FROM utterances u "
                            "LEFT JOIN file_hashes f ON f.path = u.audio"),
            ((p, *known[p][:2]) if p in known else (p, None, None) for p in extras))
        stat = os.stat
        for path, size, mtime in rows:
            try:
                st = stat(path)
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime:
                return False
        return True

    def file_sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """Bytes of those of `paths` hashed before."""
        return {p: k[0] for p, k in self._known_hashes(list(dict.fromkeys(paths))).items()}


def _named_targets(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A schema 2/3 `utterances` row (three label columns) as schema 4 records it (named targets)."""
    targets = {k: v for k, v in zip(FIXED_LABELS, row[5:8]) if v is not None}
    return (*row[:5], Utterance(row[0], row[1], targets=targets).to_row()[5], *row[8:])  # the one serialiser
