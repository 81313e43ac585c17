"""`audio`: the root stage. Decodes and validates each file so a bad one fails here, clearly, once.

Silence is judged as a listener would, by contrast: the loudest frames against the file's own noise
floor. Whole-file RMS is the wrong test: soft-spoken takes (peak -40 dBFS), a quiet recording chain,
or one word in twenty seconds of room tone all have a low RMS and are all speech.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from msf.pipeline.audio_io import AudioError, decode
from msf.pipeline.stage import Item, OutputField, Record, Stage, StageParams, UtteranceError, register

FRAME_S, HOP_S = 0.025, 0.010
LEVEL_FLOOR_DB = -140.0  # the level given to an all-zero frame


class AudioParams(StageParams):
    min_seconds: float = 0.1
    max_seconds: float | None = None  # None: any length (long files are chunked downstream)
    # Every 25 ms frame below this level (after removing DC) is digital silence, not a recording.
    digital_silence_dbfs: float = -90.0
    # Speech rises well above its pauses: above 100 Hz, the loudest frames of speech stand 20-60 dB
    # above the file's noise floor (9 dB even in white noise at 0 dB SNR), steady noise 1-5 dB
    # (white, pink, brown) and hum 0 dB. Below this contrast there is no speech.
    min_contrast_db: float = 7.0
    highpass_hz: float = 100.0  # rumble and hum below the speech band do not count as sound


def frame_levels(x: np.ndarray, sr: int) -> np.ndarray:
    """Level (dBFS) of each 25 ms frame, 10 ms apart, with each frame's own mean (DC) removed.
    Running sums keep memory at O(samples) for hour-long files."""
    win, hop = max(1, int(FRAME_S * sr)), max(1, int(HOP_S * sr))
    if len(x) < win:
        win = len(x)
    starts = np.arange(0, len(x) - win + 1, hop)
    c1 = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    c2 = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    s1, s2 = c1[starts + win] - c1[starts], c2[starts + win] - c2[starts]
    var = np.maximum(s2 / win - (s1 / win) ** 2, 0.0)
    return 10 * np.log10(np.maximum(var, 10 ** (LEVEL_FLOOR_DB / 10)))


def loudness_contrast(levels: np.ndarray) -> tuple[float, float]:
    """(loud, floor) in dBFS: the level the loudest 1 % of frames reach (at least 3 frames, so one
    click is not speech) and the 10th percentile (nearest rank), the file's noise floor."""
    n = len(levels)
    k = min(n, max(3, int(np.ceil(0.01 * n))))
    floor_at = int(0.1 * (n - 1))
    part = np.partition(levels, [floor_at, n - k])  # two order statistics, no full sort
    return float(part[n - k]), float(part[floor_at])


@register
class AudioStage(Stage):
    name = "audio"
    needs = ()
    version = "2"  # 2: silence by contrast against the noise floor, not by whole-file RMS
    fields = {"duration": OutputField("float", doc="seconds"), "sample_rate": OutputField("int"),
              "channels": OutputField("int"), "num_samples": OutputField("int"), "rms_dbfs": OutputField("float"),
              "peak": OutputField("float"), "loud_dbfs": OutputField("float"),
              "noise_floor_dbfs": OutputField("float"), "content_hash": OutputField("str")}
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
        mono = x.mean(axis=1, dtype=np.float64)
        peak = float(np.abs(x).max())
        loud, _ = loudness_contrast(frame_levels(mono, audio.sample_rate))
        if loud < p.digital_silence_dbfs:
            what = (f"a constant DC offset ({float(mono.mean()):+.3f}) and no sound" if peak > 1e-4
                    else "digital silence")
            return UtteranceError(f"silent: {what} (loudest frames {loud:.0f} dBFS < "
                                  f"digital_silence_dbfs={p.digital_silence_dbfs:g})")
        loud, floor = loudness_contrast(frame_levels(self._highpass(mono - mono.mean(), audio.sample_rate),
                                                     audio.sample_rate))
        if loud - floor < p.min_contrast_db:
            return UtteranceError(f"no speech: the loudest frames ({loud:.1f} dBFS) are only {loud - floor:.1f} dB "
                                  f"above the noise floor ({floor:.1f} dBFS); steady noise or hum, not speech "
                                  f"(min_contrast_db={p.min_contrast_db:g})")
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        return {
            "duration": audio.duration,
            "sample_rate": audio.sample_rate,
            "channels": audio.channels,
            "num_samples": int(x.shape[0]),
            "rms_dbfs": float(20 * np.log10(max(rms, 1e-12))),
            "peak": peak,
            "loud_dbfs": loud,
            "noise_floor_dbfs": floor,
            "content_hash": item.audio_hash,
        }

    def _highpass(self, x: np.ndarray, sr: int) -> np.ndarray:
        from scipy.signal import sosfilt

        hz = self.params.highpass_hz  # type: ignore[attr-defined]
        return sosfilt(_highpass_sos(hz, sr), x) if 0 < hz < sr / 2 else x


@lru_cache(maxsize=16)
def _highpass_sos(hz: float, sr: int) -> np.ndarray:
    """Designed once per rate: the design costs 1.5 ms, more than the rest of the stage per file."""
    from scipy.signal import butter

    return butter(4, hz, "highpass", fs=sr, output="sos")
