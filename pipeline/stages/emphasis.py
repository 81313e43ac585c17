"""`emphasis`: which words the speaker stresses, from pitch, loudness and duration over the word alignment.

Per word: F0 mean/max/range in semitones relative to the speaker's median F0, intensity mean/max in
dB relative to the utterance, duration per syllable (or character), and the z-scores of these within
the utterance. Where the aligner gives phones (sphinx), syllables are the word's vowel phones, the
duration cue also weighs the lengthening of the word's longest vowel (its stressed vowel, in all but
a few words) against the utterance's other vowels, and the loudness cue is the word's peak, not its
mean. The soft score contrasts each word with the other
words of its utterance (a stressed word peaks higher, is louder and longer than its neighbours),
scaled by the size of a typical stress, so that an utterance with no stressed word scores low
everywhere instead of always crowning its maximum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from msf.pipeline.audio_io import TARGET_SR as SR
from msf.pipeline.corpora.alignment_files import ARPABET_VOWELS
from msf.pipeline.speaker_baseline import Reference, has_speaker_baseline
from msf.pipeline.stage import Item, OutputField, Record, Stage, StageParams, UtteranceError, register

FRAME_S = 0.01
FEATURES = ("f0_mean_st", "f0_max_st", "f0_range_st", "intensity_mean_db", "intensity_max_db", "duration_norm",
            "vowel_s")


class EmphasisParams(StageParams):
    threshold: float = 0.5  # flag a word when its soft score reaches this
    pitch_floor: float = 60.0  # Hz, parselmouth pitch search range
    pitch_ceiling: float = 500.0
    duration_unit: Literal["syllables", "characters"] = "syllables"
    # The size of a typical stress relative to the other words of the utterance; a word that differs
    # by this much on all three cues has evidence 1. Values from the prosody literature on English
    # lexical/contrastive stress: 2-4 semitones, 3-6 dB, 30-50 % longer.
    stress_pitch_st: float = 3.0
    stress_loudness_db: float = 5.0
    stress_lengthening: float = 1.4
    # score = sigmoid(sharpness * (evidence - midpoint)); evidence is the mean of the three cues.
    midpoint: float = 0.9
    sharpness: float = 8.0
    min_word_s: float = 0.03  # shorter words carry no usable prosody: score 0
    # Where the alignment has phones: syllables from vowel phones, and the longest vowel's lengthening
    # as part of the duration cue. False: vowel letters and word durations only (as without phones).
    use_phones: bool = True
    # A word's duration counts its frames from the first to the last within this many dB of the
    # utterance's loudness: a pause the aligner let the word absorb is not lengthening (demo, sphinx
    # alignment, seeds 0/1: emphasis F1 0.873/0.918 at 0, 0.888/0.940 at 25). 0: the span as aligned.
    pause_db: float = 25.0


def syllables(word: str) -> int:
    """Vowel letter groups: a crude count, but consistent for a word, which is all the normalisation
    needs when the aligner gives no phones."""
    return max(1, len(re.findall(r"[aeiouy]+", word.lower())))


def word_vowels(align: Record, n_words: int) -> tuple[list[int], np.ndarray] | None:
    """Per word: its vowel phones (syllables) and its longest vowel's duration (s); None without phones."""
    phones = align.get("phones")
    if phones is None or not len(phones):
        return None
    count = [0] * n_words
    longest = np.full(n_words, np.nan)
    for ph, w, s, e in zip(phones, align["phone_word"], align["phone_start"], align["phone_end"]):
        if str(ph) in ARPABET_VOWELS:
            count[int(w)] += 1
            longest[int(w)] = np.fmax(longest[int(w)], float(e - s))
    return [max(1, c) for c in count], longest


def semitones(hz: np.ndarray, ref_hz: float) -> np.ndarray:
    return 12.0 * np.log2(hz / ref_hz)


def zscore(x: np.ndarray) -> np.ndarray:
    """Within-utterance z-scores; 0 where a feature is constant (one word) or undefined."""
    finite = np.isfinite(x)
    out = np.zeros_like(x)
    if finite.sum() >= 2:
        sd = x[finite].std()
        if sd > 1e-6:
            out[finite] = (x[finite] - x[finite].mean()) / sd
    return out


