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
from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN, ModelUnavailable
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stage import Item
from msf.pipeline.audio_io import chunk_bounds
from msf.pipeline.stages.acoustic import AcousticParams, AcousticStage

@pytest.mark.parametrize("kind", ["wavlm", "wav2vec2", "hubert"])
def test_stored_features_equal_a_direct_forward(kind: str, tmp_path: Path) -> None:
    model = save_tiny_encoder(kind, tmp_path / kind)
    manifest = write_manifest(tmp_path / "corpus", 6)
    cfg = load_config(None, [f"acoustic.model={model}", "acoustic.batch_size=4"], corpus=str(manifest),
                      cache=str(tmp_path / "cache"), workers=1)
    ex = Extraction(cfg)
    report = ex.run(["acoustic"], progress=False)
    assert report["acoustic"].computed == 6 and report["acoustic"].failed == 0
    frames = ex.view().records("acoustic")
    for u in ex.corpus.utterances:
        rec = frames[u.id]
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


@pytest.mark.parametrize("kind, stable", [("wavlm", True), ("wavlm", False), ("wav2vec2", True), ("hubert", False)])
def test_the_encoder_stops_at_the_deepest_layer_kept_with_the_full_forwards_values(kind: str, stable: bool,
                                                                                 tmp_path: Path) -> None:
    """Layers above the deepest kept hidden state are not run, and the kept ones equal the same
    hidden states of a full forward exactly (a pre-LN encoder's final LayerNorm belongs to the last
    layer's output alone)."""
    import transformers as tf

    cls, model_cls = {"wavlm": (tf.WavLMConfig, tf.WavLMModel), "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
                      "hubert": (tf.HubertConfig, tf.HubertModel)}[kind]
    torch.manual_seed(0)
    d = tmp_path / kind
    model_cls(cls(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                  do_stable_layer_norm=stable)).save_pretrained(d)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(d)
    items = [Item(Utterance(str(s), str(write_tone(tmp_path / f"{s}.wav", seconds=s, seed=int(s * 10)))))
             for s in (0.8, 1.3)]

    def frames(layers: object) -> tuple[AcousticStage, list[np.ndarray]]:
        stage = AcousticStage(AcousticParams(model=str(d), layers=layers, dtype="float32", batch_size=2))
        stage.setup()
        return stage, [r["frames"] for r in stage.compute(items)]

    _, full = frames("all")  # T x 5 x D
    for layers in ([2], [0], [1, 3], [-2], [4], [-1, 1]):
        stage, got = frames(layers)
        deepest = max(i % 5 for i in layers)  # type: ignore[attr-defined]
        assert len(stage.encoder.model.encoder.layers) == min(deepest, 4), layers  # type: ignore[attr-defined]
        for f, ref in zip(got, full):
            want = ref[:, [i % 5 for i in layers]]  # type: ignore[attr-defined]
            np.testing.assert_array_equal(f.reshape(want.shape), want)
    with pytest.raises(Exception, match=r"acoustic.layers=\[5\] but the model has 5 hidden states"):
        frames([5])


# The documented tolerance of half precision against float32 (docs/scaling.md, "Precision"): the
# largest difference within 5 % of the largest float32 value, and each utterance's mean frame (what a
# pooled probe reads) at cosine >= 0.999.
HALF_MAX_REL, HALF_MIN_COSINE = 0.05, 0.999


def test_half_precision_is_within_the_documented_tolerance(tmp_path: Path) -> None:
    """bfloat16 on CPU (CUDA is absent here; on a GPU "auto" picks it) against float32, through the
    stage, and the precision as it resolves enters the fingerprint (float32 leaves no trace)."""
    model = save_tiny_encoder("wavlm", tmp_path / "wavlm")
    items = [Item(Utterance(str(s), str(write_tone(tmp_path / f"{s}.wav", seconds=s, seed=int(10 * s)))))
             for s in (0.7, 1.1, 1.9)]
    out = {}
    for precision in ("float32", "bfloat16"):
        stage = AcousticStage(AcousticParams(model=str(model), precision=precision, dtype="float32", layers="all"))
        stage.setup()
        out[precision] = [r["frames"] for r in stage.compute(items)]
    for f32, half in zip(out["float32"], out["bfloat16"]):
        assert f32.shape == half.shape and half.dtype == np.float32
        assert 0 < np.abs(half - f32).max() <= HALF_MAX_REL * np.abs(f32).max()
        a, b = f32.mean(0).ravel(), half.mean(0).ravel()
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= HALF_MIN_COSINE
    fp = AcousticStage.fingerprint_params
    assert "precision" not in fp(AcousticParams()) and fp(AcousticParams(device="cuda"))["precision"] == "bfloat16"
    assert fp(AcousticParams(precision="float16"))["precision"] == "float16"
