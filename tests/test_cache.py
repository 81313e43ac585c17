"""The cache as the product: variants side by side (A -> B -> A computes nothing), a failure kept by
the variant that failed, named feature sets trained from one cache (evaluating on the other set
names the setting that differs; a mistyped name lists the cache's sets), a cache that trains with
no audio, audio identified by content, `status --why`, unknown speakers, and gc by what the named
sets reference."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import direct_hidden_states, save_tiny_encoder, write_manifest
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.audio_io import load_waveform
from msf.pipeline.cache.index import SCHEMA_VERSION, Failure
from msf.pipeline.errors import EXIT_PARTIAL
from msf.pipeline.config import load_config
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.corpus import Utterance
from msf.pipeline.run.extraction import Extraction

FAST = dict(epochs=3, patience=100, hidden=32, batch_size=16)


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def extract(corpus: str, cache: Path, *args: str) -> dict[str, dict]:
    code, out, err = cli("extract", "--corpus", corpus, "--cache", str(cache), "--json", *args)
    stages = json.loads(out.strip().splitlines()[-1])["stages"]
    assert code == (EXIT_PARTIAL if any(s["failed"] for s in stages.values()) else 0), err
    return stages


def computed(stages: dict[str, dict]) -> dict[str, int]:
    return {k: v["computed"] for k, v in stages.items()}


@pytest.fixture
def small_demo(tmp_path: Path) -> Path:
    return build_demo_corpus(tmp_path / "corpus", n=12, seed=3, progress=False)


def test_a_b_a_computes_nothing_the_third_time(small_demo: Path, tmp_path: Path) -> None:
    args = ("--set", "align.backend=provided", "--stage", "emphasis")
    a = extract(f"demo:{small_demo}", tmp_path / "cache", *args, "--set", "emphasis.threshold=0.5")
    assert computed(a) == {"audio": 12, "align": 12, "emphasis": 12}
    b = extract(f"demo:{small_demo}", tmp_path / "cache", *args, "--set", "emphasis.threshold=0.6")
    assert computed(b) == {"audio": 0, "align": 0, "emphasis": 12}
    again = extract(f"demo:{small_demo}", tmp_path / "cache", *args, "--set", "emphasis.threshold=0.5")
    assert computed(again) == {"audio": 0, "align": 0, "emphasis": 0}
    code, out, _ = cli("status", "--cache", str(tmp_path / "cache"), "--json")
    emphasis = json.loads(out)["stages"]["emphasis"]
    assert emphasis["fresh"] == 12 and 1.9 < emphasis["bytes_all"] / emphasis["bytes"] < 2.1  # two variants kept


def test_a_failure_belongs_to_the_variant_that_failed(tmp_path: Path) -> None:
    corpus, cache = str(write_manifest(tmp_path / "c", 4)), tmp_path / "cache"
    base = ("--set", 'plugins=["toy_stages"]', "--stage", "toy_picky")
    strict = (*base, "--name", "strict", "--set", "toy_picky.refuse=u0001")
    assert extract(corpus, cache, *strict)["toy_picky"] | {"seconds": 0} == {
        "computed": 3, "reused": 0, "failed": 1, "seconds": 0}
    assert computed(extract(corpus, cache, *base, "--name", "lenient"))["toy_picky"] == 4  # u0001 too
    expected = {"strict": [("u0001", "toy_picky", "refused by this setting (refuse=u0001)")], "lenient": []}
    for name, failures in expected.items():
        code, out, _ = cli("status", "--cache", str(cache), "--name", name, "--failed", "--json")
        data = json.loads(out)
        assert code == 0 and (data["stages"]["toy_picky"]["failed"], data["stages"]["toy_picky"]["stale"]) == (
            len(failures), 0)
        assert [(f["utterance"], f["stage"], f["error"]) for f in data["failed"]] == failures
    again = extract(corpus, cache, *strict)["toy_picky"]  # the strict variant retries its own failure
    assert (again["computed"], again["reused"], again["failed"]) == (0, 3, 1)


def test_a_schema_2_index_keeps_its_failures_keyed_by_fingerprint(tmp_path: Path) -> None:
    import sqlite3

    from msf.pipeline.cache.index import CacheIndex

    (tmp_path / "cache").mkdir()
    db = sqlite3.connect(tmp_path / "cache" / "index.sqlite")
    db.execute("CREATE TABLE failures (stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL, "
               "error TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (stage, utt))")
    db.execute("INSERT INTO failures VALUES ('align', 'u1', 'fp-a', 'no path', 1.0)")
    db.commit()
    db.close()
    index = CacheIndex(tmp_path / "cache")
    index.commit([], [Failure("align", "u1", "fp-b", "too quiet", 2.0)])  # a second variant's failure
    assert sorted((f.fingerprint, f.error) for f in index.failures("align")) == [("fp-a", "no path"),
                                                                                ("fp-b", "too quiet")]
    assert index.get_meta("schema") == SCHEMA_VERSION
    index.close()


def test_two_named_feature_sets_train_from_one_cache(demo_corpus: Path, tmp_path: Path) -> None:
    from msf.trainer.data import FeatureSet
    from msf.trainer.train import TrainConfig, train

    model, cache = save_tiny_encoder("wavlm", tmp_path / "wavlm"), tmp_path / "cache"
    for name, layer in (("layer1", 1), ("layer2", 2)):
        s = extract(f"demo:{demo_corpus}", cache, "--name", name, "--stage", "acoustic",
                    "--set", f"acoustic.model={model}", "--set", f"acoustic.layers=[{layer}]")
        assert s["acoustic"]["computed"] == 80 and s["audio"]["computed"] == (80 if layer == 1 else 0)
    runs = {}
    for name, layer in (("layer1", 1), ("layer2", 2)):
        data = FeatureSet(cache, ("audio",), name=name)
        uid = data.splits["train"].ids[0]
        utt = next(u for u in Extraction(load_config(None, [], corpus=f"demo:{demo_corpus}", cache=cache)).corpus.utterances
                   if u.id == uid)
        expected = direct_hidden_states(model, load_waveform(utt.audio), layer)
        np.testing.assert_allclose(data.splits["train"].column.read([0])[0], expected, atol=2e-2, rtol=1e-2)
        runs[name] = train(TrainConfig(features=cache, name=name, sources="audio", speaker_norm=False, **FAST),
                           tmp_path / name, progress=False, data=data)
    assert runs["layer1"]["data"]["feature_set"] == "layer1" and runs["layer2"]["data"]["feature_set"] == "layer2"
    assert runs["layer1"]["data"]["digest"] != runs["layer2"]["data"]["digest"]
    assert runs["layer1"]["test"] != runs["layer2"]["test"]
    code, out, _ = cli("status", "--cache", str(cache), "--name", "layer2", "--json")
    status = json.loads(out)
    assert status["stages"]["acoustic"]["fresh"] == 80 and status["feature_sets"] == ["layer1", "layer2"]
    for name, note in (("layer1", ""), ("layer2", "acoustic.layers: [1] -> [2]")):  # the same run on either set
        code, out, err = cli("evaluate", "--run", str(tmp_path / "layer1"), "--features", str(cache), "--name", name)
        assert code == 0 and set(json.loads(out)) == {"dev", "test"}, err
        assert (f"differ from the run's training features in {note}" in err) == bool(note), err
    for command in (("status", "--cache", str(cache)), ("train", "--features", str(cache), "--out", str(tmp_path / "x"))):
        code, _, err = cli(*command, "--name", "layer3")  # a typo: the sets there, not an internal error
        assert code == 2 and "no feature set 'layer3'" in err and "'layer1', 'layer2'" in err, err


@pytest.mark.slow
def test_a_copied_cache_trains_evaluates_and_reports_without_its_audio(tmp_path: Path) -> None:
    corpus = build_demo_corpus(tmp_path / "corpus", n=40, seed=4, progress=False)
    extract(f"demo:{corpus}", tmp_path / "cache", "--profile", "offline", "--stage", "acoustic")
    shutil.copytree(tmp_path / "cache", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(corpus)  # no audio, no manifest: only the copied cache
    copy = str(tmp_path / "elsewhere")
    code, out, err = cli("train", "--features", copy, "--sources", "audio", "--epochs", "2", "--out",
                         str(tmp_path / "run"))
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["skipped"] == {} and metrics["test"]["n"] == metrics["data"]["test"] > 0
    code, out, err = cli("evaluate", "--run", str(tmp_path / "run"), "--features", copy)
    assert code == 0, err
    assert json.loads(out)["test"] == metrics["test"]  # the same figures, and n
    code, out, _ = cli("status", "--cache", copy, "--json")
    assert {s: c["fresh"] for s, c in json.loads(out)["stages"].items()} == {"audio": 40, "acoustic": 40}
    code, out, _ = cli("show", "--cache", copy, "--stage", "acoustic", "demo_00003", "--json")
    assert code == 0 and json.loads(out)["frames"]["dtype"] == "float16"


def test_labels_and_splits_from_a_newer_manifest(demo_features: Path, demo_corpus: Path, tmp_path: Path) -> None:
    from msf.trainer.data import FeatureSet

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))
    for r in rows:
        r["valence"] = "1.5"  # fixed labels
    rows[0]["split"] = "dev"
    rows.append(dict(rows[1], id="not_in_the_cache"))
    manifest = tmp_path / "labels.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:-2] + rows[-1:])  # one cached utterance left out, one unknown row added
    data = FeatureSet(demo_features, ("audio",), labels=str(manifest))
    assert all((s.labels[:, 0] == 1.5).all() for s in data.splits.values())
    assert rows[0]["id"] in data.splits["dev"].ids
    assert data.skipped == {"not in the label manifest": 1} and data.unmatched_label_rows == 1


def test_a_moved_corpus_folder_computes_nothing(small_demo: Path, tmp_path: Path) -> None:
    args = ("--set", "align.backend=provided", "--stage", "emphasis")
    assert computed(extract(f"demo:{small_demo}", tmp_path / "cache", *args))["emphasis"] == 12
    moved = tmp_path / "renamed" / "elsewhere"
    moved.parent.mkdir()
    small_demo.rename(moved)
    assert computed(extract(f"demo:{moved}", tmp_path / "cache", *args)) == {"audio": 0, "align": 0, "emphasis": 0}


def test_status_why_names_what_changed(small_demo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract(f"demo:{small_demo}", cache, "--set", "align.backend=provided", "--stage", "emphasis")
    rows = list(csv.DictReader(open(small_demo / "manifest.csv")))
    x, sr = sf.read(small_demo / rows[0]["audio"], dtype="float32")
    sf.write(small_demo / rows[0]["audio"], x * 0.5, sr, subtype="PCM_16")  # new audio content
    rows[1]["transcript"] = rows[1]["transcript"].replace("the", "that", 1)  # a corrected transcript
    rows.append(dict(rows[2], id="demo_new"))  # a new utterance
    with open(small_demo / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code, out, err = cli("status", "--cache", str(cache), "--why", "--json", "--corpus", f"demo:{small_demo}",
                         "--set", "emphasis.threshold=0.6")
    assert code == 0, err
    why = {s: c["why"] for s, c in json.loads(out)["stages"].items()}
    assert why["audio"] == {"audio content changed": 1, "new utterance": 1}
    assert why["align"] == {"audio content changed": 1, "transcript changed": 1, "new utterance": 1}
    assert why["emphasis"]["emphasis.threshold: 0.5 -> 0.6"] == 10  # a parameter, nothing else, for the rest
    assert why["emphasis"]["new utterance"] == 1
    # the speaker groups of the two changed utterances: their members carry both reasons
    assert sum(why["emphasis"].values()) == 13
    code, out, _ = cli("status", "--cache", str(cache), "--why")
    assert code == 0 and "fresh" in out  # against its recorded settings and rows: nothing to say
    code, out, _ = cli("status", "--cache", str(cache), "--why", "--set", "emphasis.threshold=0.6")
    assert "emphasis: emphasis.threshold: 0.5 -> 0.6 (12)" in out
    shard = sorted((cache / "align").glob("shard-*.h5"))[0]
    shard.unlink()  # deleted outside msf: its entries are stale, and that is the reason given
    code, out, _ = cli("status", "--cache", str(cache), "--why", "--json")
    assert json.loads(out)["stages"]["align"]["why"] == {f"shard file {shard.name} missing (deleted outside msf)": 12}


def test_unknown_speakers_are_never_one_group(small_demo: Path, tmp_path: Path) -> None:
    assert Utterance("a", "", speaker="Unknown").group_key("speaker") != Utterance("b", "", speaker="Unknown").group_key("speaker")
    assert Utterance("a", "", speaker="").group_key("speaker") != Utterance("b", "", speaker=" ").group_key("speaker")
    assert Utterance("a", "", speaker="spk1").group_key("speaker") == Utterance("b", "", speaker="spk1").group_key("speaker")
    rows = list(csv.DictReader(open(small_demo / "manifest.csv")))
    for i, r in enumerate(rows[:6]):  # MSP-Podcast's "Unknown", and empty cells
        r["speaker"] = "Unknown" if i % 2 else ""
    with open(small_demo / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    args = ("--set", "align.backend=provided", "--stage", "emphasis")
    extract(f"demo:{small_demo}", tmp_path / "cache", *args)
    x, sr = sf.read(small_demo / rows[1]["audio"], dtype="float32")
    sf.write(small_demo / rows[1]["audio"], x * 0.5, sr, subtype="PCM_16")
    assert computed(extract(f"demo:{small_demo}", tmp_path / "cache", *args))["emphasis"] == 1  # its own group only
    ex = Extraction(load_config(None, ["align.backend=provided"], corpus=f"demo:{small_demo}", cache=tmp_path / "cache"))
    alone = ex.view().records("emphasis", [rows[1]["id"]])[rows[1]["id"]]
    # no speaker baseline: no speaker-relative values (the trainer puts it against the population), and
    # the utterance's own measures
    assert alone["speaker_baseline"] is False and np.isnan(alone["pitch_st"]) and np.isnan(alone["rate_ratio"])
    assert alone["f0_median_hz"] > 0 and alone["rate_syl_s"] > 0
    ex.close()


def test_gc_removes_what_no_named_set_references(tmp_path: Path) -> None:
    corpus = str(write_manifest(tmp_path / "c", 6))
    cache = tmp_path / "cache"
    base = ("--set", 'plugins=["toy_stages"]', "--set", "shard_size=3", "--stage", "toy_summary")
    extract(corpus, cache, *base, "--set", "toy_summary.scale=1")  # default: scale 1 ...
    extract(corpus, cache, *base, "--set", "toy_summary.scale=2")  # ... then scale 2: scale 1 is unreferenced
    extract(corpus, cache, *base, "--set", "toy_summary.scale=3", "--name", "kept")
    code, out, _ = cli("cache", "gc", "--cache", str(cache), "--json")
    plan = json.loads(out)
    assert plan["by_stage"] == {"toy_summary": 6} and plan["files"] == 2 and not plan["removed"]
    code, out, _ = cli("cache", "gc", "--cache", str(cache), "--yes")
    assert code == 0 and "removed 6 entries" in out
    for name in ("default", "kept"):
        code, out, _ = cli("status", "--cache", str(cache), "--name", name, "--json")
        assert json.loads(out)["stages"]["toy_summary"]["fresh"] == 6
    assert computed(extract(corpus, cache, *base, "--set", "toy_summary.scale=1"))["toy_summary"] == 6  # gone
    code, _, _ = cli("cache", "forget", "kept", "--cache", str(cache))
    code, out, _ = cli("cache", "gc", "--cache", str(cache), "--json")
    assert json.loads(out)["by_stage"] == {"toy_summary": 12}  # scale 2 and scale 3: no set names them now
    code, _, err = cli("cache", "forget", "nope", "--cache", str(cache))
    assert code == 2 and "no feature set 'nope'" in err


def test_the_read_api_opens_a_cache_of_an_earlier_index_schema(tmp_path: Path) -> None:
    """A cache whose index an earlier msf wrote (schema 2: failures keyed by stage and utterance, the
    labels in three columns valence, arousal, dominance) opens read-only through `msf.open_cache` as it
    is, labels, failures and records included; a writer migrates it to named targets, keeping every row."""
    import sqlite3

    import msf

    corpus = str(write_manifest(tmp_path / "c", 6))
    cache = tmp_path / "cache"
    base = ("--set", 'plugins=["toy_stages"]', "--stage", "toy_summary")
    extract(corpus, cache, *base)
    with msf.open_cache(cache) as view:
        now = {u.id: (u.labels, u.targets, u.extra, u.split) for u in view.utterances}
    assert len(now) == 6 and all(labels is not None for labels, *_ in now.values())
    db = sqlite3.connect(cache / "index.sqlite")  # back to schema 2, as msf wrote it then
    db.execute("ALTER TABLE failures RENAME TO f3")
    db.execute("CREATE TABLE failures (stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL, "
               "error TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (stage, utt))")
    db.execute("INSERT INTO failures VALUES ('toy_summary', 'u0099', 'fp-a', 'old failure', 1.0)")
    db.execute("DROP TABLE f3")
    rows = db.execute("SELECT * FROM utterances").fetchall()
    db.execute("DROP TABLE utterances")
    db.execute("CREATE TABLE utterances (id TEXT PRIMARY KEY, audio TEXT NOT NULL, speaker TEXT NOT NULL, "
               "split TEXT NOT NULL, transcript TEXT, valence REAL, arousal REAL, dominance REAL, extra TEXT NOT "
               "NULL, audio_hash TEXT NOT NULL, files TEXT NOT NULL)")
    labelled = [(*r[:5], *(json.loads(r[5]).get(k) for k in ("valence", "arousal", "dominance")), *r[6:]) for r in rows]
    labelled[0] = (*labelled[0][:5], None, None, None, *labelled[0][8:])  # an unlabelled row
    db.executemany("INSERT INTO utterances VALUES (?,?,?,?,?,?,?,?,?,?,?)", labelled)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    first = labelled[0][0]
    now[first] = (None, {}, *now[first][2:])
    with msf.open_cache(cache) as view:
        assert len(view.records("toy_summary")) == 6 and view.failures() == []
        assert {u.id: (u.labels, u.targets, u.extra, u.split) for u in view.utterances} == now
    code, out, err = cli("status", "--cache", str(cache), "--json")  # a reader: it reads, and changes nothing
    assert code == 0 and json.loads(out)["stages"]["toy_summary"]["fresh"] == 6, err
    db = sqlite3.connect(cache / "index.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "2"
    db.close()
    assert computed(extract(corpus, cache, *base))["toy_summary"] == 0  # a writer migrates, reusing all
    db = sqlite3.connect(cache / "index.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == SCHEMA_VERSION
    assert "targets" in {r[1] for r in db.execute("PRAGMA table_info(utterances)")}
    db.close()


def test_a_cache_of_a_newer_index_schema_is_refused_with_the_version(tmp_path: Path) -> None:
    import sqlite3

    import msf
    from msf.pipeline.config import ConfigError

    corpus = str(write_manifest(tmp_path / "c", 3))
    extract(corpus, tmp_path / "cache", "--set", 'plugins=["toy_stages"]', "--stage", "toy_summary")
    db = sqlite3.connect(tmp_path / "cache" / "index.sqlite")
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"written by a newer msf \(index schema 9\); this msf reads index "
                                          rf"schemas 2 to {SCHEMA_VERSION}: upgrade msf"):
        msf.open_cache(tmp_path / "cache")
