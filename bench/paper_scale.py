"""The paper's run at the paper's scale, costed: MSP-Podcast (about 150,000 utterances, 240 h, 5.8 s on
average) through the default (paper) profile's models at their real sizes, on this machine.

The weights of WavLM-Large, Whisper large-v3 and RoBERTa-Large cannot be had offline, so each is built
from its real configuration with random weights (a forward costs the same):
  acoustic   WavLM-Large (24 layers, 1,024 wide) through msf's acoustic stage encoder
  align      a Whisper of large-v3's shape (32 + 32 layers, 1,280 wide, 128 mel bins), converted to
             CTranslate2 int8 as msf loads it: ASR in Whisper's 30 s window and in the fitted window,
             and forced alignment of a transcript. A random decoder never says "end", so each
             utterance's decoding is capped at TOKENS_PER_S tokens a second of audio (English speech
             runs at about 3 BPE tokens a second; the cap makes the decode cost a trained model's)
  text       a BERT of RoBERTa-Large's shape (24 layers, 1,024 wide) with the bundled MiniLM tokenizer
             (RoBERTa's own vocabulary cannot be had offline; the cost is the architecture's), one
             transcript a row, batches of 32, for GS; LES and ES are the same encoder again
  audio, emphasis, describe (knowledge), extended   the offline profile's stages on the demo corpus,
             timed by msf extract itself (their models are the real ones)
The LLM of `describe` is an endpoint the user names: its cost is requests, not measured here.
Bytes per audio hour from the acoustic stage's size rule (one layer or all 25, float16 or int8) or, for the small records, the demo cache's bytes per audio hour. Then the projection for 240 h.

    python bench/paper_scale.py [--clips 6] [--skip-whisper] [--device-json FILE]

--device-json: a JSON line from bench/device.sh, whose GPU seconds are printed beside the CPU's.
Seconds per audio hour are this machine's (2 cores, no GPU) unless a row says otherwise.
Last stdout line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msf.pipeline.audio_io import TARGET_SR

HOURS = 240.0
UTTERANCES = 150_000
MEAN_S = HOURS * 3600 / UTTERANCES  # 5.76 s
TOKENS_PER_S = 3.0
WAVLM_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   conv_dim=(512,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True)
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                        decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128)
ROBERTA_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def clips(n: int, seconds: float = MEAN_S) -> list[np.ndarray]:
    """Speech-like noise bursts of the corpus's mean length (a model's cost does not read the words)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * TARGET_SR)) / TARGET_SR
    env = np.maximum(0, np.sin(2 * np.pi * 3 * t)) ** 2
    return [(0.3 * env * rng.standard_normal(len(t))).astype(np.float32) for _ in range(n)]


def per_audio_hour(seconds: float, audio_s: float) -> float:
    return seconds * 3600 / audio_s


def wavlm_large(tmp: Path, audios: list[np.ndarray]) -> dict[str, float]:
    import torch
    import transformers as tf

    from msf.pipeline.stages.acoustic import AcousticParams, TransformersEncoder

    d = tmp / "wavlm-large"
    torch.manual_seed(0)
    tf.WavLMModel(tf.WavLMConfig(**WAVLM_LARGE)).save_pretrained(d)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(d)
    out = {}
    for label, layers in (("last", [-1]), ("all", "all")):
        enc = TransformersEncoder(AcousticParams(model=str(d), layers=layers))
        enc.forward(audios[:1])  # warm-up
        t0 = time.perf_counter()
        for a in audios:
            enc.forward([a])
        out[label] = per_audio_hour(time.perf_counter() - t0, sum(len(a) for a in audios) / TARGET_SR)
        del enc
    shutil.rmtree(d)
    return out


def whisper_large(tmp: Path, audios: list[np.ndarray]) -> dict[str, float]:
    """A large-v3-shaped Whisper in CTranslate2 int8 (random weights, tiny.en's tokenizer), then ASR at
    30 s and in the fitted window, and forced alignment in the fitted window, one file a call."""
    import ctranslate2
    import torch
    import transformers as tf
    from faster_whisper import WhisperModel

    from msf.pipeline.backends.model_loading import bundled_tiny_en
    from msf.pipeline.backends.whisper_windows import align_batch, transcribe_batch

    src, ct2 = tmp / "whisper-hf", tmp / "whisper-ct2"
    torch.manual_seed(0)
    tokenizer = tf.WhisperTokenizerFast(tokenizer_file=str(bundled_tiny_en() / "tokenizer.json"))
    cfg = tf.WhisperConfig(vocab_size=len(tokenizer), **WHISPER_LARGE_V3)
    tf.WhisperForConditionalGeneration(cfg).save_pretrained(src)
    tokenizer.save_pretrained(src)
    tf.WhisperFeatureExtractor(feature_size=128).save_pretrained(src)
    ctranslate2.converters.TransformersConverter(str(src), copy_files=["preprocessor_config.json", "tokenizer.json"]
                                                 ).convert(str(ct2), quantization="int8")
    shutil.rmtree(src)
    model = WhisperModel(str(ct2), device="cpu", compute_type="int8")
    audio_s = sum(len(a) for a in audios) / TARGET_SR
    model.max_length = 3 + int(TOKENS_PER_S * MEAN_S)  # the prompt, then a trained model's decode length
    out = {}
    for label, window in (("asr_30s", 30.0), ("asr_fitted", "fitted")):
        t0 = time.perf_counter()
        for a in audios:
            transcribe_batch(model, [a], window, vad=False, fallback=False)
        out[label] = per_audio_hour(time.perf_counter() - t0, audio_s)
    words = [["word"] * int(TOKENS_PER_S * MEAN_S * 0.75)]
    for label, window in (("forced_30s", 30.0), ("forced_fitted", "fitted")):
        t0 = time.perf_counter()
        for a in audios:
            align_batch(model, [a], words, window)
        out[label] = per_audio_hour(time.perf_counter() - t0, audio_s)
    del model
    shutil.rmtree(ct2)
    return out


