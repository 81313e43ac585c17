"""The utterances a cache was made from (their manifest rows and content hashes), the named feature sets
and their members, and the members of the run in progress (held by SQLite, not by the driver)."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from msf.pipeline.cache.index.records import FeatureSetRecord, RecordedUtterance
from msf.pipeline.cache.index.schema import IndexConnection, _named_targets
from msf.pipeline.corpus import Utterance


class CorpusRecords(IndexConnection):
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

