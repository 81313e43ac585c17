"""The `align` stage: provided alignments (truth.jsonl, .wdseg, TextGrid) and Whisper ASR / forced alignment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tone

from msf.pipeline.corpus import Utterance, load_corpus
from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN, ModelUnavailable
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


def _truth(corpus: Path) -> dict[str, list[dict]]:
    return {json.loads(l)["id"]: json.loads(l)["words"] for l in (corpus / "truth.jsonl").read_text().splitlines()}


def test_sphinx_times_words_and_phones_close_to_the_truth(demo_corpus: Path) -> None:
    stage = _stage(backend="sphinx")
    corpus, truth = load_corpus(f"demo:{demo_corpus}"), _truth(demo_corpus)
    errors = []
    for utt in corpus.utterances[:6]:
        rec = stage.compute([Item(utt)])[0]
        assert not isinstance(rec, Exception), rec
        assert rec["source"] == "sphinx" and rec["words"].tolist() == [w["word"] for w in truth[utt.id]]
        errors += [abs(s - w["start"]) for s, w in zip(rec["start"], truth[utt.id])]
        errors += [abs(e - w["end"]) for e, w in zip(rec["end"], truth[utt.id])]
        # every word has phones, inside the word, in order
        assert sorted(set(rec["phone_word"].tolist())) == list(range(len(rec["words"])))
        for p, s, e in zip(rec["phone_word"], rec["phone_start"], rec["phone_end"]):
            assert rec["start"][p] - 1e-3 <= s < e <= rec["end"][p] + 1e-3
    assert np.median(errors) <= 0.03 and np.percentile(errors, 90) <= 0.08


def test_sphinx_pronounces_a_word_the_dictionary_lacks(tmp_path: Path) -> None:
    import soundfile as sf
    import soxr

    from msf.pipeline.aligners.sphinx import ipa_to_arpabet
    from msf.pipeline.corpora.espeak import espeak

    assert ipa_to_arpabet("dᵻlˈaɪtfəl") == ["D", "IH", "L", "AY", "T", "F", "AH", "L"]
    text = "please tell zorblax the meeting starts at noon"  # zorblax: in no dictionary
    syn = espeak().synth(text, "en-us", 150, 50, 50, 100)
    wav = tmp_path / "z.wav"
    sf.write(wav, soxr.resample(syn.samples.astype(np.float32) / 32768, syn.sample_rate, 16000), 16000)
    stage = _stage(backend="sphinx")
    rec = stage.compute([Item(Utterance("z", str(wav), transcript=text))])[0]
    assert not isinstance(rec, Exception), rec
    assert rec["words"].tolist() == text.split()  # never silently dropped
    assert stage._aligner.added["zorblax"][:3] == ["Z", "AO", "R"]  # type: ignore[union-attr]
    z = text.split().index("zorblax")
    truth_start = syn.words[z].sample / syn.sample_rate
    assert abs(rec["start"][z] - truth_start) < 0.06


def test_sphinx_refuses_a_transcript_that_is_not_what_is_said(demo_corpus: Path) -> None:
    stage = _stage(backend="sphinx")
    corpus = load_corpus(f"demo:{demo_corpus}").utterances
    wrong = "the committee will reconvene on thursday afternoon to discuss the budget in detail"
    rec = stage.compute([Item(Utterance("x", corpus[0].audio, transcript=wrong))])[0]
    assert isinstance(rec, Exception)
    assert "does not match the audio" in str(rec)


def test_sphinx_asks_whisper_before_refusing_a_transcript(demo_corpus: Path) -> None:
    stage = _stage(backend="sphinx", model=BUNDLED_TINY_EN)
    corpus = load_corpus(f"demo:{demo_corpus}").utterances
    wrong = "the committee will reconvene on thursday afternoon to discuss the budget in detail"
    rec = stage.compute([Item(Utterance("x", corpus[0].audio, transcript=wrong))])[0]
    assert isinstance(rec, Exception)
    # Whisper either scores the words below the confirmation bar or refuses them itself (its own min_score)
    assert re.search(r"does not match the audio: .*; Whisper's forced alignment( agrees: mean word probability "
                     r"\d\.\d\d < 0\.4|, asked for a second opinion: .*does not match the audio)", str(rec)), str(rec)


def test_a_refusal_whisper_confirms_keeps_sphinx_times(demo_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both refusals forced at a fixed point: beams too narrow for any path, and a score-gap limit no
    alignment meets. Whisper confirms the correct transcript; sphinx's times stand."""
    from msf.pipeline.aligners import sphinx

    utt = load_corpus(f"demo:{demo_corpus}").utterances[1]
    truth = [w["start"] for w in _truth(demo_corpus)[utt.id]]
    monkeypatch.setattr(sphinx, "DEFAULT_BEAMS", sphinx.Beams(1e-1, 1e-1, 1e-1))
    monkeypatch.setattr(sphinx, "WIDE_BEAMS", sphinx.Beams(1e-2, 1e-2, 1e-2))
    rec = _stage(backend="sphinx", model=BUNDLED_TINY_EN).compute([Item(utt)])[0]
    assert not isinstance(rec, Exception), rec
    assert rec["source"] == "sphinx:whisper-confirmed-widest-beams"
    assert np.median(np.abs(rec["start"] - truth)) <= 0.03 and len(rec["phones"]) > len(rec["words"])

    monkeypatch.undo()
    monkeypatch.setattr(sphinx.SphinxAligner, "PLAINLY_GOOD", float("inf"))
    stage = _stage(backend="sphinx", model=BUNDLED_TINY_EN, sphinx_max_score_gap=-1e9)
    rec = stage.compute([Item(utt)])[0]
    assert not isinstance(rec, Exception), rec
    assert rec["source"] == "sphinx:whisper-confirmed" and np.median(np.abs(rec["start"] - truth)) <= 0.03
    # without a second opinion to be had, the refusal says so
    stage = _stage(backend="sphinx", model=str(demo_corpus / "no-such-model"), sphinx_max_score_gap=-1e9)
    rec = stage.compute([Item(utt)])[0]
    assert isinstance(rec, Exception) and "no second opinion" in str(rec)


