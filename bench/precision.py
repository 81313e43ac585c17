"""Half precision against float32: what it changes in the features, and whether a probe reads them the
same. On a few demo utterances: the acoustic frames of a WavLM-architecture random model (every hidden
state) and the bundled MiniLM's transcript embeddings (real weights), each in float32 and in half
precision (bfloat16 on CPU; on a GPU bfloat16 and float16); per feature the largest difference
relative to the largest float32 value, the lowest cosine of an utterance's pooled vector, and the test
CCC of a ridge probe (trained on each precision's own training features) for valence, arousal and
dominance, with the seconds each precision took.

    python bench/precision.py [--n 120] [--devices cpu,cuda]

Last stdout line: one JSON object (per device and precision: max_rel_diff, min_cosine, probe CCC, seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from acoustic import SMALL, save_model

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.backends.model_loading import BUNDLED_MINILM
from msf.pipeline.stages.acoustic import AcousticParams, TransformersEncoder
from msf.pipeline.backends.text_encoder import TextEncoder, TextEncoderParams


def ccc(p: np.ndarray, g: np.ndarray) -> float:
    return float(2 * np.cov(p, g, bias=True)[0, 1] / (p.var() + g.var() + (p.mean() - g.mean()) ** 2))


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, alpha: float = 10.0) -> list[float]:
    """Ridge regression on standardised features, fitted on `train`, CCC on the rest, per target."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    a = z[train]
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y[train] - y[train].mean(0)))
    pred = z[~train] @ w + y[train].mean(0)
    return [round(ccc(pred[:, k], y[~train, k]), 4) for k in range(3)]


def compare(name: str, feats: dict[str, list[np.ndarray]], y: np.ndarray, train: np.ndarray,
            seconds: dict[str, float]) -> dict:
    ref = feats["float32"]
    out = {}
    for prec, fs in feats.items():
        pooled = np.stack([f.reshape(len(f), -1).mean(0) if f.ndim > 1 else f for f in fs])
        pooled32 = np.stack([f.reshape(len(f), -1).mean(0) if f.ndim > 1 else f for f in ref])
        cos = (pooled * pooled32).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(pooled32, axis=1)
        rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(fs, ref))
        out[prec] = {"max_rel_diff": round(rel, 5), "min_cosine": round(float(cos.min()), 6),
                     "probe_ccc": probe(pooled, y, train), "seconds": round(seconds[prec], 2)}
        print(f"{name:<10}{prec:<10}{rel:>14.5f}{cos.min():>12.6f}{str(out[prec]['probe_ccc']):>28}{seconds[prec]:>9.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--devices", default="cpu,cuda")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="msf-bench-precision-"))
    corpus = build_demo_corpus(root / "corpus", n=args.n, seed=0, progress=False)
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    waves = [load_waveform(str(corpus / r["audio"])) for r in rows]
    texts = [r["transcript"] for r in rows]
    y = np.array([[float(r[k]) for k in ("valence", "arousal", "dominance")] for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    model = save_model(root / "wavlm-small", SMALL)
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d.startswith("cuda") and torch.cuda.is_available())]
    res: dict = {"n": len(rows), "devices": devices}
    print(f"{len(rows)} demo utterances ({train.sum()} train, the rest test); ridge probe on each utterance's mean vector")
    print(f"{'feature':<10}{'precision':<10}{'max rel diff':>14}{'min cosine':>12}{'probe CCC (V, A, D)':>28}{'seconds':>9}")
    for device in devices:
        halves = ["bfloat16"] + (["float16"] if device.startswith("cuda") else [])
        acoustic, text, secs_a, secs_t = {}, {}, {}, {}
        for prec in ["float32", *halves]:
            enc = TransformersEncoder(AcousticParams(model=str(model), device=device, precision=prec, layers="all"))
            t0 = time.perf_counter()
            acoustic[prec] = [enc.forward([w])[0] for w in waves]
            secs_a[prec] = time.perf_counter() - t0
            te = TextEncoder(TextEncoderParams(model=BUNDLED_MINILM, device=device, precision=prec), "global.model")
            t0 = time.perf_counter()
            text[prec] = [e for k in range(0, len(texts), 32) for e in te.embed(texts[k : k + 32])]
            secs_t[prec] = time.perf_counter() - t0
        print(f"-- {device}")
        res[device] = {"acoustic": compare("acoustic", acoustic, y, train, secs_a),
                       "text": compare("text", text, y, train, secs_t)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
