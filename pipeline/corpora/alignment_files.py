"""Word alignments shipped with corpora: IEMOCAP's `.wdseg`, Praat TextGrids, the demo's truth.jsonl.

They are part of reading a corpus, not of any aligner: `align.backend=provided` only picks the file
an utterance names and turns its words into the stage's record."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PUNCT = ".,;:!?\"'()[]{}«»…-"
# Non-speech markers in corpus transcripts and alignments: IEMOCAP's [LAUGHTER], [BREATHING],
# [GARBAGE], [LIPSMACK] in its transcriptions and ++LAUGHTER++, ++BREATHING++, ++GARBAGE++ in its
# .wdseg files; <s>, </s>, <sil> of Sphinx-style alignments. They are not words: aligning "[LAUGHTER]"
# made it the word "laughter" (phones L AE F T ER), embedded in GS and LES.
MARKER = re.compile(r"\[[^\]]*\]|\+\+[^+\s]*\+\+|<[^>\s]*>")


def strip_markers(text: str) -> str:
    """The text without non-speech markers (MARKER), its spacing collapsed."""
    return " ".join(MARKER.sub(" ", text).split())


def clean_word(token: str) -> str:
    """A transcript token as the aligners and the corpus files compare words: lower case, no punctuation."""
    return token.strip().strip(PUNCT).lower()


def transcript_words(text: str | None) -> list[str]:
    return [clean_word(t) for t in strip_markers(text or "").split() if clean_word(t)]


# The vowels of ARPABET, the phone set of the `align` stage's phones (sphinx's, CMUdict's): a word's
# syllables are its vowel phones.
ARPABET_VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())


@dataclass
class WordTimes:
    """Words with their times in seconds; phones (ARPABET, with the index of their word) where the
    aligner gives them."""

    words: list[str]
    start: list[float]
    end: list[float]
    score: list[float]
    source: str
    phones: list[str] = field(default_factory=list)
    phone_start: list[float] = field(default_factory=list)
    phone_end: list[float] = field(default_factory=list)
    phone_word: list[int] = field(default_factory=list)


class AlignmentFileError(ValueError):
    """A corpus alignment file that is missing, unreadable or has no words."""


def read_wdseg(path: Path) -> WordTimes:
    """IEMOCAP ForcedAlignment: `SFrm EFrm SegAScr Word` in 10 ms frames; silences and markers skipped."""
    words, start, end, score = [], [], [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        w = re.sub(r"\(\d+\)$", "", parts[3])
        if MARKER.fullmatch(w) or not clean_word(w):
            continue
        words.append(clean_word(w))
        start.append(int(parts[0]) / 100)
        end.append((int(parts[1]) + 1) / 100)
        score.append(float(parts[2]))
    return WordTimes(words, start, end, score, "provided:wdseg")


def read_textgrid(path: Path) -> WordTimes:
    """Praat TextGrid: the tier named `words` (else the first interval tier); empty intervals skipped."""
    import parselmouth
    from parselmouth.praat import call

    tg = parselmouth.read(str(path))
    tiers = [call(tg, "Get tier name...", i) for i in range(1, call(tg, "Get number of tiers") + 1)]
    tier = next((i + 1 for i, n in enumerate(tiers) if n.lower() in ("words", "word")), 1)
    words, start, end = [], [], []
    for k in range(1, call(tg, "Get number of intervals...", tier) + 1):
        label = clean_word(strip_markers(call(tg, "Get label of interval...", tier, k)))
        if label and label not in ("sil", "sp"):
            words.append(label)
            start.append(call(tg, "Get start time of interval...", tier, k))
            end.append(call(tg, "Get end time of interval...", tier, k))
    return WordTimes(words, start, end, [1.0] * len(words), "provided:textgrid")


def truth_file(path: str) -> dict[str, list[dict]]:
    """A demo corpus's truth.jsonl: each utterance's spoken words with the synthesiser's times and
    emphasis flags."""
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r["words"] for r in (json.loads(line) for line in f if line.strip())}


@lru_cache(maxsize=8)  # the aligner reads one utterance at a time from the same file
def _truth_cached(path: str) -> dict[str, list[dict]]:
    return truth_file(path)


def read_truth(path: str, utt_id: str) -> WordTimes:
    """The demo corpus's truth.jsonl: the words the synthesiser spoke, with its own word times."""
    words = _truth_cached(path).get(utt_id)
    if words is None:
        raise AlignmentFileError(f"no entry for {utt_id} in {path}")
    return WordTimes([w["word"] for w in words], [w["start"] for w in words], [w["end"] for w in words],
                     [1.0] * len(words), "provided:truth")


def read_provided(extra: dict[str, str], utt_id: str) -> WordTimes:
    """The alignment a corpus gives for one utterance, from its manifest extras."""
    path = extra.get("alignment") or extra.get("wdseg")
    if path:
        p = Path(path)
        if not p.is_file():
            raise AlignmentFileError(f"provided alignment not found: {p}")
        return read_wdseg(p) if p.suffix.lower() == ".wdseg" else read_textgrid(p)
    if "truth" in extra:
        return read_truth(extra["truth"], utt_id)
    raise AlignmentFileError("align.backend=provided but the corpus gives no alignment for this utterance "
                             "(a .wdseg, a TextGrid in an `alignment` column, or the demo truth.jsonl)")
