"""One inference path: evaluation, `msf predict` on audio files and `msf predict --features` run their
batches through the same function (`train.infer`: windows, batching, autocast, averaging), so predicting
a cached split's files gives the run's own evaluation predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.corpus import TARGETS


def test_predict_on_a_cached_split_is_the_run_s_evaluation(audio_run: Path, demo_features: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "test.csv"
    r = CliRunner().invoke(app, ["predict", "--features", str(demo_features), "--run", str(audio_run), "--split",
                                 "test", "--out", str(out)])
    assert r.exit_code == 0, r.output
    evaluated = [row for row in csv.DictReader(open(audio_run / "predictions.csv")) if row["split"] == "test"]
    assert list(csv.DictReader(open(out))) == evaluated  # the same table, to the last digit
    assert list(evaluated[0]) == ["id", "speaker", "split", *TARGETS, *(f"gold_{t}" for t in TARGETS)]


def test_predict_on_files_gives_the_run_s_evaluation_predictions(audio_run: Path, demo_corpus: Path) -> None:
    evaluated = {row["id"]: row for row in csv.DictReader(open(audio_run / "predictions.csv")) if row["split"] == "test"}
    manifest = {row["id"]: row for row in csv.DictReader(open(demo_corpus / "manifest.csv"))}
    chosen = sorted(evaluated)[:4]
    files = [str(demo_corpus / manifest[u]["audio"]) for u in chosen]
    r = CliRunner().invoke(app, ["predict", *files, "--run", str(audio_run), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    for uid, row in zip(chosen, rows):
        for t in TARGETS:  # other batch shapes: float32 rounding apart at most
            assert abs(row[t] - float(evaluated[uid][t])) < 2e-4, (uid, t, row, evaluated[uid])


def test_every_prediction_path_runs_the_one_inference_function(audio_run: Path, demo_features: Path,
                                                               demo_corpus: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What autocast, batching and window averaging do on CUDA is decided in that function alone."""
    import msf.trainer.predict as predict_module
    import msf.trainer.train as train_module

    calls: list[str] = []
    real = train_module.infer

    def spy(model, batches, device):  # type: ignore[no-untyped-def]
        calls.append(device)
        return real(model, batches, device)

    monkeypatch.setattr(train_module, "infer", spy)
    monkeypatch.setattr(predict_module, "infer", spy)
    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", "--run", str(audio_run), "--features", str(demo_features)]).exit_code == 0
    evaluated = len(calls)
    assert evaluated >= 2  # dev and test
    assert runner.invoke(app, ["predict", "--features", str(demo_features), "--run", str(audio_run), "--split",
                               "test", "--out", str(tmp_path / "p.csv")]).exit_code == 0
    assert len(calls) == evaluated + 1
    wav = next((demo_corpus / "wavs").glob("*.wav"))
    assert runner.invoke(app, ["predict", str(wav), "--run", str(audio_run), "--json"]).exit_code == 0
    assert len(calls) == evaluated + 2