def test_sphinx_refuses_other_languages_clearly() -> None:
    with pytest.raises(ModelUnavailable, match="English only"):
        _stage(backend="sphinx", language="de")


@pytest.mark.slow
def test_no_transcript_whisper_asr_then_sphinx_realigns(demo_corpus: Path) -> None:
    stage = _stage(backend="sphinx", model=BUNDLED_TINY_EN)
    utt = load_corpus(f"demo:{demo_corpus}").utterances[0]
    rec = stage.compute([Item(Utterance("x", utt.audio))])[0]
    assert not isinstance(rec, Exception), rec
    assert rec["source"] == "whisper:asr+sphinx" and len(rec["words"]) >= 8 and len(rec["phones"]) > len(rec["words"])


def test_batched_asr_transcribes_a_long_file_as_the_sequential_one_does(demo_corpus: Path, tmp_path: Path) -> None:
    """With whisper_window=30 (Whisper's own window, as before it was a setting), faster-whisper's
    batched pipeline (the default on CUDA, asked for here on CPU): a 40 s file of several utterances
    with pauses gives the words the one-segment-at-a-time decoder gives, and the batch size enters the
    fingerprint only when it batches."""
    import soundfile as sf

    from msf.pipeline.audio_io import load_waveform

    utts = load_corpus(f"demo:{demo_corpus}").utterances
    pause = np.zeros(8000, np.float32)
    parts, total = [], 0
    for u in utts:
        if total > 40 * 16000:
            break
        w = load_waveform(u.audio)
        parts += [w, pause]
        total += len(w) + len(pause)
    sf.write(tmp_path / "long.wav", np.concatenate(parts), 16000)
    item = Item(Utterance("long", str(tmp_path / "long.wav")))
    words = {}
    for batch in (1, 4):
        rec = _stage(backend="whisper", model=BUNDLED_TINY_EN, asr_batch=batch, whisper_window=30).compute([item])[0]
        assert not isinstance(rec, Exception), rec
        words[batch] = rec["words"].tolist()
        assert np.all(np.diff(rec["start"]) >= 0) and rec["end"][-1] > 35.0
    common = len(set(words[1]) & set(words[4])) / len(set(words[1]))
    assert len(words[4]) > 60 and common > 0.9, (words[1], words[4])
    fp = AlignStage.fingerprint_params
    assert "asr_batch" not in fp(AlignParams(whisper_window=30))
    assert fp(AlignParams(device="cuda", whisper_window=30))["asr_batch"] == 16
    assert fp(AlignParams(asr_batch=4, whisper_window=30))["asr_batch"] == 4


def test_whisper_aligns_a_file_longer_than_its_window_by_segments(demo_corpus: Path) -> None:
    """40 s of demo utterances one after another: Whisper's forced alignment covers 30 s, so the file is
    cut into segments at words its own ASR heard, and every word lands inside its own utterance."""
    import csv

    import soundfile as sf

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))
    parts, spans, text, t = [], [], [], 0.0
    for r in rows:
        x, sr = sf.read(demo_corpus / r["audio"], dtype="float32")
        parts += [x, np.zeros(int(0.4 * sr), np.float32)]
        n = len(r["transcript"].split())
        spans += [(t, t + len(x) / sr)] * n
        text.append(r["transcript"])
        t += len(x) / sr + 0.4
        if t > 40:
            break
    audio = np.concatenate(parts)
    stage = _stage(backend="whisper", model=BUNDLED_TINY_EN)
    stage.setup()
    from msf.pipeline.corpora.alignment_files import transcript_words

    words = transcript_words(" ".join(text))
    assert len(words) == len(spans) and len(audio) / 16000 > 40
    timed = stage._aligner.align(audio, words)
    assert timed.source == "whisper:forced-segments" and len(timed.words) == len(spans)
    assert np.all(np.diff(timed.start) >= -1e-6)
    inside = [s - 0.3 <= start and end <= e + 0.3 for (s, e), start, end in zip(spans, timed.start, timed.end)]
    assert np.mean(inside) >= 0.9, list(zip(timed.words, timed.start, spans))
    print(f"segments aligned: {np.mean(inside):.3f} of {len(words)} words inside their utterance")
