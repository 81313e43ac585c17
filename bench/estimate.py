"""What `msf extract --dry-run` says a paper-sized extraction costs: WavLM-Large frames over a 100-hour
corpus, one layer vs all 25 hidden states, before anything is computed.

The corpus is the demo corpus's audio listed again and again under new ids until it adds up to
`--hours`; the model is a WavLM-Large-sized random model (1024 wide, 24 layers: the same shapes and
cost as microsoft/wavlm-large, no download). Bytes come from the model's declared output shape scaled
by a calibration run; time from timing `--calibrate` of the corpus's utterances on this machine.

    python bench/estimate.py [--hours 100] [--calibrate 3] [--workers 2] [--out DIR]

Last stdout line: one JSON object (bytes and hours per layer choice).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acoustic import LARGE, save_model  # noqa: E402  (bench/acoustic.py)

from msf.pipeline.config import MsfConfig  # noqa: E402
from msf.pipeline.corpora.demo import build_demo_corpus  # noqa: E402
from msf.pipeline.run.costs import human_bytes  # noqa: E402
from msf.pipeline.run.extraction import Extraction  # noqa: E402


def long_manifest(corpus: Path, out: Path, hours: float) -> tuple[Path, int]:
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    seconds = {r["id"]: sf.info(corpus / r["audio"]).duration for r in rows}
    total, n = 0.0, 0
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        while total < hours * 3600:
            r = rows[n % len(rows)]
            w.writerow(r | {"id": f"{r['id']}_{n // len(rows)}", "audio": str(corpus / r["audio"])})
            total += seconds[r["id"]]
            n += 1
    return out, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=100.0)
    ap.add_argument("--calibrate", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-estimate-"))
    corpus = build_demo_corpus(root / "corpus", n=120, seed=0, progress=False)
    manifest, n = long_manifest(corpus, root / "long.csv", args.hours)
    model = save_model(root / "wavlm-large-sized", LARGE)
    rows, res = [], {"hours": args.hours, "utterances": n, "workers": args.workers}
    for label, layers in (("one layer", [-1]), ("all layers", "all")):
        config = MsfConfig(corpus=str(manifest), cache=root / "cache", workers=args.workers,
                           stages={"acoustic": {"model": str(model), "layers": layers}})
        ex = Extraction(config, dry_run=True)
        est = ex.dry_run(["acoustic"], calibrate=args.calibrate)["acoustic"]
        ex.close()
        rows.append((label, est))
        key = "one_layer" if layers == [-1] else "all_layers"
        res |= {f"{key}_bytes": round(est.bytes or 0), f"{key}_declared_bytes": round(est.declared_bytes or 0),
                f"{key}_hours": round((est.seconds or 0) / 3600, 1)}
    print(f"{n:,} utterances, {args.hours:g} hours of audio; WavLM-Large-sized model (1024 x 24), float16; "
          f"time on {args.workers} CPU worker(s) of this machine ({os.cpu_count()} CPUs), calibrated on "
          f"{args.calibrate} utterances")
    print(f"{'acoustic.layers':<16}{'to compute':>12}{'est. size':>12}{'declared':>12}{'est. time':>12}")
    for label, e in rows:
        print(f"{label:<16}{e.to_compute:>12,}{human_bytes(e.bytes or 0):>12}{human_bytes(e.declared_bytes or 0):>12}"
              f"{(e.seconds or 0) / 3600:>10.1f} h")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
