"""The trainer on a real cache: runs, metrics and statistics, checkpoints without pickles, exact resume
after kill -9, prediction on new audio."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msf.trainer.train import TrainConfig, train

FAST = dict(epochs=4, patience=100, hidden=32, batch_size=16)


def test_train_writes_a_complete_run(demo_features: Path, tmp_path: Path) -> None:
    m = train(TrainConfig(features=demo_features, **FAST), tmp_path / "run", progress=False)
    for split in ("dev", "test"):
        assert set(m[split]) == {"ccc_valence", "ccc_arousal", "ccc_dominance", "ccc_mean", "n"}
        assert all(-1 <= m[split][k] <= 1 for k in m[split] if k != "n")
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == m
    assert (run / "curves.png").stat().st_size > 10_000
    usage = json.loads((run / "usage.json").read_text())["test"]
    assert set(usage["gates"]) == {"gs", "les", "es"} and abs(sum(usage["gates"].values()) - 1) < 1e-3
    assert set(usage["router"]) == {"valence", "arousal", "dominance"}
    assert all(abs(sum(p) - 1) < 1e-3 and len(p) == 4 for p in usage["router"].values())
    for ck in ("best.pt", "last.pt"):  # tensors and plain data only: loads with weights_only=True
        torch.load(run / ck, weights_only=True)
    assert json.loads((run / "config.json").read_text())["sources"] == "audio,gs,les,es"
    concat = train(TrainConfig(features=demo_features, fusion="concat", sources="audio,gs", **FAST),
                   tmp_path / "concat", progress=False)
    assert json.loads((tmp_path / "concat" / "usage.json").read_text())["test"] == {"gates": {}, "router": {}}
    assert concat["test"]["n"] == m["test"]["n"]


@pytest.mark.slow
def test_kill9_during_training_then_resume_equals_an_uninterrupted_run(demo_features: Path, tmp_path: Path) -> None:
    options = dict(FAST, epochs=10)
    clean = train(TrainConfig(features=demo_features, **options), tmp_path / "clean", progress=False)
    run = tmp_path / "killed"
    code = (f"from pathlib import Path; from msf.trainer.train import TrainConfig, train; "
            f"train(TrainConfig(features=Path({str(demo_features)!r}), **{options!r}), Path({str(run)!r}), progress=False)")
    rng = random.Random(3)
    kills = 0
    for _ in range(5):  # killed five times, each after one more finished epoch
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
        seen = json.loads(torch.load(run / "last.pt", weights_only=True)["state"])["epoch"] if (run / "last.pt").exists() else 0
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (run / "last.pt").exists():  # the rename is atomic: it always loads whole
                if json.loads(torch.load(run / "last.pt", weights_only=True)["state"])["epoch"] > seen:
                    time.sleep(rng.uniform(0, 0.4))  # somewhere in the next epoch
                    break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        torch.load(run / "last.pt", weights_only=True)  # never half-written
    assert kills >= 4
    resumed = train(TrainConfig(features=demo_features, **options), run, progress=False)
    assert resumed["test"] == clean["test"] and resumed["dev"] == clean["dev"]


def test_predict_new_audio(demo_features: Path, demo_corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    train(TrainConfig(features=demo_features, sources="audio,gs", **FAST), tmp_path / "run", progress=False)
    import csv

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))[:2]
    wavs = [str(demo_corpus / r["audio"]) for r in rows]
    out = []
    for wav, transcript in ((wavs[0], rows[0]["transcript"]), (wavs[1], None)):  # given, then transcribed
        args = ["predict", wav, "--run", str(tmp_path / "run"), "--json"]
        res = CliRunner().invoke(app, args + (["--transcript", transcript] if transcript else []))
        assert res.exit_code == 0, res.output
        out += json.loads(res.stdout.strip().splitlines()[-1])
    assert [o["audio"] for o in out] == wavs
    assert all(1 <= o[k] <= 7 for o in out for k in ("valence", "arousal", "dominance")), out
    res = CliRunner().invoke(app, ["predict", wavs[0], "--run", str(tmp_path / "run"), "--json",
                                   "--transcript", "the quarterly revenue report shows strong growth"])
    wrong = json.loads(res.stdout.strip().splitlines()[-1])[0]
    assert wrong["error"].startswith("align: the transcript does not match the audio")
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.wav"), "--run", str(tmp_path / "run")])
    assert res.exit_code == 2 and "audio not found" in res.output
