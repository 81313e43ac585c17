"""The rows the index keeps, as Python sees them: entries, failures, recorded utterances, feature sets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from msf.pipeline.corpus import Utterance

# Schemas 2-4 wrote a failure blocked upstream as this sentence around the upstream stage's error.
OLD_UPSTREAM = re.compile(r"upstream stage '([^']+)' failed: (.*)", re.S)


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

