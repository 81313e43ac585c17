"""A new user's first hour, driven through the CLI as they would: the default profile planned on a machine
without its models, exits that tell a partial run from a clean one, one name per thing (old spellings
warn and work), help that reads, labels off the scale refused, CCC not defined on too few utterances,
and a run continued for more epochs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import msf
from msf.cli import app
from msf.pipeline.errors import EXIT_PARTIAL, EXIT_USAGE
from conftest import write_manifest


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def no_hub_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hugging Face cache with nothing in it, whatever this machine has downloaded."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def test_the_default_profile_is_planned_whole_and_a_run_names_every_missing_model_at_once(
        tone_corpus: Path, tmp_path: Path, no_hub_models: None) -> None:
    cache = tmp_path / "cache"
    code, out, err = invoke("extract", "--corpus", str(tone_corpus), "--cache", str(cache), "--dry-run",
                            "--calibrate", "0")
    assert code == EXIT_USAGE, err
    flat = " ".join(out.split())
    for model in ("'microsoft/wavlm-large' (acoustic.model)", "'large-v3' (align.model)",
                  "'roberta-large' (extended.model, global.model, local.model)"):
        assert f"model {model}: MISSING: not on this machine" in flat, model
    assert "describe: MISSING: no endpoint named" in flat
    assert flat.count("--profile offline") >= 4  # each says what the offline profile uses instead
    assert "unknown" in flat and "about 0 B" not in flat  # sizes it cannot know are not 0 B
    assert "4 thing(s) missing" in " ".join(err.split())
    assert not cache.exists()
    code, out, _ = invoke("extract", "--corpus", str(tone_corpus), "--cache", str(cache), "--dry-run",
                          "--calibrate", "0", "--json")
    stages = json.loads(out.strip().splitlines()[-1])["stages"]
    assert code == EXIT_USAGE and stages["global"]["blocked"] == "roberta-large missing"
    assert stages["emphasis"]["blocked"] == "upstream align blocked" and "blocked" not in stages["audio"]
    assert stages["acoustic"]["bytes"] is None
    # a real run with the endpoint named: the three models in one message, before any work
    code, _, err = invoke("extract", "--corpus", str(tone_corpus), "--cache", str(cache),
                          "--set", "describe.base_url=http://127.0.0.1:9/v1")
    err = " ".join(err.split())
    assert code == EXIT_USAGE and "cannot start: 3 thing(s) missing" in err
    assert all(m in err for m in ("microsoft/wavlm-large", "large-v3", "roberta-large")) and "endpoint" not in err
    assert not cache.exists()
    # the offline profile has everything: nothing missing, exit 0
    code, out, _ = invoke("extract", "--corpus", str(tone_corpus), "--cache", str(cache), "--dry-run",
                          "--calibrate", "0", "--profile", "offline", "--json")
    plan = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and all(r["present"] for r in plan["requirements"]) and not cache.exists()


def test_a_model_given_as_a_local_folder_is_present(tmp_path: Path, no_hub_models: None) -> None:
    from msf.pipeline.backends.model_loading import BUNDLED_TINY_EN, model_present

    (tmp_path / "m").mkdir()
    assert not model_present(str(tmp_path / "m"), "transformers")  # a folder without a model in it
    (tmp_path / "m" / "config.json").write_text("{}")
    assert model_present(str(tmp_path / "m"), "transformers")
    assert model_present(BUNDLED_TINY_EN, "whisper") and not model_present("large-v3", "whisper")


def test_a_partial_extraction_has_its_own_exit_status_and_each_root_cause_is_listed_once(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 6)
    (tmp_path / "c" / "wavs" / "u0003.wav").unlink()
    cache = str(tmp_path / "cache")
    args = ("extract", "--corpus", str(corpus), "--cache", cache, "--set", 'plugins=["toy_stages"]', "--stage", "toy_summary",
            "--json")
    code, out, err = invoke(*args)
    assert code == EXIT_PARTIAL, err
    assert "finished with failures (audio 1, toy_energy 1" in " ".join(err.split())
    assert json.loads(out.strip().splitlines()[-1])["stages"]["audio"]["computed"] == 5
    first = [line for line in err.splitlines() if "audio file not found" in line]
    code, _, err = invoke(*args)  # the rerun: the same exit, and the missing file said the same way
    assert code == EXIT_PARTIAL and [line for line in err.splitlines() if "audio file not found" in line] == first
    code, out, _ = invoke("status", "--cache", cache, "--failed", "--json")
    status = json.loads(out.strip().splitlines()[-1])
    assert [(f["utterance"], f["stage"], f["kind"], sorted(f["blocked"])) for f in status["failed"]] == [
        ("u0003", "audio", "bad input", ["toy_energy", "toy_summary"])]
    assert status["stages"]["toy_summary"]["fresh"] == 5  # the good rows are fresh
    code, out, _ = invoke("status", "--cache", cache, "--failed")
    assert sum("audio file not found" in line for line in out.splitlines()) == 1  # once, not once per stage


def test_an_old_cache_s_failures_read_with_their_kind_and_cause(tmp_path: Path) -> None:
    """An index of schema 4 kept one failure per stage crossed, as a sentence around the root's error."""
    import sqlite3

    from msf.pipeline.cache.index import CacheIndex

    (tmp_path / "c").mkdir()
    db = sqlite3.connect(tmp_path / "c" / "index.sqlite")
    db.executescript("""CREATE TABLE failures (stage TEXT NOT NULL, utt TEXT NOT NULL, fingerprint TEXT NOT NULL,
        error TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (stage, utt, fingerprint));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema', '4');""")
    db.executemany("INSERT INTO failures VALUES (?,?,?,?,?)", [
        ("audio", "u1", "f1", "audio file not found: x.wav", 1.0),
        ("align", "u1", "f2", "upstream stage 'audio' failed: audio file not found: x.wav", 1.0),
        ("emphasis", "u1", "f3", "upstream stage 'align' failed: upstream stage 'audio' failed: audio file "
                                 "not found: x.wav", 1.0)])
    db.commit()
    db.close()
    db = sqlite3.connect(tmp_path / "c" / "index.sqlite")  # the other tables of an old index, empty
    db.execute("CREATE TABLE entries (stage TEXT, utt TEXT, fingerprint TEXT, shard TEXT, row INTEGER, "
               "checksum TEXT, bytes INTEGER, params TEXT, audio TEXT, fields TEXT, upstream TEXT, grp TEXT, "
               "created REAL)")
    db.commit()
    db.close()
    for readonly in (True, False):  # converted as read, and migrated by a writer
        index = CacheIndex(tmp_path / "c", readonly=readonly)
        got = {f.stage: (f.kind, f.cause, f.error) for f in index.failures()}
        index.close()
        assert got["emphasis"] == got["align"] == ("upstream", "audio", "audio file not found: x.wav")
        assert got["audio"] == ("error", "", "audio file not found: x.wav")


