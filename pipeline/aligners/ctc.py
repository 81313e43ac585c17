"""whisperX's method without whisperX: wav2vec2-CTC character emissions, then the best CTC path of
the reference characters (Viterbi, ctc_viterbi.py), grouped back into words."""

from __future__ import annotations

import numpy as np

from msf.pipeline.audio_io import TARGET_SR, chunk_bounds
from msf.pipeline.backends.device import place
from msf.pipeline.backends.model_loading import OFFLINE_CTC, load_transformers
from msf.pipeline.corpora.alignment_files import WordTimes
from msf.pipeline.stage import UtteranceError

# Emissions of a long file come from windows of CHUNK_S seconds overlapping by OVERLAP_S, each frame
# from the window it is most central in: self-attention over a whole 10-minute file would need
# gigabytes, and the Viterbi path over the joined emissions still aligns the file in one piece.
CHUNK_S = 30.0
OVERLAP_S = 2.0


class CtcAligner:
    """whisperX's method without whisperX: wav2vec2-CTC character emissions, then the best CTC path
    of the reference characters (Viterbi), grouped back into words."""

    def __init__(self, model: str, device: str):
        import transformers

        self.model, source = load_transformers(model, "AutoModelForCTC", "align.ctc_model", offline=OFFLINE_CTC)
        place(self.model, device, "align.device")
        self.device = device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        self.features = transformers.AutoFeatureExtractor.from_pretrained(str(source), local_files_only=True)
        self.vocab = self.tokenizer.get_vocab()
        self.upper = sum(k.isupper() for k in self.vocab) > sum(k.islower() for k in self.vocab)
        self.blank = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.samples_per_frame = int(np.prod(self.model.config.conv_stride))  # type: ignore[attr-defined]

    def emissions(self, audio: np.ndarray) -> np.ndarray:
        """Log-probabilities per frame (frames x vocabulary), window by window for long audio."""
        hop = self.samples_per_frame
        bounds = chunk_bounds(len(audio), int(CHUNK_S * TARGET_SR), int(OVERLAP_S * TARGET_SR), hop)
        if len(bounds) == 1:
            return self._emissions(audio)
        parts = []
        for start, end, keep_from, keep_to in bounds:
            lp = self._emissions(audio[start:end])
            parts.append(lp[-(-(keep_from - start) // hop) : -(-(keep_to - start) // hop)])
        return np.concatenate(parts)

    def _emissions(self, audio: np.ndarray) -> np.ndarray:
        import torch

        x = self.features(audio, sampling_rate=TARGET_SR, return_tensors="pt").input_values.to(self.device)
        with torch.inference_mode():
            logits = self.model(x).logits[0].float()  # type: ignore[operator]
        return torch.log_softmax(logits, dim=-1).cpu().numpy()

    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        from msf.pipeline.backends.ctc_viterbi import token_spans

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
        sec = self.samples_per_frame / TARGET_SR
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
                end[i] = max(start[i], nxt[0] if nxt else len(audio) / TARGET_SR)
        return WordTimes(words, start, end, [float(np.mean(p)) if p else 0.0 for p in probs], "ctc")
