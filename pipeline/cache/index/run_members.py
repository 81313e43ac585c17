"""The utterances of the run in progress, held by SQLite (TEMP tables: nothing is written to the cache)
rather than by the driver: their ids in manifest order, and numbered in the order the run plans them."""

from __future__ import annotations

from msf.pipeline.cache.index.records import RecordedUtterance
from msf.pipeline.cache.index.schema import IndexConnection


class RunMembers(IndexConnection):
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

