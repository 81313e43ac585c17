"""`align`: words with start/end/score. Whisper ASR when no transcript is given, forced alignment of the
reference words when one is; or alignments shipped with the corpus (`provided`)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from msf.pipeline.stage import Item, Record, Stage, StageParams, UtteranceError, register
from msf.pipeline.model_loading import BUNDLED_TINY_EN, ModelUnavailable, load_transformers, load_whisper

PUNCT = ".,;:!?\"'()[]{}«»…-"
WHISPER_WINDOW_S = 30.0


def clean_word(token: str) -> str:
    return token.strip().strip(PUNCT).lower()


class AlignParams(StageParams):
    backend: Literal["whisper", "ctc", "provided", "whisperx"] = "whisper"
    model: str = "large-v3"
    # The wav2vec2-CTC model of the `ctc` backend (hub id or local directory); whisperX's English default.
    ctc_model: str = "facebook/wav2vec2-base-960h"
    compute_type: str = "int8"
    language: str = "en"
    device: str = "cpu"
    # Whisper forced alignment: a mean word probability below this means the transcript is not what
    # is said (matching transcripts score about 0.7-0.95 on the demo corpus, unrelated ones 0.03).
    min_score: float = 0.2
    # ASR: skip what Silero VAD (bundled with faster-whisper) hears as non-speech, where Whisper would
    # otherwise hallucinate words ("you") into noise.
    vad: bool = True


def _record(words: list[str], start: list[float], end: list[float], score: list[float], source: str) -> Record:
    if not words:
        raise UtteranceError(f"{source}: no words found")
    return {
        "words": np.asarray(words, dtype=str),
        "start": np.asarray(start, dtype=np.float32),
        "end": np.asarray(end, dtype=np.float32),
        "score": np.asarray(score, dtype=np.float32),
        "transcript": " ".join(words),
        "source": source,
    }


@lru_cache(maxsize=8)
def _truth_file(path: str) -> dict[str, list[dict]]:
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r["words"] for r in (json.loads(line) for line in f if line.strip())}


def read_wdseg(path: Path) -> Record:
    """IEMOCAP ForcedAlignment: `SFrm EFrm SegAScr Word` in 10 ms frames; silences and markers skipped."""
    words, start, end, score = [], [], [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        w = re.sub(r"\(\d+\)$", "", parts[3])
        if w.startswith("<") or not clean_word(w):
            continue
        words.append(clean_word(w))
        start.append(int(parts[0]) / 100)
        end.append((int(parts[1]) + 1) / 100)
        score.append(float(parts[2]))
    return _record(words, start, end, score, "provided:wdseg")


def read_textgrid(path: Path) -> Record:
    """Praat TextGrid: the tier named `words` (else the first interval tier); empty intervals skipped."""
    import parselmouth
    from parselmouth.praat import call

    tg = parselmouth.read(str(path))
    tiers = [call(tg, "Get tier name...", i) for i in range(1, call(tg, "Get number of tiers") + 1)]
    tier = next((i + 1 for i, n in enumerate(tiers) if n.lower() in ("words", "word")), 1)
    words, start, end = [], [], []
    for k in range(1, call(tg, "Get number of intervals...", tier) + 1):
        label = clean_word(call(tg, "Get label of interval...", tier, k))
        if label and label not in ("sil", "sp"):
            words.append(label)
            start.append(call(tg, "Get start time of interval...", tier, k))
            end.append(call(tg, "Get end time of interval...", tier, k))
    return _record(words, start, end, [1.0] * len(words), "provided:textgrid")


def _reference(item: Item) -> list[str]:
    words = [clean_word(t) for t in (item.utt.transcript or "").split() if clean_word(t)]
    if not words:
        raise UtteranceError("this align backend aligns a given transcript, and the utterance has none "
                             "(use align.backend=whisper to transcribe it)")
    return words


class CtcAligner:
    """whisperX's method without whisperX: wav2vec2-CTC character emissions, then the best CTC path
    of the reference characters (Viterbi), grouped back into words."""

    def __init__(self, model: str, device: str):
        import transformers

        self.model, source = load_transformers(model, "AutoModelForCTC", "align.ctc_model", offline=None)
        self.model.to(device)  # type: ignore[attr-defined]
        self.device = device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        self.features = transformers.AutoFeatureExtractor.from_pretrained(str(source), local_files_only=True)
        self.vocab = self.tokenizer.get_vocab()
        self.upper = sum(k.isupper() for k in self.vocab) > sum(k.islower() for k in self.vocab)
        self.blank = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.samples_per_frame = int(np.prod(self.model.config.conv_stride))  # type: ignore[attr-defined]

    def emissions(self, audio: np.ndarray) -> np.ndarray:
        import torch

        x = self.features(audio, sampling_rate=16000, return_tensors="pt").input_values.to(self.device)
        with torch.inference_mode():
            logits = self.model(x).logits[0].float()  # type: ignore[operator]
        return torch.log_softmax(logits, dim=-1).cpu().numpy()

    def align(self, audio: np.ndarray, words: list[str]) -> Record:
        from msf.pipeline.ctc_viterbi import token_spans

        # Characters the model has no token for are skipped (digits, accents); a word left with no
        # characters at all takes the gap between its neighbours, with score 0.
        targets: list[int] = []
        owner: list[int] = []
        for i, w in enumerate(words):
            for ch in (w.upper() if self.upper else w):
                if ch in self.vocab:
                    targets.append(self.vocab[ch])
                    owner.append(i)
        if not targets:
            raise UtteranceError(f"no character of the transcript is in the vocabulary of {self.model.name_or_path}")  # type: ignore[attr-defined]
        lp = self.emissions(audio)
        try:
            spans = token_spans(lp, targets, self.blank)
        except ValueError as e:
            raise UtteranceError(f"CTC alignment failed: {e}") from None
        sec = self.samples_per_frame / 16000
        start = [float("nan")] * len(words)
        end = [float("nan")] * len(words)
        probs: list[list[float]] = [[] for _ in words]
        for sp in spans:
            i = owner[sp.token]
            start[i] = sp.start * sec if np.isnan(start[i]) else start[i]
            end[i] = sp.end * sec
            probs[i].append(sp.score)
        for i in range(len(words)):
            if np.isnan(start[i]):
                start[i] = end[i - 1] if i and not np.isnan(end[i - 1]) else 0.0
                nxt = [s for s in start[i + 1 :] if not np.isnan(s)]
                end[i] = max(start[i], nxt[0] if nxt else len(audio) / 16000)
        return _record(words, start, end, [float(np.mean(p)) if p else 0.0 for p in probs], "ctc")


class WhisperxAligner:
    """The whisperX package's own aligner, only when it is installed (an optional extra)."""

    def __init__(self, language: str, device: str):
        try:
            import whisperx  # type: ignore[import-not-found]
        except ImportError as e:
            raise ModelUnavailable(
                f"align.backend=whisperx needs the optional package whisperx ({e}); install it with "
                "`pip install 'msf[whisperx]'`, or use align.backend=ctc, which runs the same method"
            ) from None
        self.whisperx = whisperx
        self.device = device
        try:
            self.model, self.meta = whisperx.load_align_model(language_code=language, device=device)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"whisperx could not load its alignment model ({type(e).__name__}: {e}); "
                                   "use align.backend=ctc with a local wav2vec2-CTC model") from None

    def align(self, audio: np.ndarray, words: list[str]) -> Record:
        seg = [{"text": " ".join(words), "start": 0.0, "end": len(audio) / 16000}]
        res = self.whisperx.align(seg, self.model, self.meta, audio, self.device)
        ws = [w for w in res.get("word_segments", []) if clean_word(w.get("word", ""))]
        if [clean_word(w["word"]) for w in ws] != words or any("start" not in w for w in ws):
            raise UtteranceError("whisperx did not time every reference word")
        return _record(words, [w["start"] for w in ws], [w["end"] for w in ws],
                       [w.get("score", 0.0) for w in ws], "whisperx")


