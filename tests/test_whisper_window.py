"""Whisper in windows fitted to the audio, files batched in one Whisper call, and the 30 s window of
before kept exactly by `whisper_window=30`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN
from msf.pipeline.backends.whisper_windows import fitted_window_s
from msf.pipeline.cache.fingerprint import params_digest
from msf.pipeline.config import MsfConfig
from msf.pipeline.corpus import Utterance, load_corpus
from msf.pipeline.stage import Item, stage_class
from msf.pipeline.stages.acoustic import AcousticParams, AcousticStage
from msf.pipeline.stages.align import AlignParams, AlignStage

FRAME_S = 0.02  # one Whisper encoder frame: word times within it count as the same


def test_the_fitted_window_is_twice_the_audio_on_a_5_s_grid_between_10_and_30_s() -> None:
    assert [fitted_window_s(s) for s in (0.5, 4.9, 5.1, 7.6, 11.0, 14.0, 29.0)] == [10, 10, 15, 20, 25, 30, 30]
    assert fitted_window_s(4.0, 30) == 30 and fitted_window_s(4.0, 10.0) == 10
    assert fitted_window_s(12.2, 10.0) == 13  # a fixed window never cuts the audio


def test_whisper_window_30_keeps_the_fingerprints_of_before() -> None:
    """The parameter digests msf computed before the window was a setting (taken from the commit before
    it): caches made then stay fresh under whisper_window=30, and the WavLM default never changes."""
    before = {("offline", "align"): "4ebf8771dcb408916efa333fedac62fe",
              ("offline", "acoustic"): "69ae5eef68e2b8e13e95007ae318e32f",
              ("default", "align"): "9f3165867d12179a99474afd36feb096",
              ("default", "acoustic"): "71a6ca6b4fee495f3d13fdf3309f893c"}
    for (profile, stage), digest in before.items():
        cls = stage_class(stage)
        at30 = MsfConfig(profile=profile, stages={stage: {"whisper_window": 30}}).params_for(cls)
        assert params_digest(cls, at30) == digest, (profile, stage)
        fitted = params_digest(cls, MsfConfig(profile=profile).params_for(cls))
        # the fitted default is a new setting wherever Whisper runs; the transformers encoder has no window
        assert (fitted == digest) == ((profile, stage) == ("default", "acoustic")), (profile, stage)


@pytest.fixture(scope="module")
def short_items(demo_corpus: Path) -> list[Item]:
    return [Item(u) for u in load_corpus(f"demo:{demo_corpus}").utterances[:6]]


def _stage(**params) -> AlignStage:
    stage = AlignStage(AlignParams(backend="whisper", model=BUNDLED_TINY_EN, **params))
    stage.setup()
    return stage


def _close(a: dict, b: dict) -> None:
    assert a["words"].tolist() == b["words"].tolist()
    assert np.abs(a["start"] - b["start"]).max() <= FRAME_S and np.abs(a["end"] - b["end"]).max() <= FRAME_S


def test_files_batched_in_one_call_get_the_words_and_times_of_one_at_a_time(short_items: list[Item]) -> None:
    """The GPU path (several files a Whisper call), forced on here on the CPU: ASR of files without a
    transcript and forced alignment of transcripts give what one file a call gives."""
    no_text = [Item(Utterance(f"x{i}", it.utt.audio)) for i, it in enumerate(short_items)]
    one, four = _stage(asr_batch=1), _stage(asr_batch=4)
    for items in (no_text, short_items):
        alone = [r for it in items for r in one.compute([it])]
        together = four.compute(items)
        for a, b in zip(alone, together):
            assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
            _close(a, b)
    assert together[0]["source"] == "whisper:forced" and len(one.compute(no_text[:1])[0]["words"]) >= 8
    # a batch is its own entry (a beam can turn on the last bits of a batched product: rare, not never)
    assert AlignStage.fingerprint_params(AlignParams(asr_batch=4))["asr_batch"] == 4
    assert "asr_batch" not in AlignStage.fingerprint_params(AlignParams())


def test_whisper_window_30_aligns_and_encodes_as_before(short_items: list[Item]) -> None:
    """whisper_window=30 runs what msf ran before: forced alignment as the old code computed it (features
    padded to 3,000 frames, cross-attention over the whole window), bit for bit, and the acoustic
    encoder's frames of a 30 s window; the fitted window gives frames of the same shape."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    stage = _stage(whisper_window=30)
    m = stage._aligner.model
    tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language="en")
    for item in short_items[:3]:
        rec = stage.compute([item])[0]
        features = m.feature_extractor(item.waveform)
        old = m.find_alignment(tok, [tok.encode(" " + " ".join(rec["words"]))], m.encode(pad_or_trim(features)),
                               [features.shape[-1]])[0]
        timed = [a for a in old if a["word"].strip(" ,.?!").strip()]
        assert np.array_equal(rec["start"], np.float32([a["start"] for a in timed]))
    acoustic = {w: AcousticStage(AcousticParams(backend="whisper", model=BUNDLED_TINY_EN, whisper_window=w))
                for w in (30, "fitted")}
    for a in acoustic.values():
        a.setup()
    wave = short_items[0].waveform
    old_frames = np.array(acoustic[30].encoder.whisper.encode(pad_or_trim(acoustic[30].encoder.whisper.feature_extractor(wave))[None]))
    n = int(np.ceil(len(wave) / 16000 * 50))
    at30, fitted = (a.compute([short_items[0]])[0]["frames"] for a in (acoustic[30], acoustic["fitted"]))
    assert np.array_equal(at30, old_frames[0, :n].astype(np.float16)) and fitted.shape == at30.shape
    assert not np.array_equal(fitted, at30)  # the encoder hears less padding: its own setting, its own fingerprint
