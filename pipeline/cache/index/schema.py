"""The index's SQLite file: its schema, the migrations of older schemas, and the connection every part
of the index shares (transactions, meta, whether anything is recorded yet)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from msf.pipeline.cache.index.records import Failure, RecordedUtterance
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


class IndexConnection:
    """The open index: one SQLite connection, its transactions and its meta table. The parts of the
    index (entries.py, corpus_records.py, file_hashes.py) work through it."""

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

    # -- meta ------------------------------------------------------------------------------
    def _recorded(self, r: tuple[Any, ...]) -> RecordedUtterance:
        if self._fixed_labels:  # read-only over a schema 2/3 index: converted as read
            r = _named_targets(r)
        return RecordedUtterance(Utterance.from_row(r), r[7], json.loads(r[8]) if r[8] != "{}" else {})


    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r[0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    def is_empty(self, ignore: Iterable[str] = ()) -> bool:
        """Nothing recorded yet: no entry, failure, utterance, feature set or file hash (but `ignore`'s)."""
        return not any(self.db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()
                       for t in ("entries", "failures", "utterances", "feature_sets", "file_hashes") if t not in ignore)


def _named_targets(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A schema 2/3 `utterances` row (three label columns) as schema 4 records it (named targets)."""
    targets = {k: v for k, v in zip(FIXED_LABELS, row[5:8]) if v is not None}
    return (*row[:5], Utterance(row[0], row[1], targets=targets).to_row()[5], *row[8:])  # the one serialiser
