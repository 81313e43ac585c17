"""The synthetic demo corpus: determinism, its files, and audible emphasis measured with parselmouth."""

from __future__ import annotations

import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import parselmouth
import soundfile as sf

from msf.pipeline.corpora.demo import KEYWORDS, LABEL_NOISE, build_demo_corpus, draw_specs
from msf.pipeline.corpus import load_corpus


def _same_tree(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def test_same_seed_same_bytes_different_seed_different_corpus(tmp_path: Path) -> None:
    a = build_demo_corpus(tmp_path / "a", n=20, seed=3, workers=2, progress=False)
    b = build_demo_corpus(tmp_path / "b", n=20, seed=3, workers=1, progress=False)  # parallelism is irrelevant
    c = build_demo_corpus(tmp_path / "c", n=20, seed=4, workers=2, progress=False)
    assert _same_tree(a, b)
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()
    assert (a / "wavs" / "demo_00000.wav").read_bytes() != (c / "wavs" / "demo_00000.wav").read_bytes()
    build_demo_corpus(c, n=17, seed=3, workers=2, progress=False)  # rebuilt in place, smaller
    assert sorted(p.name for p in (c / "wavs").iterdir()) == [f"demo_{i:05d}.wav" for i in range(17)]
    assert (c / "wavs" / "demo_00016.wav").read_bytes() == (a / "wavs" / "demo_00016.wav").read_bytes()


def test_files_follow_the_contract(demo_corpus: Path) -> None:
    with open(demo_corpus / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance"]
    assert len(rows) == 80 and not Path(rows[0]["audio"]).is_absolute()
    by_split: dict[str, set[str]] = {}
    for r in rows:
        by_split.setdefault(r["split"], set()).add(r["speaker"])
        assert all(1.0 <= float(r[k]) <= 7.0 for k in ("valence", "arousal", "dominance"))
    assert set(by_split) == {"train", "dev", "test"}
    assert not (by_split["train"] & by_split["dev"]) and not (by_split["train"] & by_split["test"])
    truth = [json.loads(line) for line in open(demo_corpus / "truth.jsonl")]
    assert [t["id"] for t in truth] == [r["id"] for r in rows]
    for t, r in zip(truth, rows):
        words = [w["word"] for w in t["words"]]
        assert words == [w.strip(".,?!").lower() for w in r["transcript"].split()]
        info = sf.info(demo_corpus / r["audio"])
        assert info.samplerate == 16000 and info.channels == 1
        starts = [w["start"] for w in t["words"]]
        assert starts == sorted(starts) and all(w["end"] > w["start"] for w in t["words"])
        assert t["words"][-1]["end"] <= info.duration + 1e-3
        assert sum(w["emphasized"] for w in t["words"]) <= 1
    assert 0.5 < np.mean([any(w["emphasized"] for w in t["words"]) for t in truth]) < 0.95
    corpus = load_corpus(f"demo:{demo_corpus}")
    assert len(corpus.utterances) == 80 and not corpus.problems and corpus.utterances[0].extra["truth"]


def _word_prosody(wav: Path, words: list[dict]) -> list[tuple[str, bool, float, float, float]]:
    """Per word: duration per letter, mean F0 (semitones re 100 Hz), mean intensity (dB), each
    relative to the utterance's median word, so speaker and per-utterance prosody cancel out."""
    snd = parselmouth.Sound(str(wav))
    pitch = snd.to_pitch(time_step=0.01, pitch_floor=60, pitch_ceiling=500)
    intensity = snd.to_intensity(minimum_pitch=75, time_step=0.01)
    f0, ft = pitch.selected_array["frequency"], pitch.xs()
    db, dt = intensity.values[0], intensity.xs()
    rows = []
    for w in words:
        voiced = (ft >= w["start"]) & (ft < w["end"]) & (f0 > 0)
        span = (dt >= w["start"]) & (dt < w["end"])
        rows.append([(w["end"] - w["start"]) / len(w["word"]),
                     12 * np.log2(f0[voiced] / 100).mean() if voiced.any() else np.nan,
                     db[span].mean() if span.any() else np.nan])
    arr = np.asarray(rows, dtype=float)
    med = np.nanmedian(arr, axis=0)
    return [(w["word"], w["emphasized"], r[0] / med[0], r[1] - med[1], r[2] - med[2]) for w, r in zip(words, arr)]


def test_emphasised_words_are_longer_louder_and_higher(demo_corpus: Path) -> None:
    feats: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    for line in open(demo_corpus / "truth.jsonl"):
        t = json.loads(line)
        for word, emph, dur, st, db in _word_prosody(demo_corpus / "wavs" / f"{t['id']}.wav", t["words"]):
            if word in KEYWORDS:
                feats.setdefault((word, emph), []).append((dur, st, db))
    # the same words, emphasised vs not: compare per word, then across words
    diffs = []
    for word in KEYWORDS:
        if (word, True) in feats and (word, False) in feats:
            e, u = np.nanmean(feats[(word, True)], 0), np.nanmean(feats[(word, False)], 0)
            diffs.append((e[0] / u[0], e[1] - u[1], e[2] - u[2]))
    assert len(diffs) >= 10
    dur_ratio, semitones, decibels = np.median(np.asarray(diffs), axis=0)
    assert dur_ratio > 1.2, dur_ratio  # longer
    assert decibels > 3.0, decibels  # louder
    assert semitones > 1.5, semitones  # higher


def test_the_labels_are_the_rule_plus_noise() -> None:
    """`clean` is what a perfect model predicts (bench/label_ceiling.py's ceiling): the manifest's labels
    differ from it by the label noise alone, and valence follows the documented rule."""
    specs = draw_specs(300, 0)
    clean = np.array([s.clean for s in specs])
    noisy = np.array([(s.valence, s.arousal, s.dominance) for s in specs])
    inside = (noisy > 1) & (noisy < 7)  # clipping to the scale bends the noise at the ends
    assert abs((noisy - clean)[inside].std() - LABEL_NOISE) < 0.03 and abs((noisy - clean)[inside].mean()) < 0.03
    for s in specs[:40]:
        s1, s2 = KEYWORDS[s.words[1]], KEYWORDS[s.words[3]]
        m = (s1 + s2) / 2 if s.emphasis < 0 else (s1 + s2) / 2 + 0.7 * ((s1, s2)[s.emphasis] - (s1 + s2) / 2)
        assert abs(s.clean[0] - (4 + 2.5 * m)) < 1e-3
