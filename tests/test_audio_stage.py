"""The root stage `audio`: every bad file fails with its own specific message; good ones of any format pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import write_tone

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.corpus import Utterance
from msf.pipeline.stage import Item
from msf.pipeline.stages.audio import AudioParams, AudioStage


def _run(path: Path, **params: float) -> dict | Exception:
    stage = AudioStage(AudioParams(**params))
    return stage.compute([Item(Utterance(id="x", audio=str(path)), audio_hash="h")])[0]


def test_bad_files_fail_with_specific_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("RIFF? no, just a text file named .wav")
    sf.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, np.inf] * 5000, np.float32), 16000, subtype="FLOAT")
    write_tone(tmp_path / "short.wav", seconds=0.05)
    write_tone(tmp_path / "long.wav", seconds=3.0)
    corrupt = bytearray(write_tone(tmp_path / "corrupt.wav").read_bytes())
    (tmp_path / "corrupt.wav").write_bytes(bytes(corrupt[:20]) + b"\x00" * 10)
    expected = {
        "missing.wav": "audio file not found",
        "empty.wav": "audio file is empty (0 bytes)",
        "text.wav": "not a readable audio file",
        "corrupt.wav": "not a readable audio file",
        "silence.wav": "silent: RMS",
        "nan.wav": "samples are NaN or infinite",
        "short.wav": "too short: 0.050 s",
    }
    for name, message in expected.items():
        out = _run(tmp_path / name)
        assert isinstance(out, Exception) and message in str(out), (name, out)
    out = _run(tmp_path / "long.wav", max_seconds=2.0)
    assert isinstance(out, Exception) and "too long: 3.0 s > max_seconds=2" in str(out)


def test_other_rates_and_channels_are_accepted_and_converted(tmp_path: Path) -> None:
    write_tone(tmp_path / "8k.wav", seconds=1.0, sr=8000)
    write_tone(tmp_path / "48k.wav", seconds=2.0, sr=48000, channels=2)
    r8 = _run(tmp_path / "8k.wav")
    r48 = _run(tmp_path / "48k.wav")
    assert r8["sample_rate"] == 8000 and r8["channels"] == 1 and abs(r8["duration"] - 1.0) < 1e-6
    assert r48["sample_rate"] == 48000 and r48["channels"] == 2 and r48["content_hash"] == "h"
    assert -20 < r48["rms_dbfs"] < -5
    w = load_waveform(tmp_path / "48k.wav")
    assert w.dtype == np.float32 and w.ndim == 1 and abs(len(w) - 32000) <= 1
    # the tone survives resampling: its spectrum still peaks at 220 Hz
    spectrum = np.abs(np.fft.rfft(w[:16000]))
    assert abs(np.argmax(spectrum) - 220) <= 1
