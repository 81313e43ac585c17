"""The utterances a cache was made from (their manifest rows and content hashes), and the named feature
sets with their members (read through SQLite: a set of a million never passes through a Python list)."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from msf.pipeline.cache.index.records import FeatureSetRecord, RecordedUtterance
from msf.pipeline.cache.index.schema import IndexConnection


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

    def feature_sets(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM feature_sets ORDER BY name")]

    def forget_set(self, name: str) -> bool:
        with self.transaction():
            return self.db.execute("DELETE FROM feature_sets WHERE name=?", (name,)).rowcount > 0