def _contrast(x: np.ndarray) -> np.ndarray:
    """Each word minus the median of the *other* words (0 when there are none or it is undefined)."""
    out = np.zeros_like(x)
    for i in range(len(x)):
        others = np.delete(x, i)
        others = others[np.isfinite(others)]
        if np.isfinite(x[i]) and len(others):
            out[i] = x[i] - np.median(others)
    return out


class Contours:
    """F0 (Hz, NaN unvoiced) and intensity (dB) on a 10 ms grid, from parselmouth."""

    def __init__(self, wave: np.ndarray, floor: float, ceiling: float):
        import parselmouth

        snd = parselmouth.Sound(wave.astype(np.float64), sampling_frequency=SR)
        pitch = snd.to_pitch(time_step=FRAME_S, pitch_floor=floor, pitch_ceiling=ceiling)
        self.f0_t = pitch.xs()
        f0 = pitch.selected_array["frequency"]
        self.f0 = np.where(f0 > 0, f0, np.nan)
        if snd.duration > 6.4 / floor:  # parselmouth needs a few pitch periods for intensity
            inten = snd.to_intensity(minimum_pitch=floor, time_step=FRAME_S)
            self.int_t, self.intensity = inten.xs(), inten.values[0]
        else:
            self.int_t, self.intensity = np.array([snd.duration / 2]), np.array([20 * np.log10(
                np.sqrt(np.mean(wave**2)) / 2e-5 + 1e-12)])

    def f0_in(self, start: float, end: float) -> np.ndarray:
        v = self.f0[(self.f0_t >= start) & (self.f0_t < end)]
        return v[np.isfinite(v)]

    def sounding_span(self, start: float, end: float, floor_db: float) -> tuple[float, float]:
        """[start, end) cut to its first and last frames above floor_db: the word without a pause the
        aligner let it absorb (the whole span when no frame is that loud)."""
        inside = np.nonzero((self.int_t >= start) & (self.int_t < end) & (self.intensity > floor_db))[0]
        if not len(inside):
            return start, end
        return float(self.int_t[inside[0]]), float(self.int_t[inside[-1]] + FRAME_S)

    def intensity_in(self, start: float, end: float) -> np.ndarray:
        v = self.intensity[(self.int_t >= start) & (self.int_t < end)]
        if not len(v):  # a word shorter than a frame: the nearest frame
            v = self.intensity[[int(np.argmin(np.abs(self.int_t - (start + end) / 2)))]]
        return v


class _Utterance:
    """One utterance's words and contours, and its prosody summary before speaker normalisation."""

    def __init__(self, item: Item, p: EmphasisParams):
        a = item.inputs["align"]
        self.words = [str(w) for w in a["words"]]
        if not self.words:
            raise UtteranceError("no aligned words")
        self.start = np.asarray(a["start"], np.float64)
        self.end = np.asarray(a["end"], np.float64)
        self.c = Contours(item.waveform, p.pitch_floor, p.pitch_ceiling)
        span = max(float(self.end.max() - self.start.min()), 1e-3)
        self.loudness_db = float(np.mean(self.c.intensity_in(float(self.start.min()), float(self.end.max()))))
        vowels = word_vowels(a, len(self.words)) if p.use_phones else None
        self.syllables = vowels[0] if vowels else [syllables(w) for w in self.words]
        self.vowel_s = vowels[1] if vowels else np.full(len(self.words), np.nan)
        self.rate = sum(self.syllables) / span
        voiced = self.c.f0[np.isfinite(self.c.f0)]
        self.f0_median = float(np.median(voiced)) if len(voiced) else float("nan")


