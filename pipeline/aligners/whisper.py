"""Whisper through faster-whisper: ASR with word timestamps, and forced alignment of a transcript by
the decoder's cross-attention (CTranslate2 Whisper.align), as faster-whisper times its own words."""

from __future__ import annotations

import numpy as np

from msf.pipeline.corpora.alignment_files import WordTimes, clean_word
from msf.pipeline.backends.model_loading import load_whisper
from msf.pipeline.stage import UtteranceError

WHISPER_WINDOW_S = 30.0


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
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        m = self.model
        if len(audio) / 16000 > WHISPER_WINDOW_S:
            raise UtteranceError(f"forced alignment with whisper covers {WHISPER_WINDOW_S:g} s; this file is "
                                 f"{len(audio) / 16000:.1f} s (use align.backend=sphinx or provided)")
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
        return WordTimes(words, [a["start"] for a in timed], [a["end"] for a in timed],
                         [a["probability"] for a in timed], "whisper:forced")
