"""`describe.audio = true`: extended semantics from a model that hears each utterance, against a real
HTTP server on 127.0.0.1 that decodes the WAV in every request and answers from what it hears (its
duration and loudness), as an audio-language model behind an OpenAI-compatible API would."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from chat_server import ChatServer

from msf.pipeline.config import load_config
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.corpus import Utterance
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stage import Item, UtteranceError
from msf.pipeline.stages.describe import DescribeParams, DescribeStage, speech_window


def hearing(wav: bytes) -> tuple[float, float]:
    """What the test's listener hears: seconds and RMS level in dB."""
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    assert sr == 16000 and x.ndim == 1  # 16 kHz mono, as promised
    return len(x) / sr, float(20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-9))


def listener(n: int, prompt: str, audio: bytes | None):  # noqa: ANN201
    assert audio is not None, "a request without audio"
    seconds, db = hearing(audio)
    return ("answer", f"The voice lasts {seconds:.2f} seconds at {db:.1f} dB and sounds engaged.")


def _extraction(corpus: Path, cache: Path, url: str, *extra: str) -> Extraction:
    sets = ["align.backend=provided", f"describe.base_url={url}", "describe.model=hears", "describe.audio=true",
            "describe.timeout_s=2", "describe.max_retries=2", *extra]
    return Extraction(load_config(None, sets, corpus=f"demo:{corpus}", cache=str(cache), workers=1, profile="default"))


def test_every_request_carries_its_utterances_audio_and_a_rerun_asks_nothing(tmp_path: Path) -> None:
    corpus = build_demo_corpus(tmp_path / "corpus", n=6, seed=4, progress=False)
    with ChatServer(listener, hears=True) as server:
        ex = _extraction(corpus, tmp_path / "cache", server.url)
        r = ex.run(["describe"], progress=False)["describe"]
        assert (r.computed, r.failed) == (6, 0), [f.error for f in ex.store.index.failures("describe")]
        assert len(server.requests) == 6
        for _, _, body in server.requests:  # the prompt is the hearing one, with the audio beside it
            parts = body["messages"][-1]["content"]
            assert [p["type"] for p in parts] == ["text", "input_audio"]
            assert parts[1]["input_audio"]["format"] == "wav" and "Listen to the recording" in parts[0]["text"]
        described = ex.view().records("describe")
        for u in ex.corpus.utterances:
            rec = described[u.id]
            seconds = sf.info(u.audio).duration
            assert f"lasts {seconds:.2f} seconds" in rec["text"], (rec["text"], seconds)  # its own audio, whole
            assert rec["audio_s"] == pytest.approx(seconds, abs=1e-3) and not rec["audio_trimmed"]
            assert rec["source"] == "openai:hears"
        ex.close()

        # The same settings again, and again after an upstream change with the same prompts: 0 requests.
        for extra in ((), ("emphasis.min_word_s=0.031",)):
            ex = _extraction(corpus, tmp_path / "cache", server.url, *extra)
            ex.run(["describe"], progress=False)
            ex.close()
        assert len(server.requests) == 6


def test_the_mode_is_in_the_fingerprint_and_text_mode_fingerprints_are_unchanged() -> None:
    text = DescribeStage.fingerprint_params(DescribeParams(base_url="http://127.0.0.1:1/v1", model="m"))
    heard = DescribeStage.fingerprint_params(DescribeParams(base_url="http://127.0.0.1:1/v1", model="m", audio=True))
    assert "audio" not in text and "max_audio_s" not in text  # caches from before audio existed stay fresh
    assert heard["audio"] is True and heard["max_audio_s"] == 30.0 and heard["prompt"] != text["prompt"]


def _item(tmp_path: Path, name: str, wave: np.ndarray, words: list[tuple[str, float, float]],
          transcript: str) -> Item:
    path = tmp_path / f"{name}.wav"
    sf.write(path, wave, 16000, subtype="PCM_16")
    align = {"words": np.array([w for w, _, _ in words]), "start": np.array([s for _, s, _ in words], np.float32),
             "end": np.array([e for _, _, e in words], np.float32)}
    emphasis = {"emphasized": np.zeros(len(words), bool), "rate_ratio": 1.0, "pitch_st": 0.0, "loudness_db": 0.0}
    utt = Utterance(id=name, audio=str(path), speaker="s", transcript=transcript)
    return Item(utt, {"align": align, "emphasis": emphasis})


