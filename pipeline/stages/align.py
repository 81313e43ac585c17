"""`align`: the words of an utterance with start/end times (and phones, where the aligner gives them).

With a transcript, the chosen backend times its words (forced alignment). Without one, Whisper ASR
gives the words and their times; a forced-alignment backend (sphinx, ctc, whisperx) then times
those words again, as it would a transcript. `provided` takes the corpus's own alignment files.
The backends live in `msf.pipeline.aligners`, the corpus files' readers in the corpus package."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from msf.pipeline.backends.device import ComputeType, Device, resolve_compute_type
from msf.pipeline.aligners import Aligner
from msf.pipeline.corpora.alignment_files import AlignmentFileError, WordTimes, read_provided, transcript_words
from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN, OFFLINE_CTC, OFFLINE_WHISPER
from msf.pipeline.backends.whisper_windows import WhisperWindow, window_fingerprint
from msf.pipeline.stage import Item, ModelNeed, OutputField, Record, Stage, StageParams, UtteranceError, register


class AlignParams(StageParams):
    backend: Literal["sphinx", "whisper", "ctc", "provided", "whisperx"] = "whisper"
    # Whisper: the ASR model for utterances without a transcript (every backend but `provided`), the
    # forced aligner of backend=whisper, and the second opinion on a transcript sphinx refuses.
    model: str = "large-v3"
    # The wav2vec2-CTC model of the `ctc` backend (hub id or local directory); whisperX's English default.
    ctc_model: str = "facebook/wav2vec2-base-960h"
    compute_type: ComputeType = "auto"  # CTranslate2; auto: int8 on CPU, float16 on CUDA
    # Whisper's window (ASR and whisper forced alignment): "fitted", each utterance in a window fitted
    # to its length (msf.pipeline.backends.whisper_windows; measured in docs/scaling.md), or seconds;
    # 30 is Whisper's own and the fingerprint of before.
    whisper_window: WhisperWindow = "fitted"
    # Files a Whisper call (ASR and forced alignment of utterances that fit a window, grouped by
    # window): 0 = auto, 16 on CUDA, 1 on CPU (where batching gains nothing). With whisper_window=30:
    # faster-whisper's batched pipeline over one file's VAD segments, as before. Part of the
    # fingerprint as it resolves, when it batches.
    asr_batch: int = Field(0, ge=0)
    language: str = "en"
    device: Device = "cpu"
    # Whisper forced alignment: a mean word probability below this means the transcript is not what
    # is said (matching transcripts score about 0.7-0.95 on the demo corpus, unrelated ones 0.03).
    min_score: float = 0.2
    # Sphinx: an alignment scoring more than this per 10 ms frame below a free phone recognition of
    # the same audio means the transcript is not what is said (demo corpus: matching transcripts
    # -6 to +39 around it; another sentence of the same template -32 to +24: near-identical texts align).
    sphinx_max_score_gap: float = 10.0
    # ASR: skip what Silero VAD (bundled with faster-whisper) hears as non-speech, where Whisper would
    # otherwise hallucinate words ("you") into noise.
    vad: bool = True


def alignment_record(t: WordTimes) -> Record:
    """The stage's record: every backend writes the same fields (empty phones where it has none), so
    entries of different backends can share a shard."""
    if not t.words:
        raise UtteranceError(f"{t.source}: no words found")
    return {
        "words": np.asarray(t.words, dtype=str),
        "start": np.asarray(t.start, dtype=np.float32),
        "end": np.asarray(t.end, dtype=np.float32),
        "score": np.asarray(t.score, dtype=np.float32),
        "transcript": " ".join(t.words),
        "source": t.source,
        "phones": np.asarray(t.phones, dtype="<U4") if t.phones else np.zeros(0, "<U4"),
        "phone_start": np.asarray(t.phone_start, dtype=np.float32),
        "phone_end": np.asarray(t.phone_end, dtype=np.float32),
        "phone_word": np.asarray(t.phone_word, dtype=np.int32),
    }


def resolve_asr_batch(asr_batch: int, device: str) -> int:
    return asr_batch or (16 if device.startswith("cuda") else 1)


@register
class AlignStage(Stage):
    name = "align"
    needs = ("audio",)
    version = "2"  # phones in the record
    fields = {"words": OutputField("str", ("W",)), "start": OutputField("float32", ("W",), "seconds"),
              "end": OutputField("float32", ("W",), "seconds"), "score": OutputField("float32", ("W",)),
              "transcript": OutputField("str"), "source": OutputField("str"),
              "phones": OutputField("str", ("P",), "ARPABET; empty without phones"),
              "phone_start": OutputField("float32", ("P",)), "phone_end": OutputField("float32", ("P",)),
              "phone_word": OutputField("int32", ("P",), "the word each phone belongs to")}
    Params = AlignParams
    # the alignment files by content; `nonverbal`: a turn of non-speech markers only (IEMOCAP)
    reads = ("transcript", "extra.truth", "extra.wdseg", "extra.alignment", "extra.nonverbal")
    volatile = frozenset({"device"})
    profiles = {"offline": {"model": BUNDLED_TINY_EN, "backend": "sphinx"}}
    batch_size = 8

    def __init__(self, params: StageParams, workdir: Path | None = None):
        super().__init__(params, workdir)
        self.reads_waveform = params.backend != "provided"  # type: ignore[attr-defined]

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        """The compute type as it resolves on the device: "auto" on a CPU is the int8 of before."""
        p: AlignParams = params  # type: ignore[assignment]
        out = {**super().fingerprint_params(params), "compute_type": resolve_compute_type(p.compute_type, p.device)}
        out.pop("asr_batch")
        out = window_fingerprint(out, runs_whisper=p.backend != "provided")  # `provided` reads files
        batch = resolve_asr_batch(p.asr_batch, p.device)
        # one at a time: the fingerprints of before. Batched words are nearly always the same (a beam
        # can turn on the last bits of a batched matrix product: 3 of 300 demo files), so a batch is its own entry.
        return out if batch == 1 else {**out, "asr_batch": batch}

    def models(self) -> list[ModelNeed]:
        """Whisper always for backend=whisper; for the others only when an utterance has no transcript
        (ASR) or sphinx refuses one (its second opinion), so then it does not stop a run before it starts."""
        p: AlignParams = self.params  # type: ignore[assignment]
        if p.backend == "provided":
            return []
        when = "" if p.backend == "whisper" else "for utterances without a transcript" + (
            " and as sphinx's second opinion" if p.backend == "sphinx" else "")
        out = [ModelNeed("align.model", p.model, "whisper", OFFLINE_WHISPER, when)]
        if p.backend == "ctc":
            out.append(ModelNeed("align.ctc_model", p.ctc_model, "transformers", OFFLINE_CTC))
        return out

    def setup(self) -> None:
        p: AlignParams = self.params  # type: ignore[assignment]
        self._asr = None  # Whisper, loaded when the first utterance without a transcript comes
        self._aligner: Aligner | None = None
        if p.backend == "sphinx":
            from msf.pipeline.aligners.sphinx import SphinxAligner

            # Whisper, the ASR model, also gives the second opinion on a transcript sphinx refuses
            self._aligner = SphinxAligner(p.language, p.sphinx_max_score_gap, second_opinion=self._asr_model)
        elif p.backend == "whisper":
            self._aligner = self._asr = self._whisper()
        elif p.backend == "ctc":
            from msf.pipeline.aligners.ctc import CtcAligner

            self._aligner = CtcAligner(p.ctc_model, p.device)
        elif p.backend == "whisperx":
            from msf.pipeline.aligners.whisperx import WhisperxAligner

            self._aligner = WhisperxAligner(p.language, p.device)

    def _asr_model(self):  # type: ignore[no-untyped-def]
        if self._asr is None:
            self._asr = self._whisper()
        return self._asr

    def _whisper(self):  # type: ignore[no-untyped-def]
        from msf.pipeline.aligners.whisper import WhisperAligner

        p: AlignParams = self.params  # type: ignore[assignment]
        return WhisperAligner(p.model, p.device, resolve_compute_type(p.compute_type, p.device), p.language,
                              p.min_score, p.vad, resolve_asr_batch(p.asr_batch, p.device), p.whisper_window)

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        if self.params.backend == "provided":  # type: ignore[attr-defined]
            return [self._record(lambda item=item: read_provided(item.utt.extra, item.utt.id)) for item in batch]
        assert self._aligner is not None
        words = [transcript_words(item.utt.transcript) for item in batch]
        waves: dict[int, np.ndarray] = {}
        timed: dict[int, WordTimes | UtteranceError] = {}  # what is known before the aligner runs
        for i, item in enumerate(batch):
            try:
                waves[i] = item.waveform
            except Exception as e:  # noqa: BLE001 - one unreadable file fails alone
                timed[i] = UtteranceError(f"cannot read audio: {e}")
        heard: dict[int, WordTimes | UtteranceError] = {}
        asr = [i for i in waves if not words[i] and not batch[i].utt.extra.get("nonverbal")]
        if asr:  # the batch's utterances without a transcript, through Whisper together
            heard = dict(zip(asr, self._asr_model().transcribe_many([waves[i] for i in asr])))
        many = getattr(self._aligner, "align_many", None)
        if many is not None:  # whisper: the transcripts aligned in batches too
            given = [i for i in waves if words[i]]
            timed.update(zip(given, many([waves[i] for i in given], [words[i] for i in given])))
        return [self._record(lambda i=i: self._align(batch[i], words[i], heard.get(i), timed.get(i)))
                for i in range(len(batch))]

    @staticmethod
    def _record(align: Any) -> Record | Exception:
        try:
            return alignment_record(align())
        except UtteranceError as e:
            return e
        except AlignmentFileError as e:
            return UtteranceError(str(e))

    def _align(self, item: Item, words: list[str], heard: WordTimes | UtteranceError | None,
               timed: WordTimes | UtteranceError | None) -> WordTimes:
        """One utterance's words: aligned already (`timed`, a batched aligner), or its transcript aligned
        now, or the words ASR heard (`heard`) aligned by the backend."""
        assert self._aligner is not None
        if isinstance(timed, Exception):
            raise timed
        if timed is not None:
            return timed
        if words:
            return self._aligner.align(item.waveform, words)
        if item.utt.extra.get("nonverbal"):  # not for ASR: Whisper makes up words for laughter
            raise UtteranceError(f"no words to align: the transcript is non-speech only ({item.utt.extra['nonverbal']})")
        assert heard is not None
        if isinstance(heard, Exception):
            raise heard
        if self._aligner is self._asr:
            return heard
        aligned = self._aligner.align(item.waveform, heard.words)
        aligned.source = f"whisper:asr+{aligned.source}"
        return aligned
