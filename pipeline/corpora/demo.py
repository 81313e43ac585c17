"""The synthetic demo corpus: eSpeak NG speech with known word timings, emphasis and V/A/D labels.

The generative rule (docs/demo-corpus.md has the full statement) gives each semantic level
information the others lack:
  arousal   <- prosody drawn per utterance (rate, pitch level, pitch range, volume): audio
  valence   <- lexical sentiment of two clauses, shifted toward the clause whose key word is
               emphasised (rendered slower, louder, higher): only found by locating the emphasis
  dominance <- the mood of the phrasing (command ... question) and loudness: text + audio
The rule is fixed here, never tuned toward a model.
"""

from __future__ import annotations

import csv
import json
import os
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from msf.pipeline.audio_io import TARGET_SR as SAMPLE_RATE
from msf.pipeline.corpora import manifest
from msf.pipeline.corpora.alignment_files import truth_file
from msf.pipeline.corpora.espeak import espeak
from msf.pipeline.corpus import Corpus, CorpusError, Streaming
from msf.pipeline.errors import UsageError

PUNCT = ".,?!"
BLOCK = 16  # utterances per fresh eSpeak process; part of the corpus definition (see build_demo_corpus)

# Key words and their lexical sentiment in [-1, 1].
KEYWORDS: dict[str, float] = {
    "wonderful": 1.0, "brilliant": 1.0, "fantastic": 1.0, "delightful": 1.0, "excellent": 1.0,
    "pleasant": 0.5, "helpful": 0.5, "lovely": 0.5, "decent": 0.5, "cheerful": 0.5,
    "boring": -0.5, "messy": -0.5, "awkward": -0.5, "gloomy": -0.5, "tedious": -0.5,
    "terrible": -1.0, "awful": -1.0, "horrible": -1.0, "dreadful": -1.0, "disgusting": -1.0,
}
NOUNS = ["food", "service", "movie", "weather", "meeting", "trip", "music", "hotel", "lecture", "garden",
         "concert", "project"]
# Phrasing moods (dominance cue in the text) and their frames around the two clauses.
MOODS: dict[str, tuple[float, str]] = {
    "command": (1.0, "Listen to me now. {body}."),
    "assertion": (0.6, "Without any doubt, {body}."),
    "statement": (0.0, "{body}."),
    "hedge": (-0.6, "Perhaps, though maybe not, {body}."),
    "question": (-1.0, "Do you really think {body}?"),
}
# Speakers: eSpeak NG voice + variant. Splits are speaker-disjoint.
SPEAKERS: list[tuple[str, str]] = [
    ("en-us+m1", "train"), ("en-us+f2", "train"), ("en+m3", "train"), ("en+f4", "train"),
    ("en-gb-x-rp+m2", "train"), ("en-gb-x-rp+f1", "train"),
    ("en-029+m4", "dev"), ("en-029+f3", "dev"),
    ("en-gb-scotland+m5", "test"), ("en-us+f5", "test"),
]
# Emphasis rendering: relative SSML prosody on the key word (audibly longer, louder and higher).
EMPHASIS_OPEN = '<prosody rate="-40%" volume="+80%" pitch="+35%">'
EMPHASIS_CLOSE = "</prosody>"
P_EMPHASIS = 0.75  # share of utterances with an emphasised key word
P_OPPOSITE = 0.7  # share of utterances whose two clauses differ in sentiment sign
EMPHASIS_PULL = 0.7  # how far valence moves from the clause mean toward the emphasised clause
LABEL_NOISE = 0.25  # s.d. of Gaussian label noise on the 1-7 scale


