"""eSpeak NG through ctypes on the library bundled by `espeakng-loader`.

Written by hand because no maintained Python binding exposes the synthesis callback's WORD events
(exact word start samples) on the bundled library; this is only the five calls msf needs.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 0x1
SSML = 0x10
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_MSG_TERMINATED = 0, 1, 5, 6
RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4
PHONEMES_IPA = 0x02


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based byte offset into the input text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # sample index in the output
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class WordEvent:
    text_position: int  # 0-based byte offset of the word in the input
    length: int
    sample: int


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray  # int16 mono
    sample_rate: int
    words: list[WordEvent]
    boundaries: list[int]  # sample index of every word start and clause end, sorted


class Espeak:
    """One per process: the library keeps global state."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        sr = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if sr <= 0:
            raise RuntimeError("eSpeak NG failed to initialise from espeakng-loader's bundled data")
        self.sample_rate = int(sr)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []
        self._cb = _CALLBACK(self._on_audio)  # kept alive: the library holds a raw pointer
        self._lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:  # type: ignore[no-untyped-def]
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            e = events[i]
            self._events.append((e.type, e.text_position, e.length, e.sample))
            i += 1
        return 0

    def synth(self, ssml: str, voice: str, rate: int, pitch: int, pitch_range: int, volume: int) -> Synthesis:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range), (VOLUME, volume)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        self._lib.espeak_ng_SetRandSeed(1)  # breathy variants draw noise from it
        text = ssml.encode("utf-8")
        self._lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | SSML, None, None)
        self._lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        words = [WordEvent(p - 1, ln, s) for t, p, ln, s in self._events if t == EVENT_WORD]
        bounds = sorted({s for t, _, _, s in self._events if t in (EVENT_WORD, EVENT_END)} | {len(samples)})
        return Synthesis(samples, self.sample_rate, words, bounds)

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """The IPA eSpeak NG would speak for `text` (its letter-to-sound rules and exception lists)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        out = []
        while buf.value:  # the call advances the pointer clause by clause
            chunk = self._lib.espeak_TextToPhonemes(ptr, CHARS_UTF8, PHONEMES_IPA)
            if chunk is None:
                break
            out.append(chunk.decode("utf-8"))
        return " ".join(out)


_ENGINE: Espeak | None = None


def espeak() -> Espeak:
    """The process's one engine: the library keeps global state."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
