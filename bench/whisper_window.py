"""What Whisper's 30 s window costs, and what shorter windows cost in words.

Every window is tried on the same files with the same model (the bundled tiny.en, int8, CPU):
  asr 30s (faster-whisper)  `WhisperModel.transcribe`, beam 5, VAD: what msf ran before, and still runs
                            with align.whisper_window=30
  asr W s                   msf's windowed decoder (pipeline/backends/whisper_windows.py) in a window of
                            W seconds for every file: VAD crop, encode, beam 5, words timed by
                            cross-attention; W = 30 isolates the decoder from the window
  asr fitted                the same decoder, each file in its fitted window (the default); --fit-min
                            tries the rule with other floors
  asr fitted, batch B       the fitted rule, B files a call (the GPU path; on a CPU it only pads)
  encoder 30 s / fitted     the acoustic stage's whisper backend: the encoder alone, 30 s windows against
                            each file's fitted window (bench/whisper_window.py --only encoder)
WER is against the demo corpus's true transcripts (words compared as the aligners compare them: lower
case, no punctuation); with --ravdess DIR also against RAVDESS's two statements.

    python bench/whisper_window.py [--n 300] [--windows 30,20,15,10] [--threads 1] [--ravdess DIR [--ravdess-n N]]
                                   [--only asr|encoder] [--batch 8]

Seconds are wall seconds for all files, one process of --threads CTranslate2 threads. Last stdout
line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msf.pipeline.audio_io import TARGET_SR, load_waveform
from msf.pipeline.backends import whisper_windows
from msf.pipeline.backends.model_loading import bundled_tiny_en
from msf.pipeline.backends.whisper_windows import FULL_WINDOW_S, fitted_window_s, padded_features, transcribe_batch
from msf.pipeline.corpora.alignment_files import clean_word, transcript_words
from msf.pipeline.corpora.demo import build_demo_corpus

RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[list[str]], hyps: list[list[str]]) -> float:
    return sum(word_errors(r, h) for r, h in zip(refs, hyps)) / max(1, sum(len(r) for r in refs))


def demo_files(n: int, seed: int, out: Path) -> list[tuple[Path, list[str]]]:
    build_demo_corpus(out, n=n, seed=seed)
    with open(out / "manifest.csv") as f:
        return [(out / r["audio"], transcript_words(r["transcript"])) for r in csv.DictReader(f)]


def ravdess_files(root: Path, n: int = 0) -> list[tuple[Path, list[str]]]:
    """RAVDESS's speech files (every k-th, for n of them, when n is given) with their statement."""
    files = sorted(root.glob("Actor_*/03-01-*.wav"))
    if n and n < len(files):
        files = files[:: len(files) // n][:n]
    return [(p, transcript_words(RAVDESS_STATEMENTS[p.stem.split("-")[4]])) for p in files]


def asr_legacy(model, audios: list[np.ndarray]) -> list[list[str]]:  # type: ignore[no-untyped-def]
    out = []
    for a in audios:
        segments, _ = model.transcribe(a, language="en", word_timestamps=True, beam_size=5,
                                       condition_on_previous_text=False, vad_filter=True)
        out.append([clean_word(w.word) for s in segments for w in (s.words or []) if clean_word(w.word)])
    return out


def asr_windowed(model, audios: list[np.ndarray], window, batch: int = 1) -> list[list[str]]:  # type: ignore[no-untyped-def]
    out: list[list[str]] = []
    order = sorted(range(len(audios)), key=lambda i: len(audios[i])) if batch > 1 else range(len(audios))
    got: dict[int, list[str]] = {}
    order = list(order)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        for i, words in zip(idx, transcribe_batch(model, [audios[i] for i in idx], window)):
            got[i] = [clean_word(w["word"]) for w in (words or []) if clean_word(w["word"])]
    out = [got[i] for i in range(len(audios))]
    return out


def encoder_seconds(model, audios: list[np.ndarray], window) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for a in audios:
        feats, _ = padded_features(model, a, fitted_window_s(len(a) / TARGET_SR, window))
        np.asarray(model.encode(feats[None]))
    return time.perf_counter() - t0


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", type=Path, help="an existing demo corpus folder (else one is built)")
    ap.add_argument("--windows", default="30,20,15,10", help="fixed windows to try beside the fitted rule")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="files a call for the batched row")
    ap.add_argument("--ravdess", type=Path, help="a folder with RAVDESS's Actor_NN/*.wav")
    ap.add_argument("--ravdess-n", type=int, default=0, help="that many of its files, evenly spread (0: all)")
    ap.add_argument("--only", choices=["asr", "encoder"])
    ap.add_argument("--sets", default="demo,ravdess", help="which file sets to run (ravdess only with --ravdess)")
    ap.add_argument("--skip-legacy", action="store_true", help="leave out faster-whisper's 30 s transcribe")
    ap.add_argument("--fit-min", default="", help="other floors of the fitted rule to try (e.g. 10), beside msf's")
    args = ap.parse_args()

    from faster_whisper import WhisperModel

    model = WhisperModel(str(bundled_tiny_en()), device="cpu", compute_type="int8", cpu_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if "demo" not in args.sets.split(","):
            files = []
        elif args.corpus:
            with open(args.corpus / "manifest.csv") as f:
                files = [(args.corpus / r["audio"], transcript_words(r["transcript"])) for r in csv.DictReader(f)]
        else:
            files = demo_files(args.n, args.seed, Path(tmp))
        sets = {"demo": files} if "demo" in args.sets.split(",") else {}
        if args.ravdess and "ravdess" in args.sets.split(","):
            sets["ravdess"] = ravdess_files(args.ravdess, args.ravdess_n)
        fixed = [float(w) for w in args.windows.split(",") if w]
        result: dict[str, float] = {}
        rows: list[tuple[str, str, float, float]] = []
        for name, entries in sets.items():
            audios = [load_waveform(p) for p, _ in entries]
            refs = [ref for _, ref in entries]
            hours = sum(len(a) for a in audios) / TARGET_SR / 3600
            print(f"{name}: {len(audios)} files, {hours * 3600:.0f} s of audio", file=sys.stderr)
            if args.only != "encoder":
                if not args.skip_legacy:
                    hyp, s = timed(asr_legacy, model, audios)
                    rows.append((name, "asr 30 s (faster-whisper)", s, wer(refs, hyp)))
                    result[f"{name}_asr_30s_transcribe_s"], result[f"{name}_asr_wer_30s"] = s, wer(refs, hyp)
                for w in fixed:
                    hyp, s = timed(asr_windowed, model, audios, w)
                    rows.append((name, f"asr {w:g} s", s, wer(refs, hyp)))
                    result[f"{name}_asr_{w:g}s_s"], result[f"{name}_asr_wer_{w:g}s"] = s, wer(refs, hyp)
                for floor in [float(x) for x in args.fit_min.split(",") if x]:
                    default_floor, whisper_windows.MIN_S = whisper_windows.MIN_S, floor
                    fhyp, s = timed(asr_windowed, model, audios, "fitted")
                    whisper_windows.MIN_S = default_floor
                    rows.append((name, f"asr fitted, floor {floor:g} s", s, wer(refs, fhyp)))
                    result[f"{name}_asr_fitted_floor{floor:g}_s"] = s
                    result[f"{name}_asr_wer_fitted_floor{floor:g}"] = wer(refs, fhyp)
                hyp, s = timed(asr_windowed, model, audios, "fitted")
                rows.append((name, f"asr fitted (floor {whisper_windows.MIN_S:g} s)", s, wer(refs, hyp)))
                result[f"{name}_asr_fitted_s"], result[f"{name}_asr_wer_fitted"] = s, wer(refs, hyp)
                if args.batch > 1:
                    bhyp, s = timed(asr_windowed, model, audios, "fitted", args.batch)
                    rows.append((name, f"asr fitted, batch {args.batch}", s, wer(refs, bhyp)))
                    result[f"{name}_asr_fitted_batch_s"] = s
                    result[f"{name}_asr_batch_same_words"] = float(np.mean([a == b for a, b in zip(hyp, bhyp)]))
            if args.only != "asr":
                s30 = encoder_seconds(model, audios, FULL_WINDOW_S)
                sfit = encoder_seconds(model, audios, "fitted")
                rows += [(name, "encoder 30 s", s30, float("nan")), (name, "encoder fitted", sfit, float("nan"))]
                result[f"{name}_encoder_30s_s"], result[f"{name}_encoder_fitted_s"] = s30, sfit
        print(f"{'set':8} {'row':28} {'seconds':>8} {'WER':>6}")
        for name, row, s, e in rows:
            print(f"{name:8} {row:28} {s:8.1f} {e:6.3f}")
    summary = {k.removeprefix("demo_"): round(v, 4) for k, v in result.items()}
    if "asr_30s_transcribe_s" in summary and "asr_fitted_s" in summary:
        summary["asr_fitted_speedup"] = round(result["demo_asr_30s_transcribe_s"] / result["demo_asr_fitted_s"], 3)
    for key in ("fitted", "30s"):  # the real-speech figures under the names the checks read
        if f"ravdess_asr_wer_{key}" in result:
            summary[f"ravdess_wer_{key}"] = round(result[f"ravdess_asr_wer_{key}"], 4)
    if "encoder_fitted_s" in summary:
        summary["acoustic_whisper_fitted_speedup"] = round(result["demo_encoder_30s_s"] / result["demo_encoder_fitted_s"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
