"""The `acoustic` stage: tiny random WavLM / wav2vec2 / HuBERT models saved like hub checkpoints, stored
features equal to a direct forward of each file, Whisper-encoder frames, long-audio chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import direct_hidden_states, save_tiny_encoder, write_manifest, write_tone

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.config import load_config
from msf.pipeline.corpus import Utterance
from msf.pipeline.model_loading import BUNDLED_TINY_EN, ModelUnavailable
from msf.pipeline.extraction import Extraction
from msf.pipeline.stage import Item
from msf.pipeline.stages.acoustic import AcousticParams, AcousticStage, chunk_bounds

@pytest.mark.parametrize("kind", ["wavlm", "wav2vec2", "hubert"])
def test_stored_features_equal_a_direct_forward(kind: str, tmp_path: Path) -> None:
    model = save_tiny_encoder(kind, tmp_path / kind)
    manifest = write_manifest(tmp_path / "corpus", 6)
    cfg = load_config(None, [f"acoustic.model={model}", "acoustic.batch_size=4"], corpus=str(manifest),
                      cache=str(tmp_path / "cache"), workers=1)
    ex = Extraction(cfg)
    report = ex.run(["acoustic"], progress=False)
    assert report["acoustic"].computed == 6 and report["acoustic"].failed == 0
    for u in ex.corpus.utterances:
        rec = ex.read("acoustic", u.id)
        wave = load_waveform(u.audio)
        ref = direct_hidden_states(model, wave)
        assert rec["frames"].dtype == np.float16 and rec["frames"].shape == ref.shape
        assert rec["frames"].shape[0] == int((len(wave) - 400) // 320) + 1  # 20 ms frames follow duration
        np.testing.assert_allclose(rec["frames"].astype(np.float32), ref, atol=2e-2, rtol=1e-2)
    ex.close()


def test_all_layers_and_a_clear_error_for_a_missing_model(tmp_path: Path) -> None:
    model = save_tiny_encoder("wavlm", tmp_path / "wavlm")
    wav = write_tone(tmp_path / "a.wav", seconds=1.0)
    stage = AcousticStage(AcousticParams(model=str(model), layers="all", dtype="float32"))
    stage.setup()
    rec = stage.compute([Item(Utterance("a", str(wav)))])[0]
    assert rec["frames"].shape == (49, 3, 32)  # T x (embeddings + 2 layers) x D
    np.testing.assert_allclose(rec["frames"][:, 0], direct_hidden_states(model, load_waveform(wav), 0), atol=1e-4)
    with pytest.raises(ModelUnavailable) as e:
        AcousticStage(AcousticParams(model="microsoft/wavlm-large")).setup()
    msg = str(e.value)
    assert "'microsoft/wavlm-large'" in msg and "--set acoustic.model=PATH" in msg and "--profile offline" in msg


def test_long_audio_is_chunked_with_the_same_frame_count(tmp_path: Path) -> None:
    model = save_tiny_encoder("wavlm", tmp_path / "wavlm")
    rng = np.random.default_rng(0)
    wav = tmp_path / "long.wav"
    sf.write(wav, (0.1 * rng.standard_normal(int(7.3 * 16000))).astype(np.float32), 16000)
    whole = AcousticStage(AcousticParams(model=str(model)))
    chunked = AcousticStage(AcousticParams(model=str(model), chunk_s=2.0, overlap_s=0.5))
    whole.setup()
    chunked.setup()
    a = whole.compute([Item(Utterance("x", str(wav)))])[0]["frames"]
    b = chunked.compute([Item(Utterance("x", str(wav)))])[0]["frames"]
    assert len(a) == len(b) == 364
    spans = chunk_bounds(1000, 300, 100, hop=20)
    assert spans[0][2] == 0 and spans[-1][3] == 1000 and all(s % 20 == 0 for s, *_ in spans)
    assert all(x[3] == y[2] for x, y in zip(spans, spans[1:]))  # kept spans tile the file exactly


def test_whisper_encoder_gives_50_frames_per_second_of_384(tmp_path: Path) -> None:
    stage = AcousticStage(AcousticParams(backend="whisper", model=BUNDLED_TINY_EN))
    stage.setup()
    items = [Item(Utterance(str(s), str(write_tone(tmp_path / f"{s}.wav", seconds=s)))) for s in (1.0, 2.5)]
    one, two = stage.compute(items)
    assert one["frames"].shape == (50, 384) and two["frames"].shape == (125, 384) and one["frame_rate"] == 50.0
    assert np.all(np.isfinite(one["frames"].astype(np.float32)))
