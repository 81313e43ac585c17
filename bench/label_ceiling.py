"""The most any model can score on the demo corpus: CCC of the generative rule's labels against the noisy
labels of the manifest, per corpus seed, split and target.

The rule's draws are made up front (`draw_specs`), so no audio is synthesised: this takes a second. It
bounds what an ablation can show. Example: a `full − audio` valence gain of 0.2 needs `audio` valence at
most the ceiling minus 0.2.

    python bench/label_ceiling.py [--seeds 0 1 2] [--n 300]

Last stdout line: one JSON object, {"seed S": {"split": {"valence": c, "arousal": c, "dominance": c}}}.
"""

from __future__ import annotations

import argparse
import json

import torch

from msf.pipeline.corpora.demo import draw_specs
from msf.pipeline.corpus import TARGETS
from msf.trainer.model import ccc


def ceilings(n: int, seed: int) -> dict[str, dict[str, float]]:
    specs = draw_specs(n, seed)
    out = {}
    for split in ("train", "dev", "test"):
        rows = [s for s in specs if s.split == split]
        clean = torch.tensor([s.clean for s in rows], dtype=torch.float64)
        noisy = torch.tensor([(s.valence, s.arousal, s.dominance) for s in rows], dtype=torch.float64)
        out[split] = {t: round(float(c), 3) for t, c in zip(TARGETS, ccc(clean, noisy))}
        out[split]["n"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=300, help="utterances (make demo's corpus has 300)")
    args = ap.parse_args()
    result = {f"seed {s}": ceilings(args.n, s) for s in args.seeds}
    print("corpus seed | split | n | valence | arousal | dominance")
    for seed, splits in result.items():
        for split, c in splits.items():
            print(f"{seed} | {split} | {c['n']} | {c['valence']:.3f} | {c['arousal']:.3f} | {c['dominance']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