@dataclass(frozen=True)
class UtteranceSpec:
    id: str
    speaker: str
    split: str
    words: tuple[str, str, str, str]  # noun1, key1, noun2, key2
    connector: str
    mood: str
    emphasis: int  # -1 none, 0 first clause's key word, 1 second's
    rate: float  # the four prosody draws in [0, 1]
    pitch: float
    pitch_range: float
    volume: float
    valence: float
    arousal: float
    dominance: float
    clean: tuple[float, float, float]  # (V, A, D) by the rule, before label noise: all a model can learn
    noise_seed: int

    def text(self, ssml: bool) -> str:
        n1, k1, n2, k2 = self.words
        keys = [k1, k2]
        if ssml and self.emphasis >= 0:
            keys[self.emphasis] = f"{EMPHASIS_OPEN}{keys[self.emphasis]}{EMPHASIS_CLOSE}"
        body = f"the {n1} was {keys[0]}, {self.connector} the {n2} was {keys[1]}"
        frame = MOODS[self.mood][1]
        if frame.startswith("{body}") or ". {body}" in frame:  # sentence-initial
            body = body[0].upper() + body[1:]
        sentence = frame.format(body=body)
        return f"<speak>{sentence}</speak>" if ssml else sentence


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def draw_specs(n: int, seed: int) -> list[UtteranceSpec]:
    """All random choices, made up front in one generator so the corpus depends only on the seed."""
    rng = np.random.default_rng(seed)
    keys = list(KEYWORDS)
    specs = []
    for i in range(n):
        speaker, split = SPEAKERS[int(rng.integers(len(SPEAKERS)))]
        k1 = keys[int(rng.integers(len(keys)))]
        opposite = rng.random() < P_OPPOSITE
        pool = [k for k in keys if (KEYWORDS[k] > 0) != (KEYWORDS[k1] > 0)] if opposite else keys
        k2 = pool[int(rng.integers(len(pool)))]
        n1, n2 = rng.choice(NOUNS, size=2, replace=False).tolist()
        mood = list(MOODS)[int(rng.integers(len(MOODS)))]
        emphasis = int(rng.integers(2)) if rng.random() < P_EMPHASIS else -1
        rate, pitch, prange, volume = (float(v) for v in rng.random(4))
        s1, s2 = KEYWORDS[k1], KEYWORDS[k2]
        mean = (s1 + s2) / 2
        m = mean if emphasis < 0 else mean + EMPHASIS_PULL * ((s1, s2)[emphasis] - mean)
        noise = rng.normal(0.0, LABEL_NOISE, size=3)
        valence = 4.0 + 2.5 * m
        arousal = 1.0 + 6.0 * _clip01(0.35 * rate + 0.2 * pitch + 0.2 * prange + 0.25 * volume)
        dominance = 1.0 + 6.0 * _clip01(0.5 + 0.35 * MOODS[mood][0] + 0.3 * (volume - 0.5))
        v, a, d = (float(np.clip(x + e, 1.0, 7.0)) for x, e in zip((valence, arousal, dominance), noise))
        specs.append(UtteranceSpec(
            id=f"demo_{i:05d}", speaker=speaker, split=split, words=(n1, k1, n2, k2),
            connector="but" if (s1 > 0) != (s2 > 0) else "and", mood=mood, emphasis=emphasis,
            rate=rate, pitch=pitch, pitch_range=prange, volume=volume,
            valence=round(v, 3), arousal=round(a, 3), dominance=round(d, 3),
            clean=(round(valence, 3), round(arousal, 3), round(dominance, 3)),
            noise_seed=int(rng.integers(2**31)),
        ))
    return specs


def _trim(frame_db: np.ndarray, lo: int, hi: int, floor_db: float) -> tuple[int, int]:
    """Shrink [lo, hi) (in 10 ms frames) to the frames above the floor: words without the pauses."""
    loud = np.nonzero(frame_db[lo:hi] > floor_db)[0]
    if len(loud) == 0:
        return lo, hi
    return lo + int(loud[0]), lo + int(loud[-1]) + 1


