"""Decoding, validation and resampling of input audio (soundfile + soxr; torchaudio is unusable here)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_SR = 16_000


class AudioError(ValueError):
    """A file that cannot serve as input audio; the message says exactly why."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (n, channels) float32, as stored in the file
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode(path: str | Path) -> DecodedAudio:
    """Read a file with soundfile, turning every failure into a specific AudioError."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}")
    try:
        samples, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"not a readable audio file ({e}): {p}") from None
    if samples.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {p}")
    return DecodedAudio(samples, int(sr))


def to_mono_16k(audio: DecodedAudio) -> np.ndarray:
    """Average the channels and resample to 16 kHz (soxr, high quality)."""
    mono = audio.samples.mean(axis=1, dtype=np.float32)
    if audio.sample_rate != TARGET_SR:
        mono = soxr.resample(mono, audio.sample_rate, TARGET_SR, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono)


def load_waveform(path: str | Path) -> np.ndarray:
    """The 16 kHz mono float32 waveform every model stage consumes."""
    return to_mono_16k(decode(path))


def content_hash(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """blake2b of the file's bytes: the audio's identity in every fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def chunk_bounds(n: int, chunk: int, overlap: int, hop: int = 1) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) in samples: chunks of `chunk` samples overlapping by
    `overlap`, starting on multiples of `hop` (so their frames fall on the whole file's frame
    grid); each keeps the span where it is the most central chunk, and the kept spans tile [0, n)."""
    if n <= chunk:
        return [(0, n, 0, n)]
    step = max(hop, (chunk - overlap) // hop * hop)
    starts = list(range(0, n - overlap, step))
    out = []
    for k, s in enumerate(starts):
        keep_from = 0 if k == 0 else out[-1][3]
        keep_to = n if k == len(starts) - 1 else s + step + (overlap // 2) // hop * hop
        out.append((s, min(s + chunk, n), keep_from, keep_to))
    return out