@register
class AlignStage(Stage):
    name = "align"
    needs = ("audio",)
    version = "1"
    Params = AlignParams
    reads = ("transcript", "extra.truth", "extra.wdseg", "extra.alignment")  # the alignment files by content
    volatile = frozenset({"device"})
    profiles = {"offline": {"model": BUNDLED_TINY_EN}}
    batch_size = 8

    def setup(self) -> None:
        p: AlignParams = self.params  # type: ignore[assignment]
        self._model = None
        if p.backend == "whisper":
            self._model = load_whisper(p.model, p.device, p.compute_type, role="align")
        elif p.backend == "ctc":
            self._ctc = CtcAligner(p.ctc_model, p.device)
        elif p.backend == "whisperx":
            self._whisperx = WhisperxAligner(p.language, p.device)

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        backend = self.params.backend  # type: ignore[attr-defined]
        out: list[Record | Exception] = []
        for item in batch:
            try:
                if backend == "provided":
                    out.append(self._provided(item))
                elif backend in ("ctc", "whisperx"):
                    text = _reference(item)
                    aligner = self._ctc if backend == "ctc" else self._whisperx
                    out.append(aligner.align(item.waveform, text))
                else:
                    out.append(self._whisper(item))
            except UtteranceError as e:
                out.append(e)
        return out

    # -- provided ----------------------------------------------------------------------------
    def _provided(self, item: Item) -> Record:
        extra = item.utt.extra
        path = extra.get("alignment") or extra.get("wdseg")
        if path:
            p = Path(path)
            if not p.is_file():
                raise UtteranceError(f"provided alignment not found: {p}")
            return read_wdseg(p) if p.suffix.lower() == ".wdseg" else read_textgrid(p)
        if "truth" in extra:
            words = _truth_file(extra["truth"]).get(item.utt.id)
            if words is None:
                raise UtteranceError(f"no entry for {item.utt.id} in {extra['truth']}")
            return _record([w["word"] for w in words], [w["start"] for w in words], [w["end"] for w in words],
                           [1.0] * len(words), "provided:truth")
        raise UtteranceError("align.backend=provided but the corpus gives no alignment for this utterance "
                             "(a .wdseg, a TextGrid in an `alignment` column, or the demo truth.jsonl)")

    # -- whisper -----------------------------------------------------------------------------
    def _whisper(self, item: Item) -> Record:
        text = (item.utt.transcript or "").strip()
        if text and any(clean_word(t) for t in text.split()):
            return self._forced(item.waveform, text)
        segments, _ = self._model.transcribe(  # type: ignore[union-attr]
            item.waveform, language=self.params.language, word_timestamps=True, beam_size=5,  # type: ignore[attr-defined]
            condition_on_previous_text=False, vad_filter=self.params.vad,  # type: ignore[attr-defined]
        )
        words = [w for s in segments for w in (s.words or []) if clean_word(w.word)]
        if not words:
            raise UtteranceError("no speech found: the transcriber heard no words (and there is no transcript)")
        return _record([clean_word(w.word) for w in words], [w.start for w in words], [w.end for w in words],
                       [w.probability for w in words], "whisper:asr")

    def _forced(self, audio: np.ndarray, text: str) -> Record:
        """The reference words, timed by the decoder's cross-attention (CTranslate2 Whisper.align),
        as faster-whisper times its own words."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        m = self._model
        if len(audio) / 16000 > WHISPER_WINDOW_S:
            raise UtteranceError(f"forced alignment with whisper covers {WHISPER_WINDOW_S:g} s; this file is "
                                 f"{len(audio) / 16000:.1f} s (use align.backend=provided, or no transcript)")
        features = m.feature_extractor(audio)  # type: ignore[union-attr]
        encoded = m.encode(pad_or_trim(features))  # type: ignore[union-attr]
        tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe",  # type: ignore[union-attr]
                        language=self.params.language)  # type: ignore[attr-defined]
        aligned = m.find_alignment(tok, [tok.encode(" " + text)], encoded, [features.shape[-1]])[0]  # type: ignore[union-attr]
        words = [a for a in aligned if clean_word(a["word"])]
        reference = [clean_word(t) for t in text.split() if clean_word(t)]
        if [clean_word(a["word"]) for a in words] != reference:
            raise UtteranceError("forced alignment split the transcript into different words than the reference")
        score = float(np.mean([a["probability"] for a in words]))
        if score < self.params.min_score:  # type: ignore[attr-defined]
            raise UtteranceError(f"the transcript does not match the audio: mean word probability {score:.3f} "
                                 f"< align.min_score={self.params.min_score:g}")  # type: ignore[attr-defined]
        return _record(reference, [a["start"] for a in words], [a["end"] for a in words],
                       [a["probability"] for a in words], "whisper:forced")
