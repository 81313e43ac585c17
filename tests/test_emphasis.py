"""The `emphasis` stage: it finds the demo corpus's emphasised words, survives awkward words, and its
speaker statistics make a speaker's entries recompute together (and only those)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from msf.pipeline.config import load_config
from msf.pipeline.corpus import Utterance, load_corpus
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stage import Item
from msf.pipeline.stages.emphasis import EmphasisParams, EmphasisStage

SR = 16000


def _extract(corpus: str, cache: Path, **sets: str) -> Extraction:
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()], corpus=corpus, cache=str(cache), workers=1)
    ex = Extraction(cfg)
    ex.last = ex.run(["emphasis"], progress=False)  # type: ignore[attr-defined]
    return ex


def test_finds_the_emphasised_words_of_the_demo_corpus(demo_corpus: Path, tmp_path: Path) -> None:
    ex = _extract(f"demo:{demo_corpus}", tmp_path / "cache", **{"align.backend": "provided"})
    truth = {t["id"]: t["words"] for t in map(json.loads, open(demo_corpus / "truth.jsonl"))}
    tp = fp = fn = 0
    emphasis = ex.view().records("emphasis")
    for utt, words in truth.items():
        rec = emphasis[utt]
        t = np.array([w["emphasized"] for w in words])
        flags = rec["emphasized"]
        tp += int((flags & t).sum())
        fp += int((flags & ~t).sum())
        fn += int((~flags & t).sum())
        assert rec["score"].shape == t.shape and np.all((rec["score"] >= 0) & (rec["score"] <= 1))
        assert np.all(np.isfinite(rec["z_f0_mean_st"])) and rec["speaker_f0_hz"] > 50
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision > 0.75 and recall > 0.75, (precision, recall)


def _item(path: Path, wave: np.ndarray, words: list[str], start: list[float], end: list[float]) -> Item:
    sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
    return Item(Utterance(id=path.stem, audio=str(path), speaker="s"),
                {"align": {"words": np.array(words), "start": np.array(start), "end": np.array(end)}})


def test_unvoiced_short_and_single_words_and_no_pitch_at_all(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    voiced = 0.3 * np.sin(2 * np.pi * 150 * t)
    voiced[int(0.5 * SR) : int(0.8 * SR)] = 0.05 * rng.standard_normal(int(0.3 * SR))  # a hissed word
    noise = 0.1 * rng.standard_normal(SR).astype(np.float64)
    items = [
        _item(tmp_path / "mixed.wav", voiced, ["one", "shh", "x", "three"], [0.1, 0.5, 0.9, 0.95], [0.45, 0.8, 0.91, 1.4]),
        _item(tmp_path / "single.wav", voiced[:SR], ["alone"], [0.1], [0.9]),
        _item(tmp_path / "noise.wav", noise, ["no", "pitch"], [0.0, 0.5], [0.5, 1.0]),
    ]
    mixed, single, noisy = EmphasisStage(EmphasisParams()).compute(items)
    assert mixed["voiced"].tolist() == [True, False, True, True]
    assert mixed["score"][2] == 0.0  # a 10 ms word carries no usable prosody
    assert single["score"].tolist() == [0.0] and single["z_f0_mean_st"].tolist() == [0.0]
    assert noisy["voiced"].tolist() == [False, False] and noisy["speaker_f0_hz"] > 0
    for rec in (mixed, single, noisy):
        for k, v in rec.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                assert np.all(np.isfinite(v)), k


def _tone_words(words: list[tuple[float, float, float]], gap_s: float = 0.1) -> tuple[np.ndarray, list, list]:
    """Words as 0.3 s tones (Hz, first-half and second-half amplitude) between quiet gaps."""
    parts, start, end, t0 = [], [], [], gap_s
    rng = np.random.default_rng(0)
    parts.append(1e-4 * rng.standard_normal(int(gap_s * SR)))
    for hz, a1, a2 in words:
        t = np.arange(int(0.3 * SR)) / SR
        amp = np.where(t < 0.15, a1, a2)
        parts += [amp * np.sin(2 * np.pi * hz * t), 1e-4 * rng.standard_normal(int(gap_s * SR))]
        start.append(t0)
        end.append(t0 + 0.3)
        t0 += 0.3 + gap_s
    return np.concatenate(parts), start, end


def test_with_phones_loudness_is_the_words_peak_and_an_absorbed_pause_is_not_the_word(tmp_path: Path) -> None:
    # Word 1 is higher (190 against 150 Hz) and has a loud vowel (0.3) after a quiet onset (0.02): its
    # peak is 9.5 dB over the others, its mean is not. Each word: a consonant, then a vowel (2nd half).
    wave, start, end = _tone_words([(150, 0.1, 0.1), (190, 0.02, 0.3), (150, 0.1, 0.1), (150, 0.1, 0.1)])
    words = ["ba", "da", "ga", "ka"]
    item = _item(tmp_path / "peak.wav", wave, words, start, end)
    phones = {"phones": np.array(["B", "AH"] * 4), "phone_word": np.repeat(np.arange(4), 2),
              "phone_start": np.ravel([[s, s + 0.15] for s in start]), "phone_end": np.ravel([[s + 0.15, s + 0.3] for s in start])}
    with_phones = Item(item.utt, {"align": item.inputs["align"] | phones})
    stage = EmphasisStage(EmphasisParams())
    by_peak, = stage.compute([with_phones])
    by_mean, = stage.compute([item])
    assert by_peak["emphasized"].tolist() == [False, True, False, False], by_peak["score"]
    assert by_mean["emphasized"].tolist() == [False, False, False, False], by_mean["score"]
    # The same words with the first one's span stretched back over 0.1 s of silence (as an aligner that
    # lets a word absorb the pause before it): its loudness and duration are those of the word alone.
    stretched = _item(tmp_path / "stretched.wav", wave, words, [start[0] - 0.1, *start[1:]], end)
    absorbed, = stage.compute([stretched])
    assert abs(absorbed["intensity_mean_db"][0] - by_mean["intensity_mean_db"][0]) < 0.5
    assert abs(absorbed["duration_norm"][0] - by_mean["duration_norm"][0]) < 0.05  # 0.1 s absorbed
    as_aligned, = EmphasisStage(EmphasisParams(pause_db=0)).compute([stretched])
    assert as_aligned["intensity_mean_db"][0] < by_mean["intensity_mean_db"][0] - 2


def test_a_changed_file_recomputes_its_speakers_entries_only(demo_corpus: Path, tmp_path: Path) -> None:
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    ex = _extract(f"demo:{corpus}", tmp_path / "cache", **{"align.backend": "provided"})
    ex.close()
    utts = load_corpus(f"demo:{corpus}").utterances
    target = utts[0]
    same_speaker = sum(u.speaker == target.speaker for u in utts)
    x, sr = sf.read(target.audio, dtype="float32")
    sf.write(target.audio, x * 0.5, sr, subtype="PCM_16")
    ex = _extract(f"demo:{corpus}", tmp_path / "cache", **{"align.backend": "provided"})
    r = ex.last  # type: ignore[attr-defined]
    assert (r["audio"].computed, r["align"].computed) == (1, 1)
    assert r["emphasis"].computed == same_speaker and r["emphasis"].reused == len(utts) - same_speaker
    assert 1 < same_speaker < len(utts)


def test_inspect_draws_one_utterance(demo_corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    _extract(f"demo:{demo_corpus}", tmp_path / "cache", **{"align.backend": "provided"}).close()
    out = tmp_path / "fig.png"
    res = CliRunner().invoke(app, ["inspect", "demo_00001", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    res = CliRunner().invoke(app, ["inspect", "nope", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert res.exit_code == 2 and "no utterance 'nope'" in res.output
    for bad, says in [(tmp_path, "is a folder; name the file to write"), (tmp_path / "fig.txt", "end the name with one")]:
        res = CliRunner().invoke(app, ["inspect", "demo_00001", "--cache", str(tmp_path / "cache"), "--out", str(bad)])
        assert res.exit_code == 2 and says in res.output, res.output
    assert not (tmp_path / ".png").exists()
