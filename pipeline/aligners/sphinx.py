"""Forced alignment with PocketSphinx 5: the transcript's words as a linear grammar with optional
silences, decoded against the bundled US-English acoustic model; then a second pass for phone times.

Words the CMU dictionary lacks get a pronunciation from eSpeak NG's letter-to-sound rules, its IPA
mapped to the model's ARPABET phones (below: no maintained library maps IPA to ARPABET, and the
table is small). A search that finds no path through the words (PocketSphinx's "Final result does
not match the grammar") is tried again with wider beams before the utterance fails.

A transcript that is not what is said mostly finds no path at all (43 of 60 demo utterances given
another one's text); when it does, squeezed and stretched, absolute acoustic scores differ too much
between voices to tell (correct transcripts score -22 to -49 per frame on the demo). So a
low-scoring alignment is compared with a free phone recognition of the same audio, forced-aligned
the same way: correct transcripts score -6 to +39 around it (60 demo utterances), a different text
far below it is refused. A text differing in a word or two (the demo's templates) can align: this
check catches transcripts that belong to another recording, not typos.

Both refusals (no path, score far below the free phones') also hit correct transcripts of voices the
model hears badly (3 or 4 of 120 demo utterances at corpus seed 1, 7 of 1,440 strongly acted RAVDESS
clips). So a refusal asks for a second opinion where one is at hand: Whisper's forced alignment of
the same words (the stage's ASR model). Whisper scoring the words well confirms the transcript; then
the alignment found is kept, or, where there was no path, the search runs once more with the widest
beams (which would accept almost any text, hence only after confirmation), and Whisper's own word
times are the last resort. The entry's `source` says which happened.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from msf.pipeline.aligners import Aligner
from msf.pipeline.corpora.alignment_files import ARPABET_VOWELS, WordTimes
from msf.pipeline.backends.model_loading import ModelUnavailable
from msf.pipeline.stage import UtteranceError

# IPA (as eSpeak NG writes it for English voices) -> ARPABET; longest match first.
IPA_TO_ARPABET = {
    "aɪə": "AY ER", "aɪ": "AY", "aʊ": "AW", "ɔɪ": "OY", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɪə": "IH R",
    "eə": "EH R", "ʊə": "UH R", "iː": "IY", "uː": "UW", "ɑː": "AA", "ɔː": "AO", "ɜː": "ER", "tʃ": "CH",
    "dʒ": "JH", "oː": "AO", "i": "IY", "ɪ": "IH", "ᵻ": "IH", "e": "EH", "ɛ": "EH", "æ": "AE", "a": "AE",
    "ɑ": "AA", "ɒ": "AA", "ɔ": "AO", "ʊ": "UH", "u": "UW", "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɚ": "ER",
    "ɝ": "ER", "o": "OW", "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G", "f": "F",
    "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N",
    "ŋ": "NG", "l": "L", "ɫ": "L", "ɹ": "R", "r": "R", "w": "W", "j": "Y", "ɾ": "T", "ʔ": "T", "x": "K",
}
PHONES = ARPABET_VOWELS | frozenset("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
NON_WORDS = ("<s>", "</s>", "<sil>", "[NOISE]", "+NSN+", "+SPN+")


def ipa_to_arpabet(ipa: str) -> list[str]:
    """ARPABET phones for eSpeak's IPA; stress, length and syllable marks dropped, unknown symbols skipped."""
    text = "".join(ch for ch in ipa if ch not in "ˈˌ.‿̩͡ ")
    phones: list[str] = []
    i = 0
    while i < len(text):
        for n in (3, 2, 1):
            if text[i : i + n] in IPA_TO_ARPABET:
                phones += IPA_TO_ARPABET[text[i : i + n]].split()
                i += n
                break
        else:
            i += 1
    return phones


@dataclass(frozen=True)
class Beams:
    beam: float
    wbeam: float
    pbeam: float


DEFAULT_BEAMS = Beams(1e-48, 7e-29, 1e-48)  # PocketSphinx's own defaults
# Wider still (1e-160) aligned two more correct demo transcripts, but also aligned unrelated text
# with a score close to the free phones': a path found that far out is not evidence, so those beams
# are tried only for a transcript the second opinion has confirmed.
WIDE_BEAMS = Beams(1e-80, 1e-60, 1e-80)
WIDEST_BEAMS = Beams(1e-160, 1e-120, 1e-160)


