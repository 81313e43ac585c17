"""Corpora, the stage framework, the stages, the shard store and the runner."""
