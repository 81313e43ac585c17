"""The extraction side of msf, by layer: `cache/` (fingerprints, planning, index, shards, read view),
`run/` (driver, workers, executors), `backends/` (models the stages call), and beside them the stage
contract (`stage.py`), the stages, aligners and corpus readers, the configuration and audio decoding."""