def synthesise(spec: UtteranceSpec, out_dir: str) -> dict:
    """Speak one utterance, write its wav, return its truth (words with start, end, emphasis)."""
    syn = espeak().synth(
        spec.text(ssml=True), spec.speaker,
        rate=int(round(120 + 110 * spec.rate)), pitch=int(round(25 + 45 * spec.pitch)),
        pitch_range=int(round(20 + 60 * spec.pitch_range)), volume=int(round(60 + 90 * spec.volume)),
    )
    x = syn.samples.astype(np.float32) / 65536.0  # -6 dB headroom: loud, emphasised words never clip
    x = soxr.resample(x, syn.sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    # A faint deterministic noise floor: real recordings are never digital silence.
    x += np.random.default_rng(spec.noise_seed).normal(0, 1e-4, size=x.shape).astype(np.float32)
    x = np.clip(x, -1.0, 1.0)
    scale = SAMPLE_RATE / syn.sample_rate
    hop = SAMPLE_RATE // 100
    frames = len(x) // hop
    frame_db = 10 * np.log10(np.mean(x[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    floor_db = float(frame_db.max()) - 35.0
    # eSpeak reports a word event per spoken word, plus one for punctuation that a closing tag
    # separates from its word; its text offsets drift after a sentence break, so words are taken
    # from the plain text in order and the events only give their timing.
    ssml = spec.text(ssml=True).encode("utf-8")
    events = [w for w in syn.words
              if ssml[w.text_position : w.text_position + w.length].decode("utf-8").strip(" ") not in PUNCT]
    plain = [t.strip(PUNCT).lower() for t in spec.text(ssml=False).split()]
    if len(events) != len(plain):
        raise RuntimeError(f"{spec.id}: eSpeak gave {len(events)} word events for {len(plain)} words")
    key_index = _key_word_index(plain, spec)
    words = []
    for i, (w, token) in enumerate(zip(events, plain)):
        start = int(w.sample * scale) // hop
        nxt = [b for b in syn.boundaries if b > w.sample]
        end = int(min(nxt) * scale) // hop if nxt else frames
        lo, hi = _trim(frame_db, start, max(start + 1, min(end, frames)), floor_db)
        words.append({"word": token, "start": round(lo * hop / SAMPLE_RATE, 3),
                      "end": round(hi * hop / SAMPLE_RATE, 3), "emphasized": i == key_index})
    sf.write(os.path.join(out_dir, f"{spec.id}.wav"), x, SAMPLE_RATE, subtype="PCM_16")
    return {"id": spec.id, "words": words}


def _key_word_index(plain: list[str], spec: UtteranceSpec) -> int:
    """Position of the emphasised key word: the clause's "was <key>"; -1 when nothing is emphasised."""
    if spec.emphasis < 0:
        return -1
    hits = [i for i in range(1, len(plain)) if plain[i - 1] == "was"]
    return hits[spec.emphasis]


def _chunks(specs: list[UtteranceSpec], size: int) -> Iterator[list[UtteranceSpec]]:
    for i in range(0, len(specs), size):
        yield specs[i : i + size]


def _synthesise_many(specs: list[UtteranceSpec], out_dir: str) -> list[dict]:
    return [synthesise(s, out_dir) for s in specs]


def build_demo_corpus(out: Path, n: int = 300, seed: int = 0, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Write OUT/wavs/*.wav, OUT/manifest.csv, OUT/truth.jsonl and OUT/generator.jsonl."""
    from rich.progress import Progress

    from msf.pipeline.progress import STDERR

    if n < 1:
        raise UsageError("the demo corpus needs at least one utterance (--n)")
    out = Path(out)
    wav_dir = out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    specs = draw_specs(n, seed)
    workers = workers or min(os.cpu_count() or 1, 8)
    truths: list[dict] = []
    # eSpeak keeps state between syntheses (pitch flutter phase, noise generators) that no API call
    # resets, so an utterance's samples depend on what the same process spoke before. Each block
    # of BLOCK utterances is therefore spoken by a fresh spawned process: the bytes depend on the
    # seed only, never on the worker count, the scheduling or what the caller's process did.
    blocks = list(_chunks(specs, BLOCK))
    with Progress(console=STDERR, disable=not progress) as bar:
        task = bar.add_task("synthesising", total=n)
        with ProcessPoolExecutor(min(workers, len(blocks)), mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            for block, res in zip(blocks, pool.map(_synthesise_many, blocks, [str(wav_dir)] * len(blocks))):
                truths += res
                bar.advance(task, len(block))
    with open(out / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance"])
        for s in specs:
            w.writerow([s.id, f"wavs/{s.id}.wav", s.text(ssml=False), s.speaker, s.split,
                        s.valence, s.arousal, s.dominance])
    # A rebuild into the same folder with a smaller --n leaves no wav the manifest does not list.
    keep = {f"{s.id}.wav" for s in specs}
    for stale in wav_dir.glob("demo_*.wav"):
        if stale.name not in keep:
            stale.unlink()
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for t in truths:
            f.write(json.dumps(t) + "\n")
    with open(out / "generator.jsonl", "w", encoding="utf-8") as f:
        for s in specs:
            f.write(json.dumps(asdict(s)) + "\n")
    return out


def read(root: Path, spec: str, check_audio: bool = True, stream: Streaming | None = None) -> Corpus:
    """The `demo:PATH` reader: the manifest plus `truth.jsonl` for the `provided` aligner."""
    path = root / "manifest.csv"
    if not path.is_file():
        raise CorpusError(f"no demo corpus at {root}: build one with `msf corpus demo --out {root}`")
    truth = str((root / "truth.jsonl").resolve())
    return manifest.read(path, spec, extra={"truth": truth}, label_range=(1.0, 7.0), check_audio=check_audio,
                         stream=stream)


def read_truth(root: Path) -> dict[str, list[dict]]:
    """Each utterance's spoken words with the synthesiser's times and emphasis flags."""
    return truth_file(str(Path(root) / "truth.jsonl"))


def score_against_truth(align: dict[str, dict], emphasis: dict[str, dict], failed: set[str],
                        truth: dict[str, list[dict]]) -> dict[str, float]:
    """Word-boundary error (ms, starts and ends pooled) and emphasis precision/recall/F1 of a cache's
    `align` and `emphasis` records (utterance -> record, `CacheView.records`) against the corpus's
    truth; utterances whose aligned words differ from the truth (ASR) are left out of both, and counted."""
    errors: list[float] = []
    tp = fp = fn = 0
    compared = 0
    for utt, words in truth.items():
        a, e = align.get(utt), emphasis.get(utt)
        if a is None or e is None:
            continue
        if a["words"].tolist() != [w["word"] for w in words]:
            continue
        compared += 1
        errors += list(np.abs(a["start"] - [w["start"] for w in words]) * 1000)
        errors += list(np.abs(a["end"] - [w["end"] for w in words]) * 1000)
        t = np.array([w["emphasized"] for w in words])
        f = e["emphasized"]
        tp, fp, fn = tp + int((f & t).sum()), fp + int((f & ~t).sum()), fn + int((~f & t).sum())
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"utterances": compared, "align_failed_fraction": len(failed & set(truth)) / max(1, len(truth)),
            "boundary_median_ms": float(np.median(errors)) if errors else float("nan"),
            "boundary_p90_ms": float(np.percentile(errors, 90)) if errors else float("nan"),
            "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-9)}
