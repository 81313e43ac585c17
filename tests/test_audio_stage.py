"""The root stage `audio`: every bad file fails with its own specific message; good ones of any format pass;
silence is judged by contrast with the noise floor, so quiet speech is kept and steady noise refused."""

from __future__ import annotations

from pathlib import Path

import json

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
        "silence.wav": "silent: digital silence",
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


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1 / 16000)
    x = np.fft.irfft((rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) / np.sqrt(np.maximum(f, 1)), n)
    return x / x.std()


def _brown(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.cumsum(rng.standard_normal(n))
    x -= np.convolve(x, np.ones(1601) / 1601, "same")  # wandering rumble, no drift
    return x / x.std()


def test_quiet_speech_is_kept_and_sound_without_speech_is_refused(demo_corpus: Path, tmp_path: Path) -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    speech, _ = sf.read(demo_corpus / "wavs" / "demo_00000.wav", dtype="float64")
    at = lambda peak_dbfs: speech / np.abs(speech).max() * 10 ** (peak_dbfs / 20)  # noqa: E731
    word = json.loads((demo_corpus / "truth.jsonl").read_text().splitlines()[0])["words"][3]
    room = 10 ** (-60 / 20) * _pink(rng, 20 * sr)  # 20 s of room tone, -60 dBFS RMS
    spoken = speech[int(word["start"] * sr) : int(word["end"] * sr)]
    room[8 * sr : 8 * sr + len(spoken)] += spoken
    t = np.arange(2 * sr) / sr
    cases = {  # name -> (signal, None when kept, else the start of the refusal)
        "peak_-40dBFS": (at(-40), None),
        # the real soft-spoken takes: peak -50 dBFS over a -85 dBFS recording noise floor, RMS about -69 dBFS
        "peak_-50dBFS_noisy": (at(-50) + 10 ** (-85 / 20) * rng.standard_normal(len(speech)), None),
        "one_word_in_20s_room_tone": (room, None),
        "speech_in_white_noise_0dB_SNR": (speech + speech.std() * rng.standard_normal(len(speech)), None),
        "digital_silence": (np.zeros(sr), "silent: digital silence"),
        "dc_offset": (np.full(sr, 0.25), "silent: a constant DC offset (+0.250)"),
        "white_noise": (0.05 * rng.standard_normal(2 * sr), "no speech: the loudest frames"),
        "pink_noise": (0.05 * _pink(rng, 2 * sr), "no speech: the loudest frames"),
        "brown_rumble": (0.05 * _brown(rng, 2 * sr), "no speech: the loudest frames"),
        "hum_50Hz": (0.2 * np.sin(2 * np.pi * 50 * t) + 0.2 * np.sin(2 * np.pi * 150 * t), "no speech: the loudest"),
    }
    for name, (x, refusal) in cases.items():
        sf.write(tmp_path / f"{name}.wav", x.astype(np.float32), sr, subtype="FLOAT")
        out = _run(tmp_path / f"{name}.wav")
        if refusal is None:
            assert isinstance(out, dict), (name, out)
            assert out["loud_dbfs"] - out["noise_floor_dbfs"] >= 7.0, name
        else:
            assert isinstance(out, Exception) and str(out).startswith(refusal), (name, out)
    assert _run(tmp_path / "peak_-50dBFS_noisy.wav")["rms_dbfs"] < -60  # what whole-file RMS refused
