"""The paper's protocol on corpora laid out as MSP-Podcast and IEMOCAP ship (pipeline/corpora/layouts.py):
Test1 and Test2 scored on their own with nothing dropped, IEMOCAP's markers kept out of the words, a
marker-only turn scored, five folds in one command, and the bad inputs of that protocol."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import msf
from msf.cli import app

pytestmark = pytest.mark.slow
STAGES = ["acoustic", "global", "local", "extended", "emphasis"]
FAST = ["--epochs", "3", "--set", "train.hidden=16", "--set", "train.patience=100", "--set", "train.batch_size=8"]


def _extract(spec: str, cache: Path) -> None:
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.run.executors import InProcessExecutor
    from msf.pipeline.run.extraction import Extraction

    # in this process: the layouts are what is tested here; Dask runs are tested in test_execution.py
    ex = Extraction(MsfConfig(corpus=spec, cache=cache, profile="offline", workers=2), executor=InProcessExecutor())
    ex.run(STAGES, progress=False)
    ex.close()


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from msf.pipeline.corpora.demo import build_demo_corpus
    from msf.pipeline.corpora.layouts import lay_out

    root = tmp_path_factory.mktemp("shaped")
    demo = build_demo_corpus(root / "demo", n=30, seed=3, workers=2, progress=False)
    out = {}
    for kind in ("msp-podcast", "iemocap"):
        lay_out(demo, root / kind, kind)
        _extract(f"{kind}:{root / kind}", root / f"{kind}-cache")
        out[kind] = root / kind
        out[f"{kind}-cache"] = root / f"{kind}-cache"
    return out


def test_msp_podcast_test1_and_test2_are_scored_with_nothing_dropped(shaped: dict[str, Path], tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(shaped["msp-podcast"] / "Labels" / "labels_consensus.csv")))
    n = {s: sum(r["Split_Set"] == s for r in rows) for s in ("Test1", "Test2", "Development")}
    assert sum(r["SpkrID"] == "Unknown" for r in rows) >= len(rows) // 3
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--features", str(shaped["msp-podcast-cache"]), "--out", str(run),
                                   "--sources", "audio,gs,les,es,prosody", "--require-full-coverage", *FAST])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    assert (m["test"]["n"], m["test2"]["n"], m["dev"]["n"]) == (n["Test1"], n["Test2"], n["Development"])
    assert m["skipped"] == {} and list(csv.reader(open(run / "dropped.csv"))) == [["id", "split", "reason"]]
    assert m["coverage"]["test2"] == {"kept": n["Test2"], "total": n["Test2"]}
    preds = list(csv.DictReader(open(run / "predictions.csv")))
    assert sum(p["split"] == "test2" for p in preds) == n["Test2"]
    # the 40 s segment trained with the rest
    with msf.open_cache(shaped["msp-podcast-cache"]) as cache:
        long = max(cache.utterances, key=lambda u: len(u.transcript or ""))
        frames = cache.column("acoustic.frames", [long.id]).read([0])[0]
        assert len(frames) >= 39 * 50  # 40 s at 50 frames/s
    # bad input: folds on a corpus without sessions
    res = CliRunner().invoke(app, ["train", "--features", str(shaped["msp-podcast-cache"]), "--out",
                                   str(tmp_path / "f"), "--folds", "all"])
    assert res.exit_code == 2 and "--folds applies to corpora with sessions" in res.output


def test_iemocap_markers_are_not_words_and_a_marker_only_turn_is_scored(shaped: dict[str, Path]) -> None:
    with msf.open_cache(shaped["iemocap-cache"]) as cache:
        utts = cache.utterances
        words = [w for r in cache.records("align").values() for w in r["words"]]
        assert words and not {"laughter", "breathing", "[laughter]"} & set(words)
        marker_only = [u for u in utts if u.extra.get("nonverbal")]
        assert [u.extra["nonverbal"] for u in marker_only] == ["[LAUGHTER]"] and marker_only[0].transcript is None
        assert not any("[" in (u.transcript or "") for u in utts)
        assert marker_only[0].id in cache.records("acoustic")  # its audio is there
        assert marker_only[0].id not in cache.records("global")  # no words: GS fails, and is masked


def test_five_folds_in_one_command(shaped: dict[str, Path], tmp_path: Path) -> None:
    with msf.open_cache(shaped["iemocap-cache"]) as cache:
        everyone = {u.id for u in cache.utterances}
        marker_only = next(u.id for u in cache.utterances if u.extra.get("nonverbal"))
    out = tmp_path / "folds"
    res = CliRunner().invoke(app, ["train", "--features", str(shaped["iemocap-cache"]), "--out", str(out),
                                   "--folds", "all", "--sources", "audio,gs,les,es", "--require-full-coverage", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "folds.json").read_text())
    assert sorted(summary["folds"]) == ["1", "2", "3", "4", "5"]
    assert summary["pooled"]["n"] == len(everyone)  # every turn tested once, the marker-only one included
    tested = [r["id"] for k in range(1, 6) for r in csv.DictReader(open(out / f"fold-{k}" / "predictions.csv"))
              if r["split"] == "test"]
    assert sorted(tested) == sorted(everyone) and marker_only in tested
    for k in range(1, 6):
        cfg = json.loads((out / f"fold-{k}" / "config.json").read_text())
        assert cfg["fold"] == k and cfg["fold_dev"] == "speaker"
    means = summary["mean"]
    assert set(means) == {"ccc_valence", "ccc_arousal", "ccc_dominance", "ccc_mean"} and "sd" in summary
    # an ensemble per fold (here of the folds' runs with themselves: the runs' own figures), pooled over folds
    ens = tmp_path / "ensemble"
    res = CliRunner().invoke(app, ["ensemble", "--run", str(out), "--run", str(out), "--out", str(ens),
                                   "--features", str(shaped["iemocap-cache"])])
    assert res.exit_code == 0, res.output
    assert sorted(p.parent.name for p in ens.glob("fold-*/ensemble.json")) == [f"fold-{k}" for k in range(1, 6)]
    pooled = json.loads((ens / "folds.json").read_text())["pooled"]
    assert pooled == summary["pooled"]
    res = CliRunner().invoke(app, ["evaluate", "--run", str(ens), "--features", str(shaped["iemocap-cache"])])
    assert res.exit_code == 0 and json.loads(res.stdout)["pooled"] == pooled
    for bad, says in ((["--folds", "6"], "IEMOCAP folds are 1..5"), (["--folds", "all", "--fold", "2"],
                                                                     "give one of them")):
        res = CliRunner().invoke(app, ["train", "--features", str(shaped["iemocap-cache"]), "--out",
                                       str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and says in res.output, res.output
