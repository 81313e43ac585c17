"""The cache: fingerprints, planning (what is fresh), the SQLite index, the shard store, the lock, and
the public read view over a named feature set (`msf.open_cache`)."""