def _speech(seconds: float, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (amplitude * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
            + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def _stage(tmp_path: Path, url: str, **params: object) -> DescribeStage:
    p = DescribeParams(base_url=url, model="hears", audio=True, timeout_s=1, max_retries=2, **params)  # type: ignore[arg-type]
    stage = DescribeStage(p, workdir=tmp_path / "work")
    stage.setup()
    return stage


def test_same_words_and_delivery_but_other_audio_get_their_own_answers(tmp_path: Path) -> None:
    words = [("well", 0.2, 0.5), ("fine", 0.6, 1.0), ("then", 1.1, 1.4)]
    loud = _item(tmp_path, "loud", _speech(1.6, 0.5, 0), words, "well fine then")
    soft = _item(tmp_path, "soft", _speech(1.6, 0.05, 1), words, "well fine then")
    with ChatServer(listener, hears=True) as server:
        first = _stage(tmp_path, server.url).compute([loud, soft])
        assert len(server.requests) == 2
        prompts = {str(b["messages"][-1]["content"][0]["text"]) for _, _, b in server.requests}
        assert len(prompts) == 1  # the very same prompt: only the audio tells them apart
        assert first[0]["text"] != first[1]["text"]  # type: ignore[index]
        db = sqlite3.connect(tmp_path / "work" / "answers.sqlite")
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2  # both cached
        db.close()
        again = _stage(tmp_path, server.url).compute([soft, loud])  # a new worker, the same answer cache
        assert len(server.requests) == 2
        assert [r["text"] for r in again] == [first[1]["text"], first[0]["text"]]  # type: ignore[index]


def test_long_audio_is_trimmed_to_the_speech_and_the_record_says_so(tmp_path: Path) -> None:
    # 50 s: words from 12 s to 47 s (35 s of speech span), densest from 25 s on
    words = [(f"w{k}", 12.0 + 2 * k, 12.5 + 2 * k) for k in range(6)]  # 12..22.5, sparse
    words += [(f"d{k}", 25.0 + 0.5 * k, 25.4 + 0.5 * k) for k in range(44)]  # 25..46.9, dense
    long = _item(tmp_path, "long", _speech(50.0, 0.3, 2), words, " ".join(w for w, _, _ in words))
    # 40 s with speech only from 5 s to 25 s: the span around the words fits
    mid = _item(tmp_path, "mid", _speech(40.0, 0.3, 3), [("a", 5.0, 5.5), ("b", 24.0, 25.0)], "a b")
    with ChatServer(listener, hears=True) as server:
        recs = _stage(tmp_path, server.url).compute([long, mid])
        heard = sorted(hearing(b64)[0] for b64 in _audio_of(server))
    assert heard == pytest.approx([20.5, 30.0], abs=1e-3)
    r_long, r_mid = recs
    assert r_long["audio_trimmed"] and r_long["audio_s"] == pytest.approx(30.0)  # type: ignore[index]
    # the 30 s window holding the most word time starts at the dense words, not at the first word
    assert r_long["audio_offset_s"] == pytest.approx(speech_window(  # type: ignore[index]
        long.inputs["align"]["start"], long.inputs["align"]["end"], 50.0, 30.0)[0])
    assert 16.0 <= r_long["audio_offset_s"] <= 24.75  # type: ignore[index]
    assert r_mid["audio_trimmed"] and (r_mid["audio_offset_s"], r_mid["audio_s"]) == pytest.approx((4.75, 20.5))  # type: ignore[index]
    assert "lasts 30.00 seconds" in r_long["text"]  # type: ignore[index]


def _audio_of(server: ChatServer) -> list[bytes]:
    from chat_server import text_and_audio

    return [text_and_audio(b["messages"][-1]["content"])[1] for _, _, b in server.requests]  # type: ignore[misc]


def test_endpoint_faults_are_survived_with_audio(tmp_path: Path) -> None:
    """Timeouts, 429 with Retry-After, 5xx, malformed bodies: retried per request, as for text; a request
    that never succeeds fails its utterance alone and caches nothing."""
    words = [("same", 0.2, 0.6), ("words", 0.7, 1.2)]
    amplitudes = {"A": 0.40, "B": 0.20, "C": 0.10, "D": 0.05, "E": 0.025}
    items = [_item(tmp_path, who, _speech(1.4, a, i), words, "same words") for i, (who, a) in enumerate(amplitudes.items())]
    levels = {who: hearing(_wav_of(item))[1] for who, item in zip(amplitudes, items)}
    attempts: dict[str, int] = {}

    def script(n: int, prompt: str, audio: bytes | None):  # noqa: ANN202
        db = hearing(audio)[1]  # type: ignore[arg-type]
        who = min(levels, key=lambda w: abs(levels[w] - db))
        k = attempts[who] = attempts.get(who, 0) + 1
        plan = {"A": [("hang", 3.0)], "B": [("status", 429, {"Retry-After": "1"})],
                "C": [("status", 500, {}), ("status", 503, {})], "D": [("garbage", "<html>not json")],
                "E": [("status", 500, {})] * 10}[who]
        return plan[k - 1] if k <= len(plan) else listener(n, prompt, audio)

    with ChatServer(script, hears=True) as server:
        recs = _stage(tmp_path, server.url).compute(items)
    assert attempts == {"A": 2, "B": 2, "C": 3, "D": 2, "E": 3}
    for who, rec in zip(amplitudes, recs):
        if who == "E":
            assert isinstance(rec, UtteranceError) and "HTTP 500 after 3 attempts" in str(rec)
        else:
            assert f"at {levels[who]:.1f} dB" in rec["text"], (who, rec)  # type: ignore[index]
    db = sqlite3.connect(tmp_path / "work" / "answers.sqlite")
    assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 4  # no failure stored as an answer
    db.close()


def _wav_of(item: Item) -> bytes:
    from msf.pipeline.stages.describe import wav_clip

    return wav_clip(item.waveform, 0.0, len(item.waveform) / 16000)


def test_speech_window() -> None:
    starts, ends = np.array([1.0, 3.0]), np.array([2.0, 4.0])
    assert speech_window(starts, ends, 10.0, 30.0) == (0.0, 10.0)  # fits: all of it
    assert speech_window(starts, ends, 40.0, 30.0) == (0.75, 4.25)  # the words' span, with a margin
    assert speech_window(np.array([]), np.array([]), 40.0, 30.0) == (0.0, 30.0)  # no words: the start
    # two clusters 40 s apart: the window holding more word time wins, and never runs past the end
    s = np.array([1.0, 2.0, 50.0, 51.0, 52.0])
    t0, t1 = speech_window(s, s + 0.8, 60.0, 30.0)
    assert t1 <= 60.0 and t1 - t0 == pytest.approx(30.0) and t0 <= 50.0 - 0.25 + 1e-9
