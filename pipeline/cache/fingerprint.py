"""Fingerprints: what an entry was computed from, so reruns compute exactly what changed.

    params digest = H(stage name, stage version, its parameters minus the volatile ones)
    fingerprint   = H(params digest, audio content hash, digests of the utterance fields the stage
                      reads, fingerprints of its upstream entries [, its speaker group's digest])

The parts are plain strings kept beside each entry, so a stale entry can say which part changed.
Field values enter as digests, and a field naming a file (a provided alignment) as that file's
content hash, never its path: a moved corpus keeps its fingerprints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from msf.pipeline.corpus import canonical_json  # noqa: F401 - fingerprints' serialiser, re-exported
from msf.pipeline.stage import Stage, StageParams


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def params_digest(stage: type[Stage], params: StageParams) -> str:
    return digest(canonical_json({"stage": stage.name, "version": stage.version,
                                  "params": stage.fingerprint_params(params)}))


def fingerprint_for(params: str, audio: str, fields: str, upstream: str, group: str = "") -> str:
    """The one fingerprint formula (see the module docstring); planning and `Parts` both call it."""
    base = digest(f"{params}|{audio}|{fields}|{upstream}")
    return digest(f"{base}|{group}") if group else base


@dataclass(frozen=True)
class Parts:
    """An entry's fingerprint, taken apart: `fields` is `name=digest;...`, `upstream` is `stage=fp;...`."""

    params: str
    audio: str
    fields: str
    upstream: str
    group: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint_for(self.params, self.audio, self.fields, self.upstream, self.group)


def join_parts(pairs: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs.items())


def split_parts(joined: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in joined.split(";")) if joined else {}
