"""Whisper through faster-whisper and CTranslate2: ASR with word timestamps, and forced alignment of a
transcript by the decoder's cross-attention (CTranslate2 Whisper.align), as faster-whisper times its
own words. Utterances that fit a window are encoded in the window `whisper_window` gives them (the
fitted default, or a fixed length; msf.pipeline.backends.whisper_windows) and, `batch` at a time,
decoded and aligned together; longer files go through faster-whisper's long-form loop in 30 s windows."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Sequence

import numpy as np

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.backends.model_loading import load_whisper
from msf.pipeline.backends.whisper_windows import (FULL_WINDOW_S, WhisperWindow, align_batch, is_full_window,
                                                   transcribe_batch)
from msf.pipeline.corpora.alignment_files import WordTimes, clean_word
from msf.pipeline.stage import UtteranceError

SEGMENT_S = 25.0  # a long file's segments: under the window, with room for the margins
MARGIN_S = 0.3  # audio kept either side of a segment's anchors
NO_SPEECH = "no speech found: the transcriber heard no words (and there is no transcript)"


class WhisperAligner:
    def __init__(self, model: str, device: str, compute_type: str, language: str, min_score: float, vad: bool,
                 asr_batch: int = 1, window: WhisperWindow = FULL_WINDOW_S):
        self.model = load_whisper(model, device, compute_type, role="align")
        self.language = language
        self.min_score = min_score
        self.vad = vad
        self.asr_batch = asr_batch
        self.window = window
        # Whisper's own 30 s window: faster-whisper's transcribe, as msf ran it before the window was a setting
        self.legacy_asr = is_full_window(window)

    def transcribe(self, audio: np.ndarray) -> WordTimes:
        heard = self.transcribe_many([audio])[0]
        if isinstance(heard, Exception):
            raise heard
        return heard

    def transcribe_many(self, audios: Sequence[np.ndarray]) -> list[WordTimes | UtteranceError]:
        """ASR of several utterances: those that fit a window `asr_batch` files a call (grouped by window),
        longer ones (and all of them under the 30 s setting) one by one through faster-whisper."""
        out: list[WordTimes | UtteranceError] = [UtteranceError(NO_SPEECH)] * len(audios)
        batches, longer = self._batches(audios, windowed=not self.legacy_asr)
        for idx in batches:
            for i, words in zip(idx, transcribe_batch(self.model, [audios[i] for i in idx], self.window,
                                                      vad=self.vad, language=self.language)):
                out[i] = self._heard(words or [])
        for i in longer:
            out[i] = self._heard(self._long_form(audios[i]))
        return out

    def _batches(self, audios: Sequence[np.ndarray], windowed: bool = True) -> tuple[list[list[int]], list[int]]:
        """(positions of the files that fit a window, shortest first, `asr_batch` a call, so a call holds
        one window where it can; positions of the others, for the long-form paths)."""
        fit = sorted((i for i, a in enumerate(audios) if windowed and len(a) / TARGET_SR <= FULL_WINDOW_S),
                     key=lambda i: len(audios[i]))
        step = max(1, self.asr_batch)
        return [fit[s : s + step] for s in range(0, len(fit), step)], sorted(set(range(len(audios))) - set(fit))

    def _long_form(self, audio: np.ndarray) -> list[dict]:
        if self.legacy_asr and self.asr_batch > 1:  # the speech segments VAD finds, decoded `asr_batch` at a time
            from faster_whisper import BatchedInferencePipeline

            segments, _ = BatchedInferencePipeline(self.model).transcribe(
                audio, language=self.language, word_timestamps=True, beam_size=5, batch_size=self.asr_batch,
                vad_filter=True)
        else:
            segments, _ = self.model.transcribe(
                audio, language=self.language, word_timestamps=True, beam_size=5,
                condition_on_previous_text=False, vad_filter=self.vad,
            )
        return [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                for s in segments for w in (s.words or [])]

    @staticmethod
    def _heard(words: list[dict]) -> WordTimes | UtteranceError:
        words = [w for w in words if clean_word(w["word"])]
        if not words:
            return UtteranceError(NO_SPEECH)
        return WordTimes([clean_word(w["word"]) for w in words], [w["start"] for w in words],
                         [w["end"] for w in words], [w["probability"] for w in words], "whisper:asr")

    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        timed = self.align_many([audio], [words])[0]
        if isinstance(timed, Exception):
            raise timed
        return timed

    def align_many(self, audios: Sequence[np.ndarray], words: Sequence[list[str]]) -> list[WordTimes | UtteranceError]:
        """Forced alignment of each transcript: files that fit Whisper's window in batches of `asr_batch`;
        a longer file by segments (`_segments`)."""
        out: list[WordTimes | UtteranceError] = [UtteranceError("not aligned")] * len(audios)
        batches, longer = self._batches(audios)
        for idx in batches:
            aligned = align_batch(self.model, [audios[i] for i in idx], [words[i] for i in idx], self.window,
                                  self.language)
            for i, a in zip(idx, aligned):
                out[i] = self._forced(a, words[i])
        for i in longer:
            try:
                out[i] = self._align_long(audios[i], words[i])
            except UtteranceError as e:
                out[i] = e
        return out

    def _align_long(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        parts = []
        for a, b, t0, t1 in self._segments(audio, words):
            clip = audio[int(t0 * TARGET_SR) : int(t1 * TARGET_SR)]
            part = self._forced(align_batch(self.model, [clip], [words[a:b]], self.window, self.language)[0],
                                words[a:b], offset=t0)
            if isinstance(part, Exception):
                raise part
            parts.append(part)
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
            if t1 - t0 > FULL_WINDOW_S:
                raise UtteranceError(f"forced alignment with whisper covers {FULL_WINDOW_S:g} s, and words "
                                     f"{a + 1}-{b} of the transcript span {t1 - t0:.1f} s of {duration:.1f} with no "
                                     "word Whisper heard to cut at (use align.backend=sphinx or ctc)")
            out.append((a, b, t0, t1))
        return out

    def _forced(self, aligned: list[dict], words: list[str], offset: float = 0.0) -> WordTimes | UtteranceError:
        timed = [a for a in aligned if clean_word(a["word"])]
        if [clean_word(a["word"]) for a in timed] != words:
            return UtteranceError("forced alignment split the transcript into different words than the reference")
        score = float(np.mean([a["probability"] for a in timed]))
        if score < self.min_score:
            return UtteranceError(f"the transcript does not match the audio: mean word probability {score:.3f} "
                                  f"< align.min_score={self.min_score:g}")
        return WordTimes(words, [offset + a["start"] for a in timed], [offset + a["end"] for a in timed],
                         [a["probability"] for a in timed], "whisper:forced")
