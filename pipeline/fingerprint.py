"""Fingerprints: what an entry was computed from, so reruns compute exactly what changed.

fingerprint = H(stage name, stage version, its parameters, the utterance fields it reads,
               the input audio's content hash, the fingerprints of its upstream entries)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from msf.pipeline.stage import Stage, StageParams


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: equal values always hash equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint_for(
    stage: type[Stage],
    params: StageParams,
    audio_hash: str,
    fields: Mapping[str, Any],
    upstream: Mapping[str, str],
) -> str:
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "params": stage.fingerprint_params(params),
        "fields": dict(fields),
        "audio": audio_hash,
        "upstream": dict(upstream),
    }
    return hashlib.blake2b(canonical_json(payload).encode(), digest_size=16).hexdigest()
