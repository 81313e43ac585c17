"""Whisper through faster-whisper: ASR with word timestamps, and forced alignment of a transcript by
the decoder's cross-attention (CTranslate2 Whisper.align), as faster-whisper times its own words."""

from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.backends.model_loading import load_whisper
from msf.pipeline.corpora.alignment_files import WordTimes, clean_word
from msf.pipeline.stage import UtteranceError

WHISPER_WINDOW_S = 30.0
SEGMENT_S = 25.0  # a long file's segments: under the window, with room for the margins
MARGIN_S = 0.3  # audio kept either side of a segment's anchors


class WhisperAligner:
    def __init__(self, model: str, device: str, compute_type: str, language: str, min_score: float, vad: bool,
                 asr_batch: int = 1):
        self.model = load_whisper(model, device, compute_type, role="align")
        self.language = language
        self.min_score = min_score
        self.vad = vad
        self.asr_batch = asr_batch

    def transcribe(self, audio: np.ndarray) -> WordTimes:
        if self.asr_batch > 1:  # the speech segments VAD finds, decoded `asr_batch` at a time
            from faster_whisper import BatchedInferencePipeline

            segments, _ = BatchedInferencePipeline(self.model).transcribe(
                audio, language=self.language, word_timestamps=True, beam_size=5, batch_size=self.asr_batch,
                vad_filter=True)
        else:
            segments, _ = self.model.transcribe(
                audio, language=self.language, word_timestamps=True, beam_size=5,
                condition_on_previous_text=False, vad_filter=self.vad,
            )
        words = [w for s in segments for w in (s.words or []) if clean_word(w.word)]
        if not words:
            raise UtteranceError("no speech found: the transcriber heard no words (and there is no transcript)")
        return WordTimes([clean_word(w.word) for w in words], [w.start for w in words], [w.end for w in words],
                         [w.probability for w in words], "whisper:asr")

    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        """Forced alignment of the transcript; a file longer than Whisper's 30 s window is aligned by
        segments (`_segments`)."""
        if len(audio) / TARGET_SR <= WHISPER_WINDOW_S:
            return self._align_window(audio, words)
        parts = [self._align_window(audio[int(t0 * TARGET_SR) : int(t1 * TARGET_SR)], words[a:b], offset=t0)
                 for a, b, t0, t1 in self._segments(audio, words)]
        return WordTimes(words, [t for p in parts for t in p.start], [t for p in parts for t in p.end],
                         [x for p in parts for x in p.score], "whisper:forced-segments")

    def _segments(self, audio: np.ndarray, words: list[str]) -> list[tuple[int, int, float, float]]:
        """(first word, end word, start s, end s) of segments under the window. Whisper's own ASR of the
        file (which runs window by window) gives anchors: reference words it heard too, matched in
        order (difflib); a segment ends before an anchored word whose time would take it past
        SEGMENT_S, and its audio runs from its first to its last anchor, widened by MARGIN_S."""
        duration = len(audio) / TARGET_SR
        heard = self.transcribe(audio)
        anchors: dict[int, tuple[float, float]] = {}  # reference word -> (start, end) heard
        for block in SequenceMatcher(a=words, b=heard.words, autojunk=False).get_matching_blocks():
            for k in range(block.size):
                anchors[block.a + k] = (heard.start[block.b + k], heard.end[block.b + k])
        cuts = [0]  # reference words that start a segment (each one anchored)
        seg_start = 0.0
        for i in sorted(anchors):
            if i > cuts[-1] and anchors[i][1] - seg_start > SEGMENT_S:
                cuts.append(i)
                seg_start = anchors[i][0]
        cuts.append(len(words))
        out = []
        for a, b in zip(cuts, cuts[1:]):
            t0 = 0.0 if a == 0 else max(0.0, anchors[a][0] - MARGIN_S)
            t1 = duration if b == len(words) else min(duration, anchors[b][0] + MARGIN_S)
            if t1 - t0 > WHISPER_WINDOW_S:
                raise UtteranceError(f"forced alignment with whisper covers {WHISPER_WINDOW_S:g} s, and words "
                                     f"{a + 1}-{b} of the transcript span {t1 - t0:.1f} s of {duration:.1f} with no "
                                     "word Whisper heard to cut at (use align.backend=sphinx or ctc)")
            out.append((a, b, t0, t1))
        return out

    def _align_window(self, audio: np.ndarray, words: list[str], offset: float = 0.0) -> WordTimes:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        m = self.model
        features = m.feature_extractor(audio)
        encoded = m.encode(pad_or_trim(features))
        tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=self.language)
        aligned = m.find_alignment(tok, [tok.encode(" " + " ".join(words))], encoded, [features.shape[-1]])[0]
        timed = [a for a in aligned if clean_word(a["word"])]
        if [clean_word(a["word"]) for a in timed] != words:
            raise UtteranceError("forced alignment split the transcript into different words than the reference")
        score = float(np.mean([a["probability"] for a in timed]))
        if score < self.min_score:
            raise UtteranceError(f"the transcript does not match the audio: mean word probability {score:.3f} "
                                 f"< align.min_score={self.min_score:g}")
        return WordTimes(words, [offset + a["start"] for a in timed], [offset + a["end"] for a in timed],
                         [a["probability"] for a in timed], "whisper:forced")
