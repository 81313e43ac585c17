"""The speaker-baseline rule: utterances without a speaker group worth the name are relative to the
training population, and a prediction depends on the file alone, never on the files beside it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from msf.pipeline.speaker_baseline import (MIN_SPEAKER_UTTERANCES, PopulationBaseline, Reference, RunBaseline,
                                           baseline_groups, gender_of, prosody_vector)
from msf.trainer.train import TrainConfig, train

FAST = dict(epochs=3, patience=100, hidden=32, batch_size=16)


def test_the_rule_names_which_groups_are_their_own_baseline() -> None:
    keys = ["ann", "ann", "ann", "bob", "bob", "\x00u1", "\x00u2", "\x00u3"]
    assert MIN_SPEAKER_UTTERANCES == 3
    assert baseline_groups(keys) == {"ann": True, "bob": False, "\x00u1": False, "\x00u2": False, "\x00u3": False}
    assert [gender_of({"gender": g}) for g in ("Female", "M", "male", "x", "")] == ["female", "male", "male", "", ""]


def test_population_baseline_by_gender_and_prosody_against_it() -> None:
    rows = [("female", 220.0, 60.0, 5.0), ("female", 200.0, 62.0, 4.0), ("male", 110.0, 58.0, 4.5),
            ("", 150.0, 70.0, 3.0)]
    pop = PopulationBaseline.fit(rows)
    assert pop.reference("female") == Reference(210.0, 61.0, 4.5)
    assert pop.reference("male") == Reference(110.0, 58.0, 4.5)
    assert pop.reference("") == pop.reference("other") == Reference(175.0, 61.0, 4.25)  # everyone
    assert PopulationBaseline.from_dict(json.loads(json.dumps(pop.to_dict()))) == pop
    # an utterance without a speaker baseline: pitch, loudness and rate against its gender's population
    record = {"speaker_baseline": False, "pitch_st": math.nan, "loudness_db": math.nan, "rate_ratio": math.nan,
              "f0_median_hz": 420.0, "loudness_abs_db": 67.0, "rate_syl_s": 9.0}
    v = prosody_vector(record, "female", pop)
    np.testing.assert_allclose(v, [12 * np.log2(420 / 210), 6.0, np.log(2.0)], rtol=1e-6)
    with pytest.raises(ValueError, match="needs the population baseline"):
        prosody_vector(record, "female", None)
    # with one, its own (as stored by `emphasis`)
    own = {"speaker_baseline": True, "pitch_st": 1.5, "loudness_db": -2.0, "rate_ratio": 1.0}
    np.testing.assert_allclose(prosody_vector(own, "female", None), [1.5, -2.0, 0.0])


def _manifest(corpus: Path, out: Path, rows: list[dict], **overrides: str) -> Path:
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance",
                               "gender"])
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r[k] for k in w.fieldnames if k in r}, "audio": str(corpus / r["audio"]), **overrides})
    return out


def test_an_unknown_speaker_is_relative_to_the_training_population(demo_corpus: Path, tmp_path: Path) -> None:
    """Speakers of the test split made `Unknown` (as much of MSP-Podcast is): their emphasis records keep
    no speaker-relative fields, their prosody vector is the population's, non-zero, and their ES says
    there is no baseline."""
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.run.extraction import Extraction
    from msf.trainer.data import FeatureSet

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))[:40]
    for r in rows:
        if r["split"] == "test":
            r["speaker"] = "Unknown"
        r["gender"] = "female" if sum(map(ord, r["speaker"])) % 2 else "male"
    manifest = _manifest(demo_corpus, tmp_path / "m.csv", rows)
    cache = tmp_path / "cache"
    ex = Extraction(MsfConfig(corpus=str(manifest), cache=cache, profile="offline", workers=1))
    ex.run(["emphasis", "extended"], progress=False)
    unknown = [r["id"] for r in rows if r["speaker"] == "Unknown"]
    known = [r["id"] for r in rows if r["speaker"] != "Unknown"]
    assert len(unknown) >= 3
    emphasis = ex.view().records("emphasis")
    rec = emphasis[unknown[0]]
    assert rec["speaker_baseline"] is False and math.isnan(rec["pitch_st"]) and rec["f0_median_hz"] > 0
    assert any(emphasis[k]["speaker_baseline"] for k in known)
    es = ex.view().records("describe", unknown[:1])[unknown[0]]["text"]
    assert "no baseline for this speaker" in es and "usual" not in es, es
    own = {u: [float(emphasis[u][k]) for k in ("f0_median_hz", "loudness_abs_db", "rate_syl_s")] for u in unknown}
    ex.run(["acoustic"], progress=False)
    ex.close()
    data = FeatureSet(cache, ("audio", "prosody"))
    test = data.splits["test"]
    assert data.population is not None and set(test.ids) == set(unknown)
    for uid, v in zip(test.ids, test.vectors["prosody"]):
        gender = next(r["gender"] for r in rows if r["id"] == uid)
        expected = data.population.reference(gender).relative(*own[uid])
        np.testing.assert_allclose(v, [expected[0], expected[1], np.log(expected[2])], rtol=1e-5, atol=1e-6)
        assert np.abs(v).sum() > 0.01  # measured, not the zeros a speaker of one utterance had
    # the training population, fitted on the train split only, is what a run keeps for `msf predict`
    train(TrainConfig(features=cache, sources="audio,prosody", speaker_norm=True, **FAST), tmp_path / "run",
          progress=False)
    kept = RunBaseline.load(tmp_path / "run")
    assert kept.population == data.population and kept.frames is not None
    assert "\x01population:" in kept.frames and "\x01population:female" in kept.frames


@pytest.mark.slow
def test_a_prediction_does_not_depend_on_the_files_beside_it(demo_features: Path, demo_corpus: Path,
                                                             tmp_path: Path) -> None:
    """One file predicted alone, among 5 others and among 50 others (some with a speaker, some without),
    each call with a cache of its own: the same numbers. The run uses prosody and speaker
    standardisation, the two speaker-relative quantities."""
    from typer.testing import CliRunner

    from msf.cli import app

    run = tmp_path / "run"
    train(TrainConfig(features=demo_features, sources="audio,gs,prosody", speaker_norm=True, **FAST), run,
          progress=False)
    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))
    target = rows[0]
    others = rows[1:51]
    for k, r in enumerate(others):
        r["speaker"] = "" if k % 3 == 0 else r["speaker"]  # a third without a speaker
    outs = {}
    for name, company in (("alone", []), ("five", others[:5]), ("fifty", others)):
        manifest = _manifest(demo_corpus, tmp_path / f"{name}.csv", [{**target, "speaker": ""}, *company])
        res = CliRunner().invoke(app, ["predict", str(manifest), "--run", str(run), "--json",
                                       "--keep-features", str(tmp_path / f"cache-{name}"),
                                       "--out", str(tmp_path / f"{name}.jsonl")])
        assert res.exit_code == 0, res.output
        got = {r["id"]: r for r in json.loads(res.stdout.strip().splitlines()[-1])}
        assert len(got) == 1 + len(company) and not any("error" in r for r in got.values()), got
        written = [json.loads(line) for line in open(tmp_path / f"{name}.jsonl")]
        assert {r["id"] for r in written} == set(got)
        outs[name] = np.array([got[target["id"]][t] for t in ("valence", "arousal", "dominance")])
    assert np.abs(outs["alone"] - outs["five"]).max() <= 1e-4, outs
    assert np.abs(outs["alone"] - outs["fifty"]).max() <= 1e-4, outs
