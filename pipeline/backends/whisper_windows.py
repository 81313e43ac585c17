"""Whisper windows shorter than 30 s, and utterances decoded several at a time.

Whisper was trained on 30 s windows and faster-whisper pads every segment to one (its
`transcribe(chunk_length=...)` still pads to 3,000 mel frames), so a 4 s utterance pays for 30 s of
encoder and of cross-attention at every decoder step. CTranslate2's Whisper takes shorter inputs;
what a shorter window costs in words was measured (bench/whisper_window.py, docs/scaling.md): the
window is chosen per utterance from a grid by `fitted_window_s`. The encoder's output frames depend on
the window (self-attention sees the padding), so the window is part of every fingerprint it touches.

faster-whisper batches one file's VAD segments, not separate files; `transcribe_batch` batches
files: utterances of one window length are encoded and beam-decoded as one batch (the GPU path),
their words timed by cross-attention (CTranslate2 `Whisper.align`) in the same batch."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Sequence, Union

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from msf.pipeline.audio_io import TARGET_SR

FULL_WINDOW_S = 30.0
MEL_FRAMES_PER_S = 100  # faster-whisper's hop of 160 samples at 16 kHz
# The fitted window: the audio's length times FIT_RATIO, rounded up to GRID_S, never under MIN_S.
# bench/whisper_window.py measured the choices on the demo corpus and real speech (docs/scaling.md).
FIT_RATIO = 2.0
MIN_S = 10.0
GRID_S = 5.0
# Decoding stops after this many tokens per second of speech (plus LOOP_SLACK): English runs at 2-4
# tokens a second with timestamps, so only a runaway loop ("no no no ...") reaches it, which Whisper
# would otherwise decode to its 448-token limit, five hypotheses per fallback temperature.
TOKENS_PER_S_MAX = 12.0
LOOP_SLACK = 20

# The `whisper_window` setting of the stages that run Whisper: "fitted", or a fixed window in seconds.
WhisperWindow = Union[Literal["fitted"], Annotated[float, Field(gt=0, le=FULL_WINDOW_S)]]


def is_full_window(window: WhisperWindow) -> bool:
    """Whisper's own 30 s window: what msf ran before the window was a setting."""
    return window != "fitted" and float(window) == FULL_WINDOW_S


def fitted_window_s(duration_s: float, window: WhisperWindow = "fitted") -> float:
    """The window an utterance of this length is encoded in: `window` seconds when it is a number
    (30 is Whisper's own), else the fitted rule; never past 30 s nor shorter than the audio."""
    chosen = float(window) if window != "fitted" else max(MIN_S, math.ceil(duration_s * FIT_RATIO / GRID_S) * GRID_S)
    return float(min(FULL_WINDOW_S, max(chosen, math.ceil(duration_s))))


def window_fingerprint(params: dict[str, Any], runs_whisper: bool = True) -> dict[str, Any]:
    """Fingerprint parameters with Whisper's own 30 s window leaving no trace, so entries made before
    the window was a setting stay fresh under `whisper_window=30`, and none where the stage's backend
    never runs Whisper; any other window (the fitted default included) is part of the fingerprint: the
    encoder hears a different input."""
    if not runs_whisper or is_full_window(params["whisper_window"]):
        return {k: v for k, v in params.items() if k != "whisper_window"}
    return params


def group_by_window(clips: Sequence[np.ndarray], window: WhisperWindow) -> dict[float, list[int]]:
    """Positions of the clips by the window each is encoded in, shortest window first: one encoder call
    per window takes them all (the stack must share a shape)."""
    groups: dict[float, list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(fitted_window_s(len(clip) / TARGET_SR, window), []).append(i)
    return dict(sorted(groups.items()))


def tokenizer(model: Any, language: str) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)


def window_frames(window_s: float) -> int:
    return int(round(window_s * MEL_FRAMES_PER_S))


def padded_features(model: Any, audio: np.ndarray, window_s: float) -> tuple[np.ndarray, int]:
    """(log-mel features padded or cut to the window, frames of audio content in it: those the
    extractor gives, its 160 samples of end padding included, as faster-whisper counts them)."""
    from faster_whisper.audio import pad_or_trim

    features = model.feature_extractor(audio)
    return pad_or_trim(features, window_frames(window_s)), min(features.shape[-1], window_frames(window_s))


