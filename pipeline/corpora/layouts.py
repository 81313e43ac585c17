"""The demo corpus laid out exactly as MSP-Podcast and IEMOCAP ship, to run the paper's protocol (Test1
and Test2, five sessions, unknown speakers, long turns, IEMOCAP's non-speech markers) without them:
`msf corpus layout DEMO --out OUT --as msp-podcast|iemocap`, the tests and bench/paper_protocol.py.

MSP-Podcast: `Audios/`, `Transcripts/` (one `.txt` per segment, one of them missing),
`Labels/labels_consensus.csv` (`FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set`; the
demo's train/dev split as Train/Development, its test split alternately Test1/Test2, every third row's
speaker `Unknown`), and one segment of LONG_MSP_S seconds (demo utterances joined).

IEMOCAP: `Session1`-`Session5`, each one dialog whose EmoEvaluation file has IEMOCAP's header, a
`[start - end] turn emotion [V, A, D]` line and per-annotator lines per turn; transcriptions with
`[LAUGHTER]`/`[BREATHING]` markers in some turns and one turn that is `[LAUGHTER]` alone; a turn of
LONG_IEMOCAP_S seconds; labels rescaled from the demo's 1-7 to IEMOCAP's 1-5.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.errors import UsageError

LONG_MSP_S = 40.0
LONG_IEMOCAP_S = 35.0
SPLITS_MSP = {"train": "Train", "dev": "Development"}
EMO_CLASSES = ("N", "H", "S", "A")


def _rows(demo: Path) -> list[dict[str, str]]:
    manifest = demo / "manifest.csv"
    if not manifest.is_file():
        raise UsageError(f"no demo corpus at {demo}: build one with `msf corpus demo --out {demo}`")
    return list(csv.DictReader(open(manifest, encoding="utf-8")))


def _gender(demo_speaker: str) -> str:
    return "Female" if "+f" in demo_speaker else "Male"  # eSpeak NG variants: +f1.. female, +m1.. male


def _joined(demo: Path, rows: list[dict[str, str]], seconds: float) -> tuple[np.ndarray, str, list[float]]:
    """Demo utterances one after another (0.3 s apart) until `seconds`: audio, words, mean labels."""
    parts, words, labels = [], [], []
    total = 0.0
    for r in rows:
        x, sr = sf.read(demo / r["audio"], dtype="float32")
        assert sr == TARGET_SR
        parts += [x, np.zeros(int(0.3 * sr), np.float32)]
        words.append(r["transcript"])
        labels.append([float(r[k]) for k in ("valence", "arousal", "dominance")])
        total += len(x) / sr + 0.3
        if total >= seconds:
            break
    audio = np.concatenate(parts)[: int(seconds * TARGET_SR)]
    return audio, " ".join(words), list(np.mean(labels, 0))


def lay_out_msp_podcast(demo: Path, out: Path) -> Path:
    """OUT laid out as MSP-Podcast from the demo corpus at DEMO; returns OUT."""
    rows = _rows(demo)
    for d in ("Audios", "Transcripts", "Labels"):
        (out / d).mkdir(parents=True, exist_ok=True)
    table = []
    test_k = 0
    ids = {spk: 100 + i for i, spk in enumerate(sorted({r["speaker"] for r in rows}))}  # MSP's are numbers
    for k, r in enumerate(rows):
        name = f"MSP-PODCAST_{k:04d}_0001.wav"
        shutil.copyfile(demo / r["audio"], out / "Audios" / name)
        if k != 1:  # one segment ships without its transcript
            (out / "Transcripts" / name.replace(".wav", ".txt")).write_text(r["transcript"] + "\n", encoding="utf-8")
        split = SPLITS_MSP.get(r["split"])
        if split is None:
            split, test_k = ("Test1" if test_k % 2 == 0 else "Test2"), test_k + 1
        speaker = "Unknown" if k % 3 == 0 else str(ids[r["speaker"]])
        table.append([name, EMO_CLASSES[k % 4], r["arousal"], r["valence"], r["dominance"], speaker,
                      _gender(r["speaker"]), split])
    # one long segment: demo utterances of the training split joined to LONG_MSP_S seconds
    audio, words, (v, a, d) = _joined(demo, [r for r in rows if r["split"] == "train"], LONG_MSP_S)
    name = f"MSP-PODCAST_{len(rows):04d}_0001.wav"
    sf.write(out / "Audios" / name, audio, TARGET_SR, subtype="PCM_16")
    (out / "Transcripts" / name.replace(".wav", ".txt")).write_text(words + "\n", encoding="utf-8")
    table.append([name, "N", f"{a:.4f}", f"{v:.4f}", f"{d:.4f}", "Unknown", "Female", "Train"])
    with open(out / "Labels" / "labels_consensus.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        w.writerows(table)
    return out


def _to_iemocap_scale(x: float) -> float:
    return 1.0 + (x - 1.0) * 4.0 / 6.0  # the demo's 1-7 onto IEMOCAP's 1-5


def lay_out_iemocap(demo: Path, out: Path) -> Path:
    """OUT laid out as IEMOCAP from the demo corpus at DEMO (turns dealt to five sessions, two speakers
    each); returns OUT."""
    rows = _rows(demo)
    turns: dict[int, list[tuple[str, str, str, np.ndarray | None, tuple[float, float, float]]]] = {}
    for k, r in enumerate(rows):
        session, sex = k % 5 + 1, "FM"[(k // 5) % 2]
        text = r["transcript"]
        if k % 7 == 3:
            text = f"[LAUGHTER] {text}"
        elif k % 7 == 5:
            text = f"{text} [BREATHING]"
        labels = tuple(_to_iemocap_scale(float(r[t])) for t in ("valence", "arousal", "dominance"))
        turns.setdefault(session, []).append((sex, text, r["audio"], None, labels))  # type: ignore[arg-type]
    turns[2][0] = (turns[2][0][0], "[LAUGHTER]", turns[2][0][2], None, turns[2][0][4])  # a marker-only turn
    audio, words, labels = _joined(demo, rows, LONG_IEMOCAP_S)
    turns[3].append(("M", words, "", audio, tuple(_to_iemocap_scale(x) for x in labels)))  # a 35 s turn
    for session, ts in turns.items():
        dialog = f"Ses{session:02d}F_impro01"
        base = out / f"Session{session}"
        ev, tr, wav = base / "dialog" / "EmoEvaluation", base / "dialog" / "transcriptions", base / "sentences" / "wav" / dialog
        for d in (ev, tr, wav):
            d.mkdir(parents=True, exist_ok=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        tlines = []
        t0 = 0.0
        for n, (sex, text, src, samples, (v, a, d)) in enumerate(ts):
            utt = f"{dialog}_{sex}{n:03d}"
            if samples is None:
                shutil.copyfile(demo / src, wav / f"{utt}.wav")
                seconds = sf.info(wav / f"{utt}.wav").duration
            else:
                sf.write(wav / f"{utt}.wav", samples, TARGET_SR, subtype="PCM_16")
                seconds = len(samples) / TARGET_SR
            span = f"[{t0:.4f} - {t0 + seconds:.4f}]"
            lines += [f"{span}\t{utt}\tneu\t[{v:.4f}, {a:.4f}, {d:.4f}]", "C-E1:\tNeutral;\t()",
                      "C-E2:\tNeutral;\t()", f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()", ""]
            tlines.append(f"{utt} [{t0:08.4f}-{t0 + seconds:08.4f}]: {text}")
            t0 += seconds + 0.5
        (ev / f"{dialog}.txt").write_text("\n".join(lines), encoding="utf-8")
        (tr / f"{dialog}.txt").write_text("\n".join(tlines), encoding="utf-8")
    return out


def lay_out(demo: Path, out: Path, kind: str) -> Path:
    layouts = {"msp-podcast": lay_out_msp_podcast, "iemocap": lay_out_iemocap}
    if kind not in layouts:
        raise UsageError(f"--as {kind!r}: choose {' or '.join(layouts)}")
    return layouts[kind](Path(demo), Path(out))