def test_old_spellings_warn_and_work(demo_features: Path, tmp_path: Path) -> None:
    code, _, err = invoke("export", "--features", str(demo_features), "--format", "npy", str(tmp_path / "x"),
                          "--fields", "global.embedding")
    assert code == 0 and "is now --out DIR" in err and (tmp_path / "x" / "manifest.csv").exists()
    code, _, err = invoke("corpus", "layout", str(tmp_path / "nowhere"), str(tmp_path / "y"), "--as", "iemocap")
    assert code == EXIT_USAGE and "is now --out DIR" in err and "no demo corpus" in err  # warned, then ran
    code, _, err = invoke("evaluate", "--run", str(tmp_path / "r"), "--features", str(demo_features),
                          "--corpus", "a.csv", "--labels", "b.csv")
    assert code == EXIT_USAGE and "--corpus is the old name of --labels" in err
    code, _, err = invoke("predict", str(tmp_path / "a.wav"), "--run", str(tmp_path / "r"), "--cache", "c",
                          "--keep-features", "d")
    assert code == EXIT_USAGE and "--cache is the old name of --keep-features" in err


def test_help_reads_well() -> None:
    for command in (["train"], ["ablate"], ["extract"], ["predict"], ["evaluate"], ["export"], ["status"],
                    ["corpus", "demo"], ["cache", "gc"]):
        code, out, _ = invoke(*command, "--help")
        assert code == 0
        assert "<" not in out and "list[" not in out, (command, out)  # metavars a person reads
        lines = out.splitlines()
        options = lines[lines.index("Options:") + 1:]
        for k, line in enumerate(options):  # every option described, on its own line or the next
            if line.startswith("  -"):
                assert len(line.split()) > 2 or options[k + 1].startswith(" " * 20), (command, line)
    assert "[train] section" in " ".join(invoke("train", "--help")[1].split())
    assert "--labels MANIFEST" in invoke("train", "--help")[1] and "--epochs N" in invoke("ablate", "--help")[1]
    assert issubclass(msf.NotFound, msf.MsfError) and issubclass(msf.UsageError, msf.MsfError)


