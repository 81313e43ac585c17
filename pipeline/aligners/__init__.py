"""Word aligners behind one small protocol: `align(audio, words) -> WordTimes` times the given words
in 16 kHz mono audio, or raises UtteranceError saying why it could not. The `align` stage picks one
by `align.backend`; Whisper ASR (whisper.py) supplies the words when an utterance has no transcript."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from msf.pipeline.corpora.alignment_files import WordTimes


class Aligner(Protocol):
    def align(self, audio: np.ndarray, words: list[str]) -> WordTimes: ...