def speech_span(audio: np.ndarray) -> tuple[int, int] | None:
    """Samples from the first to the last speech Silero VAD (bundled with faster-whisper) hears in the
    audio, or None when it hears none: ASR then has nothing to hallucinate words into."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(audio, VadOptions())
    return (spans[0]["start"], spans[-1]["end"]) if spans else None


def decoding_options(tok: Any) -> Any:
    """faster-whisper's own defaults for `transcribe` as msf calls it (beam 5, no conditioning on
    previous text, temperature fallback on repetitive or improbable text, its non-speech tokens
    suppressed), so the windowed decoder decodes as the 30 s one does."""
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    return TranscriptionOptions(
        beam_size=5, best_of=5, patience=1.0, length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
        log_prob_threshold=-1.0, no_speech_threshold=0.6, compression_ratio_threshold=2.4,
        condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
        temperatures=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], initial_prompt=None, prefix=None, suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tok, [-1]), without_timestamps=False, max_initial_timestamp=1.0, word_timestamps=True,
        prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、", multilingual=False,
        max_new_tokens=None, clip_timestamps="0", hallucination_silence_threshold=None, hotwords=None)


def transcribe_batch(model: Any, audios: Sequence[np.ndarray], window: WhisperWindow, vad: bool = True,
                     language: str = "en", fallback: bool = True) -> list[list[dict] | None]:
    """Words (dicts: word, start, end, probability; seconds in the file) of each utterance, None where
    VAD heard no speech or Whisper heard silence. Every utterance must fit its window (callers send
    longer files to faster-whisper's own long-form loop). Utterances are grouped by window and each
    group encoded, beam-decoded and aligned as one batch; one whose text is too repetitive or
    improbable is decoded again alone with faster-whisper's temperature fallback, as `transcribe` does.
    On a GPU the batch is the speed-up; on a CPU one at a time is as fast (the caller chooses).
    `fallback=False`: beam search only (the benches' random-weight models, whose text always fails the
    thresholds a trained model's rarely does)."""
    from faster_whisper.transcribe import get_compression_ratio

    tok = tokenizer(model, language)
    options = decoding_options(tok)
    out: list[list[dict] | None] = [None] * len(audios)
    clips: list[tuple[int, np.ndarray, float]] = []  # (position, speech span, its start in seconds)
    for i, audio in enumerate(audios):
        span = speech_span(audio) if vad else (0, len(audio))
        if span is not None:
            clips.append((i, audio[span[0] : span[1]], span[0] / TARGET_SR))
    prompt = model.get_prompt(tok, previous_tokens=[], without_timestamps=False)
    for window_s, members in group_by_window([clip for _, clip, _ in clips], window).items():
        group = [clips[k] for k in members]
        feats, contents = zip(*(padded_features(model, clip, window_s) for _, clip, _ in group))
        encoded = model.encode(np.stack(feats))
        caps = [LOOP_SLACK + int(TOKENS_PER_S_MAX * len(clip) / TARGET_SR) for _, clip, _ in group]
        results = model.model.generate(
            encoded, [list(prompt) for _ in group], beam_size=options.beam_size, patience=options.patience,
            length_penalty=options.length_penalty, max_length=min(model.max_length, len(prompt) + max(caps)),
            return_scores=True,
            return_no_speech_prob=True, suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            max_initial_timestamp_index=int(round(options.max_initial_timestamp / model.time_precision)))
        texts: list[list[int]] = []
        for k, r in enumerate(results):
            tokens, no_speech = r.sequences_ids[0], r.no_speech_prob
            avg_logprob = r.scores[0] * len(tokens) ** options.length_penalty / (len(tokens) + 1)
            silent = no_speech > options.no_speech_threshold and avg_logprob < options.log_prob_threshold
            if fallback and not silent and (avg_logprob < options.log_prob_threshold or get_compression_ratio(
                    tok.decode([t for t in tokens if t < tok.eot]).strip()) > options.compression_ratio_threshold):
                import ctranslate2

                ctranslate2.set_random_seed(0)  # the fallback samples: seeded, a file's words depend on it alone
                alone = model.encode(feats[k][None])
                capped = dataclasses.replace(options, max_new_tokens=min(caps[k], model.max_length - len(prompt)))
                result, avg_logprob, _, _ = model.generate_with_fallback(alone, list(prompt), tok, capped)
                tokens, no_speech = result.sequences_ids[0], result.no_speech_prob
            # faster-whisper's rule on the decode it keeps: probably no speech, and no confident text either
            silent = no_speech > options.no_speech_threshold and avg_logprob <= options.log_prob_threshold
            texts.append([] if silent else [t for t in tokens if t < tok.eot])
        aligned = model.find_alignment(tok, texts, encoded, list(contents))
        for (i, _, offset), words in zip(group, aligned):
            out[i] = [{"word": w["word"], "start": round(offset + float(w["start"]), 3),
                       "end": round(offset + float(w["end"]), 3), "probability": float(w["probability"])}
                      for w in words] or None
    return out


def align_batch(model: Any, audios: Sequence[np.ndarray], words: Sequence[list[str]], window: WhisperWindow,
                language: str = "en") -> list[list[dict]]:
    """Forced alignment of each utterance's words (the decoder's cross-attention, CTranslate2
    `Whisper.align`, as faster-whisper times its own words), utterances of one window in one batch.
    Returns faster-whisper's word dicts (word, start, end, probability) per utterance; each must fit
    its window."""
    tok = tokenizer(model, language)
    out: list[list[dict]] = [[] for _ in audios]
    for window_s, idx in group_by_window(audios, window).items():
        feats, contents = zip(*(padded_features(model, audios[i], window_s) for i in idx))
        encoded = model.encode(np.stack(feats))
        tokens = [tok.encode(" " + " ".join(words[i])) for i in idx]
        for i, aligned in zip(idx, model.find_alignment(tok, tokens, encoded, list(contents))):
            out[i] = aligned
    return out