def test_a_label_far_off_the_corpus_s_scale_is_refused_unless_the_scale_is_declared(tmp_path: Path) -> None:
    from msf.pipeline.corpus import load_corpus

    path = tmp_path / "m.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "speaker", "split", "valence", "arousal", "dominance"])
        for i in range(40):
            w.writerow([f"u{i}", f"u{i}.wav", "s", "train", *np.round(rng.uniform(1, 7, 3), 2)])
        w.writerow(["typo", "t.wav", "s", "train", 9.5, 4, 4])
        w.writerow(["edge", "e.wav", "s", "train", 7.0, 1.0, 4])  # the scale's own ends are fine
    c = load_corpus(str(path), check_audio=False)
    assert "typo" not in {u.id for u in c.utterances} and "edge" in {u.id for u in c.utterances}
    [problem] = [str(p) for p in c.problems]
    assert problem.startswith("m.csv:42: valence label 9.5 is off the 1-7 scale") and "label_range" in problem
    declared = load_corpus(str(path), label_range=(1.0, 10.0), check_audio=False)
    assert "typo" in {u.id for u in declared.utterances} and not declared.problems


def test_ccc_is_not_defined_on_fewer_than_three_utterances() -> None:
    from msf.trainer.model import ccc_scores

    gold = np.array([[1.0, 2, 3], [2, 3, 4]], np.float32)
    assert ccc_scores(gold[:1], gold[:1])["ccc_mean"] is None
    assert set(ccc_scores(gold + 1, gold).values()) == {None}  # two utterances: +-1 whatever the model
    three = np.array([[1.0, 2, 3], [2, 3, 4], [3, 3, 5]], np.float32)
    assert ccc_scores(three, three)["ccc_mean"] == 1.0


def test_a_run_continued_for_more_epochs_is_the_longer_run(demo_features: Path, tmp_path: Path) -> None:
    base = ["--features", str(demo_features), "--sources", "audio", "--set", "train.hidden=16"]
    code, _, err = invoke("train", *base, "--epochs", "2", "--out", str(tmp_path / "a"))
    assert code == 0, err
    code, out, err = invoke("train", *base, "--epochs", "3", "--out", str(tmp_path / "a"))
    assert code == 0 and "to 3 epochs (it was started for 2)" in " ".join(err.split())
    continued = json.loads(out.strip().splitlines()[-1])
    code, out, _ = invoke("train", *base, "--epochs", "3", "--out", str(tmp_path / "b"))
    assert json.loads(out.strip().splitlines()[-1])["test"] == continued["test"]
    code, _, err = invoke("train", *base, "--epochs", "3", "--seed", "1", "--out", str(tmp_path / "a"))
    assert code == EXIT_USAGE and "seed: 0 there, 1 now" in err and "only a larger --epochs" in " ".join(err.split())
    shutil.rmtree(tmp_path / "a")
