"""Long turns: training crops an utterance longer than `max_seconds` to a window drawn per epoch,
evaluation reads it window by window and averages, so a 10-minute file costs the memory of a window."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_encoder, write_manifest, write_tone

from msf.trainer.data import FeatureSet

# The peak resident memory of this process's own address space (VmHWM): getrusage's ru_maxrss also
# carries the high-water mark of the process it was forked from (here pytest's) across exec.
RSS = """
import json, sys
from typer.testing import CliRunner
from msf.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"code": r.exit_code, "rss_mb": peak / 1024, "out": r.output[-2000:]}))
"""


def _corpus(root: Path, long_s: float | None) -> Path:
    manifest = write_manifest(root, 18)
    if long_s:
        write_tone(root / "wavs" / "long.wav", seconds=long_s, seed=99)
        with open(manifest, "a", newline="") as f:
            w = csv.writer(f)
            w.writerow(["long1", "wavs/long.wav", "a long turn", "spk0", "train", 4.0, 3.5, 5.0])
            w.writerow(["long2", "wavs/long.wav", "a long turn", "spk1", "test", 4.0, 3.5, 5.0])
    return manifest


def _extract(manifest: Path, cache: Path, model: Path) -> None:
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.run.extraction import Extraction

    ex = Extraction(MsfConfig(corpus=str(manifest), cache=cache, profile="offline", workers=1,
                              stages={"acoustic": {"model": str(model), "backend": "transformers"}}))
    ex.run(["acoustic"], progress=False)
    ex.close()


@pytest.mark.slow
def test_a_ten_minute_file_trains_and_evaluates_in_bounded_memory(tmp_path: Path) -> None:
    model = save_tiny_encoder("wavlm", tmp_path / "wavlm")
    peaks = {}
    for name, long_s in (("short", None), ("long", 600.0)):
        cache = tmp_path / f"cache-{name}"
        _extract(_corpus(tmp_path / name, long_s), cache, model)
        run = tmp_path / f"run-{name}"
        p = subprocess.run([sys.executable, "-c", RSS, "train", "--features", str(cache), "--out", str(run),
                            "--sources", "audio", "--epochs", "2", "--set", "train.hidden=16",
                            "--set", "train.batch_size=4", "--no-speaker-norm"], capture_output=True, text=True)
        res = json.loads(p.stdout.strip().splitlines()[-1])
        assert res["code"] == 0, res["out"] + p.stderr[-2000:]
        peaks[name] = res["rss_mb"]
        preds = list(csv.DictReader(open(run / "predictions.csv")))
        if long_s:  # the long test turn is scored once, from the mean of its windows
            assert [r["id"] for r in preds].count("long2") == 1
            with __import__("msf").open_cache(cache) as c:
                assert c.column("acoustic.frames", ["long2"]).lengths()[0] >= 599 * 50
    assert peaks["long"] <= 1.5 * peaks["short"], peaks


def test_windows_crop_in_training_and_tile_in_evaluation(tmp_path: Path) -> None:
    data = FeatureSet.__new__(FeatureSet)  # only the window rule is exercised here
    data.crop = 100
    lengths = np.array([50, 1000, 250, 100])
    order = np.arange(4)
    evaluation = data._windows(order, lengths, training=False, seed=0, epoch=0)
    by = {k: [(a, b) for kk, a, b in evaluation if kk == k] for k in range(4)}
    assert by[0] == [(0, -1)] and by[3] == [(0, -1)]  # not longer than the crop: whole
    assert by[1] == [(i * 100, (i + 1) * 100) for i in range(10)]
    assert by[2] == [(0, 83), (83, 167), (167, 250)]  # equal windows tiling the utterance
    one = data._windows(order, lengths, training=True, seed=3, epoch=1)
    again = data._windows(order[::-1], lengths, training=True, seed=3, epoch=1)
    assert sorted(one) == sorted(again)  # the window depends on the utterance, not on the order
    for k, a, b in one:
        assert (b == -1) if lengths[k] <= 100 else (b - a == 100 and 0 <= a <= lengths[k] - 100)
    other = data._windows(order, lengths, training=True, seed=3, epoch=2)
    assert [r for r in one if r[0] == 1] != [r for r in other if r[0] == 1]  # a new window each epoch


def test_a_long_file_is_predicted_window_by_window_as_evaluation_scores_it(tmp_path: Path) -> None:
    """`msf predict FILE` on a file longer than the run's max_seconds tiles it with the evaluation's
    windows and averages: the same numbers the run's own evaluation gave that file."""
    from typer.testing import CliRunner

    from msf.cli import app

    model = save_tiny_encoder("wavlm", tmp_path / "wavlm")
    cache, run = tmp_path / "cache", tmp_path / "run"
    _extract(_corpus(tmp_path / "c", 70.0), cache, model)  # 70 s: three windows of 23.3 s at max_seconds 30
    r = CliRunner().invoke(app, ["train", "--features", str(cache), "--out", str(run), "--sources", "audio",
                                 "--epochs", "2", "--set", "train.hidden=16", "--set", "train.batch_size=4",
                                 "--no-speaker-norm"])
    assert r.exit_code == 0, r.output
    scored = next(row for row in csv.DictReader(open(run / "predictions.csv")) if row["id"] == "long2")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "c" / "wavs" / "long.wav"), "--run", str(run), "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout.strip().splitlines()[-1])
    for t in ("valence", "arousal", "dominance"):
        assert abs(row[t] - float(scored[t])) < 2e-4, (row, scored)
