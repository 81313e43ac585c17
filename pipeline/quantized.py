"""One byte a value for frame arrays: symmetric int8 with a float32 scale per frame and layer.

A stage stores `F` as int8 and `F_scale` beside it; the shard reader (the one place every cache read
goes through) gives `F` back as float32 and never shows `F_scale`, so the read API, the trainer and
`msf export` read floats without knowing.

Why per frame and layer, not per channel: the scale then has the frames' own first axis (T, or T x L),
so a window of frames or a subset of layers is read with its scales by the same offsets, spans and
layer selection as the frames themselves; and each frame's error is bounded by half a step of its own
peak, whatever the loudness of the rest of the utterance. The scale costs 4 bytes per frame and layer:
1 % of a 384-wide frame, 0.4 % of WavLM-Large's 1,024 (bench/frames_storage.py measures the error)."""

from __future__ import annotations

import numpy as np

SCALE_SUFFIX = "_scale"
LEVELS = 127  # symmetric: -127..127, so 0 is exact and the range is the same either side


def quantize(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scale over the last axis): frames ~= values * scale[..., None]."""
    x = np.asarray(frames, dtype=np.float32)
    peak = np.abs(x).max(axis=-1)
    scale = (peak / LEVELS).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    values = np.clip(np.rint(x / safe), -LEVELS, LEVELS).astype(np.int8)
    return values, scale


def dequantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 frames from int8 values and their scale (one multiply; no float16 on the way, which
    numpy does not vectorise)."""
    return np.multiply(values, scale[..., None], dtype=np.float32)


def decode_record(record: dict) -> dict:
    """A record as readers see it: every `F` with an `F_scale` beside it dequantized, the scale gone."""
    scales = [k for k in record if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in record]
    if not scales:
        return record
    out = dict(record)
    for k in scales:
        name = k[: -len(SCALE_SUFFIX)]
        out[name] = dequantize(out[name], out.pop(k))
    return out
