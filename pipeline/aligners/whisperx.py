"""The whisperX package's own aligner, only when it is installed (an optional extra)."""

from __future__ import annotations

import numpy as np

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.corpora.alignment_files import WordTimes, clean_word
from msf.pipeline.backends.device import require_device
from msf.pipeline.backends.model_loading import ModelUnavailable
from msf.pipeline.stage import UtteranceError


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
        require_device(device, "align.device")
        try:
            self.model, self.meta = whisperx.load_align_model(language_code=language, device=device)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"whisperx could not load its alignment model ({type(e).__name__}: {e}); "
                                   "use align.backend=ctc with a local wav2vec2-CTC model") from None

    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes:
        seg = [{"text": " ".join(words), "start": 0.0, "end": len(audio) / TARGET_SR}]
        res = self.whisperx.align(seg, self.model, self.meta, audio, self.device)
        ws = [w for w in res.get("word_segments", []) if clean_word(w.get("word", ""))]
        if [clean_word(w["word"]) for w in ws] != words or any("start" not in w for w in ws):
            raise UtteranceError("whisperx did not time every reference word")
        return WordTimes(words, [w["start"] for w in ws], [w["end"] for w in ws],
                         [w.get("score", 0.0) for w in ws], "whisperx")