@dataclass(frozen=True)
class SpeakerStats:
    """Medians over a speaker's utterances (the group the runner hands over whole)."""

    f0_hz: float
    loudness_db: float
    rate: float

    @classmethod
    def of(cls, utts: list[_Utterance]) -> "SpeakerStats":
        voiced = [u.c.f0[np.isfinite(u.c.f0)] for u in utts]
        f0 = np.concatenate(voiced) if voiced else np.zeros(0)
        return cls(
            f0_hz=float(np.median(f0)) if len(f0) else float("nan"),
            loudness_db=float(np.median([u.loudness_db for u in utts])) if utts else float("nan"),
            rate=float(np.median([u.rate for u in utts])) if utts else float("nan"),
        )


@register
class EmphasisStage(Stage):
    name = "emphasis"
    needs = ("audio", "align")
    # 2: syllables from phones, vowel lengthening; 3: the pitch cue is the F0 peak; 4: with phones the
    # loudness cue is the word's peak, and loudness and duration skip an absorbed pause; 5: the speaker
    # baseline rule (pipeline/speaker_baseline.py): no speaker-relative fields without a speaker group
    # worth the name, and the utterance's own measures (f0_median_hz, loudness_abs_db) always
    version = "5"
    fields = {
        **{k: OutputField("float32", ("W",)) for k in FEATURES},
        **{f"z_{k}": OutputField("float32", ("W",), "z-score within the utterance") for k in FEATURES},
        "words": OutputField("str", ("W",)), "voiced": OutputField("bool", ("W",)),
        "score": OutputField("float32", ("W",), "soft emphasis score"), "emphasized": OutputField("bool", ("W",)),
        "f0_median_hz": OutputField("float", doc="the utterance's median F0 (NaN when unvoiced)"),
        "loudness_abs_db": OutputField("float"), "rate_syl_s": OutputField("float"),
        "speaker_baseline": OutputField("bool", doc="whether the speaker group is its own baseline"),
        "speaker_f0_hz": OutputField("float", doc="the reference of the word pitch fields"),
        "pitch_st": OutputField("float", doc="relative to the speaker; NaN without a speaker baseline"),
        "loudness_db": OutputField("float", doc="relative to the speaker; NaN without a speaker baseline"),
        "rate_ratio": OutputField("float", doc="relative to the speaker; NaN without a speaker baseline"),
    }
    Params = EmphasisParams
    group_by = "speaker"  # F0, loudness and rate are relative to the speaker's medians over the corpus

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        p: EmphasisParams = self.params  # type: ignore[assignment]
        prepared: list[_Utterance | Exception] = []
        for item in batch:
            try:
                prepared.append(_Utterance(item, p))
            except UtteranceError as e:
                prepared.append(e)
            except Exception as e:  # noqa: BLE001 - one unreadable file must not cost its speaker
                prepared.append(UtteranceError(f"pitch/intensity analysis failed: {type(e).__name__}: {e}"))
        # The runner hands over one whole speaker group; a group too small (or unknown) to be a baseline
        # leaves the speaker-relative fields to the population baseline the trainer fits.
        ok = [u for u in prepared if isinstance(u, _Utterance)]
        own = has_speaker_baseline(batch[0].utt.group_key("speaker"), len(batch)) if batch else False
        speaker = SpeakerStats.of(ok) if own else None
        return [u if isinstance(u, Exception) else self._record(u, speaker) for u in prepared]

    def _record(self, u: _Utterance, speaker: SpeakerStats | None) -> Record:
        """Word pitch in semitones relative to the speaker's median F0 (the utterance's own without a
        speaker baseline: the stress cues are contrasts between words, so the score is the same)."""
        p: EmphasisParams = self.params  # type: ignore[assignment]
        ref_hz = speaker.f0_hz if speaker is not None else u.f0_median
        ref = ref_hz if np.isfinite(ref_hz) else 100.0  # no voicing anywhere: any reference
        n = len(u.words)
        f = {k: np.full(n, np.nan) for k in FEATURES}
        voiced = np.zeros(n, bool)
        for i, (w, s, e) in enumerate(zip(u.words, u.start, u.end)):
            f0 = u.c.f0_in(s, e)
            if len(f0):
                st = semitones(f0, ref)
                f["f0_mean_st"][i], f["f0_max_st"][i] = st.mean(), st.max()
                f["f0_range_st"][i] = st.max() - st.min()
                voiced[i] = True
            # Loudness and duration over the word's sounding span: a pause the aligner let the word
            # absorb is neither quieter speech nor lengthening.
            s_on, e_on = u.c.sounding_span(s, e, u.loudness_db - p.pause_db) if p.pause_db > 0 else (s, e)
            db = u.c.intensity_in(s_on, e_on)
            f["intensity_mean_db"][i] = db.mean() - u.loudness_db
            f["intensity_max_db"][i] = db.max() - u.loudness_db
            units = u.syllables[i] if p.duration_unit == "syllables" else max(1, len(w))
            f["duration_norm"][i] = max(e_on - s_on, 1e-3) / units
        f["vowel_s"] = u.vowel_s
        # Cues: pitch and loudness as contrasts with the other words, duration as a log ratio; an
        # unvoiced word has no pitch cue (0), not a missing score. With phones, the duration cue is
        # the mean of the word's lengthening per syllable and its longest vowel's.
        lengthening = np.clip(_contrast(np.log(f["duration_norm"])) / np.log(p.stress_lengthening), -2, 2)
        if np.isfinite(u.vowel_s).sum() >= 2:
            vowel = np.clip(_contrast(np.log(np.maximum(u.vowel_s, 1e-3))) / np.log(p.stress_lengthening), -2, 2)
            lengthening = np.where(np.isfinite(u.vowel_s), (lengthening + vowel) / 2, lengthening)
        # Pitch: the word's F0 peak, not its mean: an accent is a peak on the stressed syllable, which a
        # long word's unstressed syllables dilute in the mean (demo, sphinx alignment, seeds 0/1: F1
        # 0.846/0.823 with the mean, 0.888/0.940 with the peak, 0.876/0.892 with the 90th percentile).
        # Loudness: with phones, the word's peak, for the reason the pitch cue is a peak (sphinx
        # alignment, emphasis F1 at corpus seeds 0/1/2: 0.885/0.888/0.845 with the mean, 0.933/0.930/0.910
        # with the peak). Without phones the mean: there the duration cue counts vowel letters and has
        # no stressed vowel, and with the peak one-syllable words crossed the threshold (the synthesiser's
        # own word times: 0.908/0.890/0.889 with the mean, 0.856/0.868/0.859 with the peak).
        loudness = f["intensity_max_db"] if np.isfinite(u.vowel_s).any() else f["intensity_mean_db"]
        evidence = (
            np.clip(_contrast(f["f0_max_st"]) / p.stress_pitch_st, -2, 2)
            + np.clip(_contrast(loudness) / p.stress_loudness_db, -2, 2)
            + lengthening
        ) / 3.0
        score = 1.0 / (1.0 + np.exp(-p.sharpness * (evidence - p.midpoint)))
        score[(u.end - u.start) < p.min_word_s] = 0.0
        if n == 1:  # nothing to contrast with: no evidence either way
            score[:] = 0.0
        rec: Record = {k: np.nan_to_num(v, nan=0.0).astype(np.float32) for k, v in f.items()}
        rec.update({f"z_{k}": zscore(v).astype(np.float32) for k, v in f.items()})
        rec.update({
            "words": np.asarray(u.words, dtype=str),
            "voiced": voiced,
            "score": score.astype(np.float32),
            "emphasized": score >= p.threshold,
            # The utterance's own delivery (median F0, loudness, syllable rate), and, with a speaker
            # baseline, the same relative to the speaker (NaN without: the population's is the trainer's).
            "f0_median_hz": u.f0_median,
            "loudness_abs_db": u.loudness_db,
            "rate_syl_s": u.rate,
            "speaker_baseline": speaker is not None,
            "speaker_f0_hz": float(ref),
        })
        if speaker is None:
            rec.update({"pitch_st": float("nan"), "loudness_db": float("nan"), "rate_ratio": float("nan")})
        else:
            rec.update(zip(("pitch_st", "loudness_db", "rate_ratio"), Reference(
                ref, speaker.loudness_db, speaker.rate).relative(u.f0_median, u.loudness_db, u.rate)))
        return rec
