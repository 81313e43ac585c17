"""CTC forced alignment: the Viterbi against brute force and a known path, and the `ctc` align backend on a
tiny random wav2vec2-CTC model saved the way a hub model is."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tone

from msf.pipeline.backends.ctc_viterbi import forced_align, token_spans
from msf.pipeline.corpus import Utterance
from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN, ModelUnavailable
from msf.pipeline.stage import Item
from msf.pipeline.stages.align import AlignParams, AlignStage


def _collapse(labels: tuple[int, ...], blank: int = 0) -> list[int]:
    out, prev = [], None
    for x in labels:
        if x != prev and x != blank:
            out.append(x)
        prev = x
    return out


def test_viterbi_finds_the_known_best_path() -> None:
    # blank=0, a=1, b=2; frames clearly say: a a _ a b b  -> targets [a, a, b]
    favoured = [1, 1, 0, 1, 2, 2]
    p = np.full((6, 3), 0.05)
    p[np.arange(6), favoured] = 0.9
    path = forced_align(np.log(p), [1, 1, 2])
    assert path == [1, 1, 2, 3, 5, 5]  # trellis states: a, a, blank, a, b, b
    spans = token_spans(np.log(p), [1, 1, 2])
    assert [(s.token, s.start, s.end) for s in spans] == [(0, 0, 2), (1, 3, 4), (2, 4, 6)]
    assert all(abs(s.score - 0.9) < 1e-9 for s in spans)


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_equals_brute_force_on_random_emissions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    T, V, targets = 7, 3, [1, 2, 2]
    lp = np.log(rng.dirichlet(np.ones(V), size=T))
    best = max((lab for lab in itertools.product(range(V), repeat=T) if _collapse(lab) == targets),
               key=lambda lab: lp[np.arange(T), lab].sum())
    states = [0] + [x for t in targets for x in (t, 0)]
    path = forced_align(lp, targets)
    assert np.isclose(lp[np.arange(T), [states[s] for s in path]].sum(), lp[np.arange(T), best].sum())


def test_viterbi_rejects_targets_that_cannot_fit() -> None:
    with pytest.raises(ValueError, match="need at least 3 frames"):
        forced_align(np.log(np.full((2, 3), 1 / 3)), [1, 1])


@pytest.fixture(scope="module")
def tiny_ctc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    d = tmp_path_factory.mktemp("tiny-w2v2-ctc")
    vocab = {"<pad>": 0, "|": 1, **{c: i + 2 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}
    (d / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2CTCTokenizer(str(d / "vocab.json"), pad_token="<pad>", word_delimiter_token="|").save_pretrained(d)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(d)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(32, 32, 32, 32, 32, 32, 32), pad_token_id=0,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    Wav2Vec2ForCTC(cfg).save_pretrained(d)
    return d


def test_ctc_backend_times_every_reference_word(tiny_ctc_model: Path, tmp_path: Path) -> None:
    wav = write_tone(tmp_path / "a.wav", seconds=2.0)
    # No transcript: Whisper transcribes first (the bundled tiny.en here; a tone has no words to hear)
    stage = AlignStage(AlignParams(backend="ctc", ctc_model=str(tiny_ctc_model), model=BUNDLED_TINY_EN))
    stage.setup()
    items = [Item(Utterance(id="a", audio=str(wav), transcript="Hello, big world 42!")),
             Item(Utterance(id="b", audio=str(wav), transcript=""))]
    rec, missing = stage.compute(items)
    assert list(rec["words"]) == ["hello", "big", "world", "42"]
    start, end = rec["start"], rec["end"]
    assert np.all(np.diff(start) >= 0) and np.all(end >= start) and end[-1] <= 2.0 + 1e-6
    assert rec["score"][3] == 0.0  # "42" has no character in the vocabulary: it takes the gap, score 0
    assert np.all((rec["score"][:3] > 0) & (rec["score"][:3] <= 1)) and rec["source"] == "ctc"
    assert isinstance(missing, Exception) and "heard no words" in str(missing)


def test_missing_ctc_model_names_the_way_out(tmp_path: Path) -> None:
    stage = AlignStage(AlignParams(backend="ctc", ctc_model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelUnavailable, match=r"--set align.ctc_model=PATH\), .*--profile offline: the sphinx aligner"):
        stage.setup()


def test_ctc_emissions_of_a_long_file_come_window_by_window(tiny_ctc_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A file longer than a window is encoded in overlapping windows joined on the frame grid: the
    frame count is the single pass's (within a frame per window), and the file aligns in one piece."""
    from msf.pipeline.aligners import ctc
    from msf.pipeline.aligners.ctc import CtcAligner

    aligner = CtcAligner(str(tiny_ctc_model), "cpu")
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 7).astype(np.float32)
    whole = aligner.emissions(audio)
    monkeypatch.setattr(ctc, "CHUNK_S", 2.0)
    monkeypatch.setattr(ctc, "OVERLAP_S", 0.5)
    windowed = aligner.emissions(audio)
    assert abs(len(windowed) - len(whole)) <= 4 and windowed.shape[1] == whole.shape[1]
    assert np.allclose(np.exp(windowed).sum(1), 1, atol=1e-4)
    timed = aligner.align(audio, ["hello", "big", "world", "again"])
    assert np.all(np.diff(timed.start) >= 0) and timed.end[-1] <= 7.0 + 1e-6 and timed.start[-1] > 2.0