def roberta_large(tmp: Path) -> float:
    """Seconds per audio hour of GS with a RoBERTa-Large-shaped encoder (one transcript an utterance)."""
    import torch
    import transformers as tf

    from msf.pipeline.backends.model_loading import bundled_minilm
    from msf.pipeline.backends.text_encoder import TextEncoder, TextEncoderParams

    d = tmp / "text-large"
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(**ROBERTA_LARGE)).save_pretrained(d)
    for f in bundled_minilm().iterdir():
        if "token" in f.name or f.name == "vocab.txt" or f.name.startswith("special"):
            shutil.copy(f, d / f.name)
    enc = TextEncoder(TextEncoderParams(model=str(d)), "global.model")
    text = "perhaps well maybe not the concert was awful but the hotel was cheerful and the food was fine"
    enc.embed([text] * 32)
    t0 = time.perf_counter()
    for _ in range(4):
        enc.embed([text] * 32)
    seconds = time.perf_counter() - t0
    shutil.rmtree(d)
    return per_audio_hour(seconds, 4 * 32 * MEAN_S)


def offline_stages(tmp: Path, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds and bytes per audio hour of the offline profile's stages on the demo corpus, as msf
    extract reports them (one worker, so seconds are one core's)."""
    from msf.pipeline.cache.view import CacheView
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.corpora.demo import build_demo_corpus
    from msf.pipeline.run.extraction import Extraction

    corpus = tmp / "demo"
    build_demo_corpus(corpus, n=n, seed=0, progress=False)
    ex = Extraction(MsfConfig(corpus=f"demo:{corpus}", cache=tmp / "cache", profile="offline", workers=1))
    try:
        reports = ex.run(["acoustic", "global", "local", "extended"], progress=False)
    finally:
        ex.close()
    with CacheView.open(tmp / "cache") as view:
        audio_s = sum(float(r["duration"]) for r in view.records("audio").values())
        nbytes = {st: float(sum(e.bytes for e in view.fresh([st])[st].values())) for st in reports}
    return ({st: per_audio_hour(r.seconds, audio_s) for st, r in reports.items()},
            {st: b * 3600 / audio_s for st, b in nbytes.items()})


def acoustic_bytes() -> dict[str, float]:
    """WavLM-Large frames per audio hour: 50 frames a second x layers x (1,024 values x bytes a value, plus
    int8's float32 scale per frame and layer): the acoustic stage's declared_bytes with WavLM-Large's
    config, written out because that config cannot be read offline."""
    out = {}
    for layers, lname in ((1, "1 layer"), (25, "25 layers")):
        for dtype, width in (("float16", 1024 * 2), ("int8", 1024 + 4)):
            out[f"{lname}, {dtype}"] = 3600 * 50.0 * layers * width
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6, help="clips of the mean length per model timing")
    ap.add_argument("--demo-n", type=int, default=40, help="demo utterances for the offline stages")
    ap.add_argument("--skip-whisper", action="store_true", help="leave out the large-v3-shaped Whisper (its "
                    "conversion needs about 10 GB of memory and a few minutes)")
    ap.add_argument("--device-json", type=Path, help="bench/device.sh's JSON line, for the GPU column")
    args = ap.parse_args()
    gpu = json.loads(args.device_json.read_text().strip().splitlines()[-1]) if args.device_json else {}
    tmp = Path(tempfile.mkdtemp(prefix="msf-paper-scale-"))
    audios = clips(args.clips)
    try:
        print("offline stages on the demo corpus ...", file=sys.stderr)
        small_s, small_b = offline_stages(tmp, args.demo_n)
        print("WavLM-Large ...", file=sys.stderr)
        wavlm = wavlm_large(tmp, audios)
        print("RoBERTa-Large-shaped text encoder ...", file=sys.stderr)
        text = roberta_large(tmp)
        whisper = {} if args.skip_whisper else (print("Whisper large-v3-shaped ...", file=sys.stderr),
                                                whisper_large(tmp, audios[:3]))[1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ab = acoustic_bytes()
    # stage, what, seconds per audio hour, bytes per audio hour, the JSON key
    rows: list[tuple[str, str, float | None, float, str]] = [
        ("audio", "decode, validate, content hash", small_s["audio"], small_b["audio"], "audio"),
        ("acoustic", "WavLM-Large, last layer", wavlm["last"], ab["1 layer, float16"], "acoustic_wavlm_last"),
        ("acoustic", "WavLM-Large, all 25 hidden states", wavlm["all"], ab["25 layers, float16"], "acoustic_wavlm_all"),
        ("align", "Whisper large-v3 ASR, 30 s window", whisper.get("asr_30s"), small_b["align"], "align_asr_30s"),
        ("align", "Whisper large-v3 ASR, fitted window", whisper.get("asr_fitted"), small_b["align"], "align_asr_fitted"),
        ("align", "Whisper large-v3 forced alignment, 30 s", whisper.get("forced_30s"), small_b["align"],
         "align_forced_30s"),
        ("align", "Whisper large-v3 forced alignment, fitted", whisper.get("forced_fitted"), small_b["align"],
         "align_forced_fitted"),
        ("emphasis", "parselmouth prosody", small_s["emphasis"], small_b["emphasis"], "emphasis"),
        ("global", "RoBERTa-Large-shaped, one transcript", text, 4 * 1024 * 3600 / MEAN_S, "global"),
        ("local", "the same encoder on the stressed words", text, 4 * 1024 * 3600 / MEAN_S, "local"),
        ("describe", "knowledge describer (an LLM endpoint: 1 request an utterance)", small_s["describe"],
         small_b["describe"], "describe_knowledge"),
        ("extended", "the same encoder on the description", text, 4 * 1024 * 3600 / MEAN_S, "extended"),
    ]
    for key, label in (("gpu_acoustic_fp32_s_per_audio_h", "acoustic"), ("gpu_asr_batched_s_per_audio_h", "align")):
        if key in gpu:
            rows.append((label, f"GPU ({gpu.get('device', 'lent device')}): {key}", gpu[key], 0.0, key))
    print(f"MSP-Podcast: {UTTERANCES:,} utterances, {HOURS:.0f} h (mean {MEAN_S:.2f} s); CPU figures from this "
          "machine (2 cores)")
    print(f"{'stage':9} {'what':58} {'s/audio h':>10} {'240 h: h':>9} {'MB/audio h':>11} {'240 h: TB':>10}")
    result: dict[str, float] = {}
    for stage, what, s, b, key in rows:
        hours = None if s is None else s * HOURS / 3600
        print(f"{stage:9} {what:58} {'-' if s is None else f'{s:10.0f}':>10} "
              f"{'-' if hours is None else f'{hours:9.1f}':>9} {b / 1e6:11.2f} {b * HOURS / 1e12:10.4f}")
        if s is not None:
            result[key if key.startswith("gpu_") else f"{key}_s_per_audio_h"] = round(s, 1)
    print("acoustic storage per audio hour and for 240 h:")
    for label, b in ab.items():
        print(f"  {label:20} {b / 1e9:8.2f} GB/h {b * HOURS / 1e12:8.3f} TB")
        result[f"acoustic_bytes_per_h_{label.replace(', ', '_').replace(' ', '')}"] = b
    chosen = ["audio", "acoustic"] + (["align"] if whisper else []) + ["emphasis", "global", "local", "describe", "extended"]
    # the paper's choices: the last layer in float16, Whisper ASR in the fitted window (its words come
    # timed, so no second alignment), one GS/LES/ES encoder each
    paper = {"audio", "acoustic_wavlm_last", "align_asr_fitted", "emphasis", "global", "local", "describe_knowledge",
             "extended"}
    first = {stage: (s, b) for stage, _, s, b, key in rows if key in paper and stage in chosen and s is not None}
    total_h = sum(s for s, _ in first.values()) * HOURS / 3600
    total_tb = sum(b for _, b in first.values()) * HOURS / 1e12
    print(f"total for 240 h, the paper's choices (last layer float16, fitted Whisper window): {total_h:.0f} CPU hours "
          f"on this machine, {total_tb:.3f} TB")
    result |= {"total_cpu_hours_240h": round(total_h, 1), "total_tb_240h": round(total_tb, 4)}
    if whisper:
        result["whisper_large_asr_fitted_speedup"] = round(whisper["asr_30s"] / whisper["asr_fitted"], 3)
        result["whisper_large_forced_fitted_speedup"] = round(whisper["forced_30s"] / whisper["forced_fitted"], 3)
        result["total_cpu_hours_240h_30s_window"] = round(
            total_h + (whisper["asr_30s"] - whisper["asr_fitted"]) * HOURS / 3600, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