def model_files() -> tuple[str, str]:
    """The acoustic model directory and dictionary shipped inside the pocketsphinx wheel."""
    try:
        import pocketsphinx
    except ImportError as e:
        raise ModelUnavailable(f"align.backend=sphinx needs the package pocketsphinx ({e}); "
                               "`pip install pocketsphinx` (it is a dependency of msf)") from None
    root = os.path.join(pocketsphinx.get_model_path(), "en-us")
    return os.path.join(root, "en-us"), os.path.join(root, "cmudict-en-us.dict")


class SphinxAligner:
    # Alignments scoring at least this per frame are accepted without the free-phone comparison
    # (every demo alignment scoring above it matched its transcript).
    PLAINLY_GOOD = -35.0

    # Whisper's mean word probability that confirms a refused transcript. Demo corpus, tiny.en: the
    # refused correct transcripts 0.41-0.65 (all correct ones 0.32-0.89); another utterance's text,
    # which mostly shares the template's words, 0.04-0.55 (median 0.12). Needed only after a refusal.
    # The overlap costs a voice both models hear badly: at corpus seed 1, 1 of 300 correct transcripts
    # (fast, high-pitched; tiny.en's ASR hears "the hotel once this door is sealed...") scores 0.32
    # and stays refused, its failure recorded; lowering this would confirm other recordings' texts.
    CONFIRMED = 0.4

    def __init__(self, language: str, max_score_gap: float,
                 second_opinion: Callable[[], Aligner] | None = None):
        if language != "en":
            raise ModelUnavailable(
                f"align.backend=sphinx aligns English only (the acoustic model bundled with pocketsphinx is "
                f"US English) and align.language={language!r}; use align.backend=whisper or ctc with a "
                "model for that language")
        self.hmm, self.dict = model_files()
        self.max_score_gap = max_score_gap
        self._second_opinion = second_opinion  # made when first needed (it loads a Whisper model)
        self._decoders: dict[Beams, object] = {}
        self._phone_loop = None
        self._references = 0
        self.added: dict[str, list[str]] = {}  # out-of-dictionary words and the pronunciation given them

    def _decoder(self, beams: Beams):  # type: ignore[no-untyped-def]
        if beams not in self._decoders:
            from pocketsphinx import Decoder

            # bestpath off: with it the phone pass fails to reach the final state on many utterances
            # (a one-frame </s>; pocketsphinx issue #339)
            d = Decoder(hmm=self.hmm, dict=self.dict, lm=None, loglevel="FATAL", bestpath=False,
                        beam=beams.beam, wbeam=beams.wbeam, pbeam=beams.pbeam)
            for word, phones in self.added.items():
                d.add_word(word, " ".join(phones), True)
            self._decoders[beams] = d
        return self._decoders[beams]

    def pronunciation(self, word: str) -> list[str]:
        """The dictionary's phones for a word, or eSpeak NG's, added to every decoder."""
        d = self._decoder(DEFAULT_BEAMS)
        known = d.lookup_word(word)
        if known:
            return known.split()
        if word not in self.added:
            from msf.pipeline.corpora.espeak import espeak

            phones = ipa_to_arpabet(espeak().phonemes(word))
            if not phones:
                raise UtteranceError(f"no pronunciation for {word!r}: not in the CMU dictionary, and eSpeak NG's "
                                     "letter-to-sound rules gave no English phones for it")
            self.added[word] = phones
            for dec in self._decoders.values():
                dec.add_word(word, " ".join(phones), True)
        return self.added[word]

    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        for w in words:
            self.pronunciation(w)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
        for beams in (DEFAULT_BEAMS, WIDE_BEAMS):
            found = self._search(self._decoder(beams), pcm, words)
            if found is not None:
                timed, per_frame = found
                if per_frame < self.PLAINLY_GOOD:
                    reference = self._free_phones_score(pcm)
                    if reference is not None and per_frame < reference - self.max_score_gap:
                        return self._confirmed(audio, pcm, words, timed, (
                            f"its words align with a score of {per_frame:.1f} per 10 ms frame, "
                            f"{reference - per_frame:.1f} below a free phone recognition of the same audio "
                            f"(align.sphinx_max_score_gap={self.max_score_gap:g})"))
                return timed
        return self._confirmed(audio, pcm, words, None, (
            f"PocketSphinx found no path through its {len(words)} words, with default or with wide beams "
            f"({WIDE_BEAMS.beam:g}) (another recording's text, missing or extra words, or not English speech)"))

    def _confirmed(self, audio: np.ndarray, pcm: bytes, words: list[str], timed: WordTimes | None,
                   doubt: str) -> WordTimes:
        """The refused alignment (or a new one) if Whisper confirms the transcript; else the refusal."""
        refusal = f"the transcript does not match the audio: {doubt}"
        if self._second_opinion is None:
            raise UtteranceError(refusal)
        try:
            whisper = self._second_opinion()
        except ModelUnavailable as e:
            raise UtteranceError(f"{refusal}; no second opinion: {e}") from None
        try:
            heard = whisper.align(audio, words)
        except UtteranceError as e:
            raise UtteranceError(f"{refusal}; Whisper's forced alignment, asked for a second opinion: {e}") from None
        agreement = float(np.mean(heard.score))
        if agreement < self.CONFIRMED:
            raise UtteranceError(f"{refusal}; Whisper's forced alignment agrees: mean word probability "
                                 f"{agreement:.2f} < {self.CONFIRMED:g}")
        if timed is not None:
            timed.source = "sphinx:whisper-confirmed"
            return timed
        found = self._search(self._decoder(WIDEST_BEAMS), pcm, words)
        if found is not None:
            found[0].source = "sphinx:whisper-confirmed-widest-beams"
            return found[0]
        heard.source = "whisper:forced(sphinx found no path)"
        return heard

    def _free_phones_score(self, pcm: bytes) -> float | None:
        """The per-frame score of the phones a free phone recognition hears, forced-aligned as one word."""
        if self._phone_loop is None:
            import pocketsphinx
            from pocketsphinx import Decoder

            lm = os.path.join(pocketsphinx.get_model_path(), "en-us", "en-us-phone.lm.bin")
            self._phone_loop = Decoder(hmm=self.hmm, allphone=lm, loglevel="FATAL", bestpath=False)
        loop = self._phone_loop
        try:
            loop.start_utt()
            loop.process_raw(pcm, full_utt=True)
            loop.end_utt()
            phones = [s.word for s in loop.seg() if s.word in PHONES]
        except RuntimeError:
            return None
        if not phones:
            return None
        self._references += 1
        name = f"__free_phones_{self._references}"  # a dictionary word cannot be redefined
        d = self._decoder(DEFAULT_BEAMS)
        d.add_word(name, " ".join(phones), True)
        found = self._search(d, pcm, [name])
        return None if found is None else found[1]

    def _search(self, d, pcm: bytes, words: list[str]) -> tuple[WordTimes, float] | None:  # type: ignore[no-untyped-def]
        try:
            d.set_align_text(" ".join(words))
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if d.hyp() is None:
                return None
            d.set_alignment()  # second pass: phone and state times within the words found
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            alignment = d.get_alignment()
        except RuntimeError:  # PocketSphinx's way of saying the search ended outside the grammar
            return None
        if alignment is None:
            return None
        out = WordTimes([], [], [], [], "sphinx")
        frames = 0
        total = 0.0
        for seg in alignment:
            name = seg.name.split("(")[0]
            # the score covers silences and fillers too: speech the words leave out scores badly there
            frames += seg.duration
            total += sum(ph.score for ph in seg)
            if name in NON_WORDS:
                continue
            i = len(out.words)
            scores = []
            for ph in seg:
                out.phones.append(ph.name)
                out.phone_start.append(ph.start / 100)
                out.phone_end.append((ph.start + ph.duration) / 100)
                out.phone_word.append(i)
                scores.append(ph.score)
            out.words.append(name)
            out.start.append(seg.start / 100)
            out.end.append((seg.start + seg.duration) / 100)
            out.score.append(float(sum(scores)) / max(1, seg.duration))
        if out.words != words:
            return None
        return out, total / max(1, frames)
