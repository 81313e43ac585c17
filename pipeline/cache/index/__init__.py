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

from msf.pipeline.cache.index.corpus_records import CorpusRecords
from msf.pipeline.cache.index.entries import EntryTables
from msf.pipeline.cache.index.file_hashes import FileHashes
from msf.pipeline.cache.index.run_members import RunMembers
from msf.pipeline.cache.index.records import Entry, FeatureSetRecord, Failure, RecordedUtterance, root_causes
from msf.pipeline.cache.index.schema import (ENTRY_COLUMNS, FAILURE_COLUMNS, INDEX_FILE, READS, SCHEMA_VERSION,
                                             IndexConnection, index_path)

__all__ = ["CacheIndex", "Entry", "FeatureSetRecord", "Failure", "RecordedUtterance", "root_causes", "INDEX_FILE",
           "READS", "SCHEMA_VERSION", "ENTRY_COLUMNS", "FAILURE_COLUMNS", "index_path"]


class CacheIndex(EntryTables, CorpusRecords, RunMembers, FileHashes, IndexConnection):
    """The index of one cache: one SQLite connection (schema.py) and what it keeps, each part in a
    module of its own: entries, failures and completion markers (entries.py), the utterances and
    feature sets (corpus_records.py), the run in progress (run_members.py), file hashes (file_hashes.py)."""
