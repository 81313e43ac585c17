"""A real-speech check: RAVDESS (acted English, 24 actors) through msf, against a prosodic baseline.

RAVDESS is not shipped and never committed: pass the folder holding its `Actor_NN/*.wav` speech files
(Audio_Speech_Actors_01-24.zip from zenodo.org/record/1188976, or any mirror). The script writes a
generic manifest with a speaker-disjoint split (actors 1-16 train, 17-20 dev, 21-24 test), the two
RAVDESS statements as transcripts, and the eight categories mapped to valence, arousal and dominance
on a 1-7 scale (below; strong intensity moves each rating a third further from neutral). Then:

  baseline   parselmouth pitch and intensity statistics per utterance (11 numbers), standardised
             per speaker, ridge regression (alpha chosen on dev)
  msf        `msf extract` (offline profile: Whisper tiny.en frames, MiniLM text, PocketSphinx
             alignment of the transcript, the knowledge describer), then training runs in this
             process: audio, audio+prosody, audio+speaker-norm, full, full+prosody, and audio+prosody
             and full+prosody again with speaker-norm, each with --seeds training seeds

    python bench/real_speech.py --ravdess DIR [--out DIR] [--seeds 5] [--workers 2] [--variants A,B]
                                [--average-epochs X]

Prints test CCC (mean over seeds, and the sd over seeds) per variant; last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from msf.trainer.data import FeatureSet, parse_sources
from msf.trainer.train import TrainConfig, train

STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
# category -> (valence, arousal, dominance), 1-7; after the usual dimensional placement of the categories
VAD = {"01": ("neutral", 4.0, 3.0, 4.0), "02": ("calm", 4.5, 2.0, 4.0), "03": ("happy", 6.0, 5.5, 5.0),
       "04": ("sad", 2.0, 2.5, 2.5), "05": ("angry", 2.0, 6.0, 5.5), "06": ("fearful", 2.0, 5.5, 2.0),
       "07": ("disgust", 2.0, 4.5, 4.5), "08": ("surprised", 5.0, 6.0, 4.0)}
DIMS = ("valence", "arousal", "dominance")
VARIANTS = {  # name: (sources, fusion, speaker_norm)
    "audio": ("audio", "fm-moe", False),
    "audio+prosody": ("audio,prosody", "fm-moe", False),
    "audio+speaker-norm": ("audio", "fm-moe", True),
    "full": ("audio,gs,les,es", "fm-moe", False),
    "full+prosody": ("audio,gs,les,es,prosody", "fm-moe", False),
    "audio+prosody+speaker-norm": ("audio,prosody", "fm-moe", True),
    "full+prosody+speaker-norm": ("audio,gs,les,es,prosody", "fm-moe", True),
}


def write_manifest(ravdess: Path, out: Path) -> Path:
    rows = []
    for wav in sorted(ravdess.glob("Actor_*/03-01-*.wav")):
        _, _, emo, intensity, statement, rep, actor = wav.stem.split("-")
        name, *vad = VAD[emo]
        k = 4 / 3 if intensity == "02" else 1.0
        v, a, d = (4 + k * (x - 4) for x in vad)
        split = "train" if int(actor) <= 16 else "dev" if int(actor) <= 20 else "test"
        rows.append({"id": wav.stem, "audio": str(wav.resolve()), "transcript": STATEMENTS[statement],
                     "speaker": f"actor{actor}", "split": split, "valence": round(v, 3), "arousal": round(a, 3),
                     "dominance": round(d, 3), "category": name})
    if not rows:
        raise SystemExit(f"no RAVDESS speech files (Actor_NN/03-01-*.wav) under {ravdess}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def ccc(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    pm, gm, pv, gv = pred.mean(0), gold.mean(0), pred.var(0), gold.var(0)
    return 2 * ((pred - pm) * (gold - gm)).mean(0) / (pv + gv + (pm - gm) ** 2)


def prosodic_features(path: str) -> list[float]:
    import parselmouth

    snd = parselmouth.Sound(path)
    f0 = snd.to_pitch().selected_array["frequency"]
    voiced = f0[f0 > 0]
    st = 12 * np.log2(voiced / 100) if len(voiced) else np.zeros(1)
    db = snd.to_intensity().values[0]
    db = db[np.isfinite(db)]
    return [st.mean(), st.std(), np.percentile(st, 90) - np.percentile(st, 10), np.percentile(st, 10),
            np.percentile(st, 90), db.mean(), db.std(), db.max(), len(voiced) / max(len(f0), 1),
            snd.duration, np.abs(np.diff(st)).mean() if len(st) > 1 else 0.0]


def baseline(manifest: Path) -> dict[str, float]:
    """Speaker-standardised prosodic statistics and ridge regression (closed form: a bench needs no
    scikit-learn for one linear solve)."""
    rows = list(csv.DictReader(open(manifest)))
    x = np.array([prosodic_features(r["audio"]) for r in rows])
    y = np.array([[float(r[d]) for d in DIMS] for r in rows])
    for spk in {r["speaker"] for r in rows}:  # each actor against their own mean and spread
        m = np.array([r["speaker"] == spk for r in rows])
        x[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-9)
    split = np.array([r["split"] for r in rows])

    def fit(alpha: float) -> np.ndarray:
        xt, yt = x[split == "train"], y[split == "train"]
        xa = np.c_[xt, np.ones(len(xt))]
        reg = alpha * np.eye(xa.shape[1])
        reg[-1, -1] = 0  # no penalty on the intercept
        return np.linalg.solve(xa.T @ xa + reg, xa.T @ yt)

    def predict(w: np.ndarray, s: str) -> np.ndarray:
        return np.c_[x[split == s], np.ones((split == s).sum())] @ w

    best = max((10.0 ** k for k in range(-2, 5)), key=lambda a: ccc(predict(fit(a), "dev"), y[split == "dev"]).mean())
    c = ccc(predict(fit(best), "test"), y[split == "test"])
    return {f"ccc_{d}": round(float(v), 4) for d, v in zip(DIMS, c)} | {"alpha": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ravdess", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/real-speech"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--average-epochs", type=float, help="weight averaging horizon (default: the trainer's); "
                    "runs go to OUT/runs/avgX/ when given")
    args = ap.parse_args()
    manifest = write_manifest(args.ravdess, args.out)
    rows = list(csv.DictReader(open(manifest)))
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "dev", "test")}
    print(f"RAVDESS speech: {len(rows)} utterances, 24 actors; split {counts} (actors 1-16 / 17-20 / 21-24)",
          flush=True)
    base = baseline(manifest)
    print(f"baseline (prosodic statistics + ridge, alpha {base['alpha']:g}): "
          + ", ".join(f"{d} {base[f'ccc_{d}']:.3f}" for d in DIMS), flush=True)
    cache = args.out / "cache"
    subprocess.run([sys.executable, "-m", "msf.cli", "extract", "--corpus", str(manifest), "--cache", str(cache),
                    "--profile", "offline", "--workers", str(args.workers), "--stage", "acoustic", "--stage", "global",
                    "--stage", "local", "--stage", "extended"], check=True)
    results: dict[str, dict] = {"baseline": base, "n": counts}
    loaded: dict[bool, FeatureSet] = {}
    for name in args.variants.split(","):
        sources, fusion, norm = VARIANTS[name]
        if norm not in loaded:
            loaded[norm] = FeatureSet(cache, parse_sources("audio,gs,les,es,prosody"), speaker_norm=norm)
        runs = []
        for seed in range(args.seeds):
            averaging = {} if args.average_epochs is None else {"average_epochs": args.average_epochs}
            cfg = TrainConfig(features=cache, sources=sources, fusion=fusion, seed=seed, speaker_norm=norm, **averaging)
            runs_dir = args.out / "runs" / (f"avg{args.average_epochs:g}" if averaging else "")
            m = train(cfg, runs_dir / name / f"seed-{seed}", progress=False, data=loaded[norm])
            runs.append([m["test"][f"ccc_{d}"] for d in DIMS])
        r = np.array(runs)
        results[name] = {f"ccc_{d}": round(float(v), 4) for d, v in zip(DIMS, r.mean(0))} | {
            f"sd_{d}": round(float(v), 4) for d, v in zip(DIMS, r.std(0, ddof=1) if len(r) > 1 else [0] * 3)}
        print(f"{name}: " + ", ".join(f"{d} {results[name][f'ccc_{d}']:.3f} (sd {results[name][f'sd_{d}']:.3f})"
                                      for d in DIMS), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
