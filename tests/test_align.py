"""The `align` stage: provided alignments (truth.jsonl, .wdseg, TextGrid) and Whisper ASR / forced alignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tone

from msf.pipeline.corpus import Utterance, load_corpus
from msf.pipeline.model_loading import BUNDLED_TINY_EN, ModelUnavailable
from msf.pipeline.stage import Item
from msf.pipeline.stages.align import AlignParams, AlignStage


def _stage(**params: str) -> AlignStage:
    stage = AlignStage(AlignParams(**params))
    stage.setup()
    return stage


def test_provided_truth_wdseg_and_textgrid(tmp_path: Path, demo_corpus: Path) -> None:
    stage = _stage(backend="provided")
    utt = load_corpus(f"demo:{demo_corpus}").utterances[3]
    rec = stage.compute([Item(utt)])[0]
    truth = json.loads((demo_corpus / "truth.jsonl").read_text().splitlines()[3])["words"]
    assert rec["words"].tolist() == [w["word"] for w in truth] and rec["source"] == "provided:truth"
    assert np.allclose(rec["start"], [w["start"] for w in truth])

    wav = write_tone(tmp_path / "a.wav")
    wdseg = tmp_path / "a.wdseg"
    wdseg.write_text(" SFrm  EFrm    SegAScr Word\n    0     12    -1000 <s>\n   13     40    -2000 EXCUSE\n"
                     "   41     60    -1500 ME(2)\n   61     70     -100 <sil>\n   71     99     -900 </s>\n")
    rec = stage.compute([Item(Utterance("a", str(wav), extra={"wdseg": str(wdseg)}))])[0]
    assert rec["words"].tolist() == ["excuse", "me"]
    assert np.allclose(rec["start"], [0.13, 0.41]) and np.allclose(rec["end"], [0.41, 0.61])

    tg = tmp_path / "a.TextGrid"
    tg.write_text('File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 1\ntiers? <exists>\n'
                  'size = 1\nitem []:\n    item [1]:\n        class = "IntervalTier"\n        name = "words"\n'
                  '        xmin = 0\n        xmax = 1\n        intervals: size = 3\n'
                  '        intervals [1]:\n            xmin = 0\n            xmax = 0.2\n            text = ""\n'
                  '        intervals [2]:\n            xmin = 0.2\n            xmax = 0.5\n            text = "Hello,"\n'
                  '        intervals [3]:\n            xmin = 0.5\n            xmax = 1\n            text = "world"\n')
    rec = stage.compute([Item(Utterance("a", str(wav), extra={"alignment": str(tg)}))])[0]
    assert rec["words"].tolist() == ["hello", "world"] and np.allclose(rec["start"], [0.2, 0.5])

    missing = stage.compute([Item(Utterance("b", str(wav)))])[0]
    assert isinstance(missing, Exception) and "gives no alignment" in str(missing)


@pytest.mark.slow
def test_whisper_forced_alignment_keeps_the_reference_words(demo_corpus: Path) -> None:
    stage = _stage(backend="whisper", model=BUNDLED_TINY_EN)
    corpus = load_corpus(f"demo:{demo_corpus}")
    truth = {json.loads(l)["id"]: json.loads(l)["words"] for l in (demo_corpus / "truth.jsonl").read_text().splitlines()}
    errors = []
    for utt in corpus.utterances[:4]:
        rec = stage.compute([Item(utt)])[0]
        assert rec["source"] == "whisper:forced"
        assert rec["words"].tolist() == [w["word"] for w in truth[utt.id]]
        assert np.all(np.diff(rec["start"]) >= 0) and np.all(rec["end"] >= rec["start"])
        errors += [abs(s - w["start"]) for s, w in zip(rec["start"], truth[utt.id])]
    assert np.median(errors) < 0.3  # tiny.en cross-attention timing; bench/emphasis.py will measure properly
    # without a transcript: ASR with word timestamps
    asr = stage.compute([Item(Utterance("x", corpus.utterances[0].audio))])[0]
    assert asr["source"] == "whisper:asr" and len(asr["words"]) >= 8


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="--profile offline"):
        _stage(backend="whisper", model=str(tmp_path / "no-such-model"))
