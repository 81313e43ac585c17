"""`audio`: the root stage. Decodes and validates each file so a bad one fails here, clearly, once."""

from __future__ import annotations

import numpy as np

from msf.pipeline.audio_io import AudioError, decode
from msf.pipeline.stage import Item, Record, Stage, StageParams, UtteranceError, register


class AudioParams(StageParams):
    min_seconds: float = 0.1
    max_seconds: float | None = None  # None: any length (long files are chunked downstream)
    silence_dbfs: float = -60.0  # RMS below this is "silent", not speech


@register
class AudioStage(Stage):
    name = "audio"
    needs = ()
    version = "1"
    Params = AudioParams
    batch_size = 64

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        return [self._one(item) for item in batch]

    def _one(self, item: Item) -> Record | Exception:
        p: AudioParams = self.params  # type: ignore[assignment]
        try:
            audio = decode(item.utt.audio)
        except AudioError as e:
            return UtteranceError(str(e))
        x = audio.samples
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            return UtteranceError(f"{bad} samples are NaN or infinite")
        if audio.duration < p.min_seconds:
            return UtteranceError(f"too short: {audio.duration:.3f} s < min_seconds={p.min_seconds:g}")
        if p.max_seconds is not None and audio.duration > p.max_seconds:
            return UtteranceError(f"too long: {audio.duration:.1f} s > max_seconds={p.max_seconds:g}")
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        rms_db = 20 * np.log10(max(rms, 1e-12))
        if rms_db < p.silence_dbfs:
            return UtteranceError(f"silent: RMS {rms_db:.1f} dBFS < silence_dbfs={p.silence_dbfs:g}")
        return {
            "duration": audio.duration,
            "sample_rate": audio.sample_rate,
            "channels": audio.channels,
            "num_samples": int(x.shape[0]),
            "rms_dbfs": float(rms_db),
            "peak": float(np.abs(x).max()),
            "content_hash": item.audio_hash,
        }
