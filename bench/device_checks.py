"""Every GPU figure msf needs, in one process, each row guarded (a row that cannot run says why and the
others go on). Run through bench/device.sh on a lent GPU machine; `--smoke` runs the same code on a
CPU with tiny shapes (what CI-less checking here can do).

Rows:
  acoustic_fp32 / acoustic_bf16   WavLM-Large (random weights, real shape) forward through msf's
                                  acoustic encoder, batches of 16 clips of 5.8 s: audio seconds per second
  asr_one_file / asr_batched      Whisper ASR in the fitted window, one file a call against 16 files a
                                  call (msf.pipeline.backends.whisper_windows), CTranslate2 on CUDA,
                                  large-v3's shape (random weights, decoding capped at 3 tokens a second of
                                  audio as bench/paper_scale.py does), and whether the words agree
  train_step                      one MSF-SER training step (FM-MoE, all four sources) on WavLM-Large-
                                  shaped batches (32 x 5.8 s x 1,024) in bfloat16 autocast: utterances/s
  predict                         the same model predicting (eval, autocast): utterances per second

    python bench/device_checks.py [--smoke] [--only ROW,...]

Last stdout line: one JSON object of the figures (seconds per audio hour too, for bench/paper_scale.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

SR = 16000
MEAN_S = 5.76


def clips(n: int, seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    env = np.maximum(0, np.sin(2 * np.pi * 3 * t)) ** 2
    return [(0.3 * env * rng.standard_normal(len(t))).astype(np.float32) for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def acoustic(tmp: Path, device: str, smoke: bool) -> dict[str, float]:
    import torch
    import transformers as tf

    from msf.pipeline.stages.acoustic import AcousticParams, TransformersEncoder

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7) if smoke else dict(hidden_size=1024, num_hidden_layers=24,
                                                        num_attention_heads=16, intermediate_size=4096)
    d = tmp / "wavlm"
    torch.manual_seed(0)
    tf.WavLMModel(tf.WavLMConfig(**shape, feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(d)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(d)
    audio = clips(4 if smoke else 16, 1.0 if smoke else MEAN_S)
    out = {}
    for precision in ("float32", "bfloat16"):
        enc = TransformersEncoder(AcousticParams(model=str(d), precision=precision, device=device))
        enc.forward(audio)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(1 if smoke else 5):
            enc.forward(audio)
        sync(device)
        seconds = time.perf_counter() - t0
        total = (1 if smoke else 5) * sum(len(a) for a in audio) / SR
        tag = "fp32" if precision == "float32" else "bf16"
        out[f"acoustic_{tag}_audio_s_per_s"] = total / seconds
        out[f"gpu_acoustic_{tag}_s_per_audio_h"] = seconds * 3600 / total
        del enc
    out["acoustic_bf16_speedup"] = out["acoustic_bf16_audio_s_per_s"] / out["acoustic_fp32_audio_s_per_s"]
    return out


def asr(tmp: Path, device: str, smoke: bool) -> dict[str, float]:
    import ctranslate2
    import torch
    import transformers as tf
    from faster_whisper import WhisperModel

    from msf.pipeline.backends.model_loading import bundled_tiny_en
    from msf.pipeline.backends.whisper_windows import transcribe_batch

    if smoke:
        path = bundled_tiny_en()
    else:  # large-v3's shape, random weights, tiny.en's tokenizer (the weights cannot be had offline)
        src, path = tmp / "whisper-hf", tmp / "whisper-ct2"
        tok = tf.WhisperTokenizerFast(tokenizer_file=str(bundled_tiny_en() / "tokenizer.json"))
        torch.manual_seed(0)
        tf.WhisperForConditionalGeneration(tf.WhisperConfig(
            vocab_size=len(tok), d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
            decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128)).save_pretrained(src)
        tok.save_pretrained(src)
        tf.WhisperFeatureExtractor(feature_size=128).save_pretrained(src)
        ctranslate2.converters.TransformersConverter(str(src), copy_files=["preprocessor_config.json", "tokenizer.json"]
                                                     ).convert(str(path), quantization="float16")
    compute = "float16" if device.startswith("cuda") else "int8"
    model = WhisperModel(str(path), device="cuda" if device.startswith("cuda") else "cpu", compute_type=compute)
    if not smoke:
        model.max_length = 3 + int(3 * MEAN_S)
    audio = clips(4 if smoke else 64, 2.0 if smoke else MEAN_S)
    total = sum(len(a) for a in audio) / SR
    transcribe_batch(model, audio[:2], "fitted", vad=False, fallback=False)  # warm-up
    t0 = time.perf_counter()
    one = [transcribe_batch(model, [a], "fitted", vad=False, fallback=False)[0] for a in audio]
    t_one = time.perf_counter() - t0
    batch = 4 if smoke else 16
    t0 = time.perf_counter()
    many = [w for s in range(0, len(audio), batch) for w in transcribe_batch(model, audio[s : s + batch], "fitted", vad=False, fallback=False)]
    t_many = time.perf_counter() - t0
    same = np.mean([[w["word"] for w in (a or [])] == [w["word"] for w in (b or [])] for a, b in zip(one, many)])
    return {"asr_one_file_audio_s_per_s": total / t_one, "asr_batched_audio_s_per_s": total / t_many,
            "asr_batched_speedup": t_one / t_many, "asr_batched_same_words": float(same),
            "gpu_asr_batched_s_per_audio_h": t_many * 3600 / total, "gpu_asr_one_file_s_per_audio_h": t_one * 3600 / total}


def train_and_predict(tmp: Path, device: str, smoke: bool) -> dict[str, float]:
    import torch

    from msf.trainer.model import ModelConfig, MsfSer

    d, t, b = (16, 20, 4) if smoke else (1024, int(MEAN_S * 50), 32)
    dims = {"gs": d, "les": d, "es": d}
    model = MsfSer(ModelConfig(frame_shape=(d,), vector_dims=dims, sources=("audio", "gs", "les", "es"))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames = torch.randn(b, t, d, device=device)
    lengths = torch.full((b,), t, device=device)
    vectors = {s: torch.randn(b, d, device=device) for s in dims}
    masks = {s: torch.ones(b, dtype=torch.bool, device=device) for s in dims}
    gold = torch.rand(b, 3, device=device) * 6 + 1
    cuda = device.startswith("cuda")

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            pred, aux = model(frames, lengths, vectors, masks)
            loss = model.loss(pred, gold, aux, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps = 2 if smoke else 50
    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
        model(frames, lengths, vectors, masks)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(frames, lengths, vectors, masks)
        sync(device)
    predict_s = time.perf_counter() - t0
    return {"train_utterances_per_s": steps * b / train_s, "predict_utterances_per_s": steps * b / predict_s}


ROWS: dict[str, Callable[[Path, str, bool], dict[str, float]]] = {
    "acoustic": acoustic, "asr": asr, "train": train_and_predict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, on whatever device there is")
    ap.add_argument("--only", help="rows to run: " + ",".join(ROWS))
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                              "smoke": args.smoke}
    tmp = Path(tempfile.mkdtemp(prefix="msf-device-"))
    try:
        for name in (args.only.split(",") if args.only else ROWS):
            t0 = time.perf_counter()
            try:
                got = ROWS[name](tmp, device, args.smoke)
                result |= {k: round(float(v), 4) for k, v in got.items()}
            except Exception as e:  # noqa: BLE001 - one row that cannot run must not hide the others
                traceback.print_exc(file=sys.stderr)
                result[f"{name}_unavailable"] = f"{type(e).__name__}: {e}"[:300]
            print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
