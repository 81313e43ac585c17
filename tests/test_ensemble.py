"""Several runs as one predictor (`msf ensemble`, `--run A --run B` in predict and evaluate): an ensemble
of one run is that run, of a run with itself too; weights fitted on dev never read a test label; a
changed or missing member is refused by name. (Ensembles per IEMOCAP fold: tests/test_paper_protocol.py.)"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.corpus import TARGETS


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def runs(demo_features: Path, audio_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small runs that differ in their sources, seed and speaker standardisation."""
    b = tmp_path_factory.mktemp("ensemble-runs") / "b"
    code, _, err = invoke("train", "--features", str(demo_features), "--out", str(b), "--sources", "audio,gs",
                          "--seed", "1", "--epochs", "2", "--set", "train.hidden=16")
    assert code == 0, err
    return {"a": audio_run, "b": b}


def test_an_ensemble_of_one_run_or_of_a_run_with_itself_is_that_run(runs: dict[str, Path], demo_features: Path,
                                                                     demo_corpus: Path, tmp_path: Path) -> None:
    a = str(runs["a"])
    code, out, _ = invoke("evaluate", "--run", a, "--features", str(demo_features))
    alone = json.loads(out)
    code, out, err = invoke("ensemble", "--run", a, "--out", str(tmp_path / "one"), "--features", str(demo_features))
    assert code == 0, err
    assert json.loads(out) == alone
    code, out, _ = invoke("evaluate", "--run", a, "--run", a, "--features", str(demo_features))
    assert json.loads(out) == alone
    tables = {}
    for label, run in (("run", [a]), ("one", [str(tmp_path / "one")]), ("twice", [a, a])):
        args = [x for r in run for x in ("--run", r)]
        code, _, err = invoke("predict", "--features", str(demo_features), *args, "--split", "test",
                              "--out", str(tmp_path / f"{label}.csv"))
        assert code == 0, err
        tables[label] = (tmp_path / f"{label}.csv").read_text()
    assert tables["run"] == tables["one"] == tables["twice"]
    wav = str(next((demo_corpus / "wavs").glob("*.wav")))
    keep = ("--keep-features", str(tmp_path / "features"))  # extracted once, read by all three
    rows = {label: json.loads(invoke("predict", wav, *args, *keep, "--json")[1].strip().splitlines()[-1])
            for label, args in (("run", ["--run", a]), ("one", ["--run", str(tmp_path / "one")]),
                                ("twice", ["--run", a, "--run", a]))}
    assert rows["run"] == rows["one"] == rows["twice"]


def test_an_ensemble_of_two_runs_averages_their_predictions(runs: dict[str, Path], demo_features: Path,
                                                            tmp_path: Path) -> None:
    tables = {}
    for label, args in (("a", ["--run", str(runs["a"])]), ("b", ["--run", str(runs["b"])]),
                        ("ab", ["--run", str(runs["a"]), "--run", str(runs["b"])])):
        code, _, err = invoke("predict", "--features", str(demo_features), *args, "--split", "test",
                              "--out", str(tmp_path / f"{label}.csv"))
        assert code == 0, err
        tables[label] = {r["id"]: r for r in csv.DictReader(open(tmp_path / f"{label}.csv"))}
    for uid, row in tables["ab"].items():
        for t in TARGETS:
            mean = (float(tables["a"][uid][t]) + float(tables["b"][uid][t])) / 2
            assert abs(float(row[t]) - mean) <= 1e-4 and row[f"gold_{t}"] == tables["a"][uid][f"gold_{t}"]


def _labels_with_test_corrupted(demo_corpus: Path, out: Path, seed: int) -> Path:
    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))
    rng = np.random.default_rng(seed)
    for r in rows:
        if r["split"] == "test":
            for t in TARGETS:
                r[t] = f"{rng.uniform(1, 7):.2f}"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_dev_fitted_weights_never_read_a_test_label(runs: dict[str, Path], demo_features: Path, demo_corpus: Path,
                                                   tmp_path: Path) -> None:
    weights = []
    for k in range(2):  # the same dev labels, two different sets of test labels
        labels = _labels_with_test_corrupted(demo_corpus, tmp_path / f"labels{k}.csv", seed=k)
        code, out, err = invoke("ensemble", "--run", str(runs["a"]), "--run", str(runs["b"]), "--out",
                                str(tmp_path / f"e{k}"), "--weights", "dev", "--features", str(demo_features),
                                "--labels", str(labels))
        assert code == 0, err
        record = json.loads((tmp_path / f"e{k}" / "ensemble.json").read_text())
        assert record["fitted_on"] == "dev"
        weights.append(record["weights"])
        for w in record["weights"].values():
            assert all(x >= 0 for x in w) and abs(sum(w) - 1) < 1e-3
    assert weights[0] == weights[1]
    code, _, err = invoke("ensemble", "--run", str(runs["a"]), "--out", str(tmp_path / "x"), "--weights", "dev")
    assert code == 2 and "--features" in err


def test_a_changed_or_missing_member_is_refused_by_name(runs: dict[str, Path], demo_features: Path,
                                                        tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs["a"], a)
    shutil.copytree(runs["b"], b)
    code, _, err = invoke("ensemble", "--run", str(a), "--run", str(b), "--out", str(tmp_path / "e"))
    assert code == 0, err
    original = (a / "config.json").read_text()
    config = json.loads(original)
    (a / "config.json").write_text(json.dumps({**config, "lr": config["lr"] * 2}))  # trained again, say
    code, _, err = invoke("evaluate", "--run", str(tmp_path / "e"), "--features", str(demo_features))
    assert code == 2 and f"member {a.resolve()} changed" in " ".join(err.split())
    (a / "config.json").write_text(original)
    shutil.rmtree(b)
    code, _, err = invoke("predict", "--features", str(demo_features), "--run", str(tmp_path / "e"), "--split",
                          "test", "--out", str(tmp_path / "p.csv"))
    assert code == 2 and f"member {b.resolve()} is missing" in " ".join(err.split())
