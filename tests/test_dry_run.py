"""Plan before you spend: `msf extract --dry-run` says what would be computed and why, with estimated
bytes and time, and writes nothing; a run whose estimate exceeds the free space stops unless --force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_manifest
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.corpora.demo import build_demo_corpus

STAGES = ("--stage", "acoustic", "--stage", "global", "--stage", "local", "--stage", "extended")


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def snapshot(cache: Path) -> dict[str, tuple[int, int]]:
    """Every file of a cache but SQLite's own housekeeping, with its size and mtime."""
    return {str(p.relative_to(cache)): (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.mark.slow
def test_the_dry_run_predicts_the_real_run_and_writes_nothing(tmp_path: Path) -> None:
    corpus = build_demo_corpus(tmp_path / "corpus", n=16, seed=6, progress=False)
    cache = tmp_path / "cache"
    base = ("extract", "--corpus", f"demo:{corpus}", "--cache", str(cache), "--profile", "offline",
            "--set", "align.backend=provided", *STAGES, "--json")
    code, out, err = cli(*base, "--dry-run", "--calibrate", "3")
    assert code == 0, err
    dry = last_json(out)["stages"]
    assert not cache.exists()  # a dry run on a new cache creates nothing
    assert all(s["why"] == {"new utterance": 16} for s in dry.values())
    code, out, err = cli(*base)
    assert code == 0, err
    real = last_json(out)["stages"]
    assert {k: v["to_compute"] for k, v in dry.items()} == {k: v["computed"] for k, v in real.items()}
    code, out, _ = cli("status", "--cache", str(cache), "--json")
    written = json.loads(out)["stages"]["acoustic"]["bytes"]
    assert abs(dry["acoustic"]["bytes"] - written) <= 0.25 * written, (dry["acoustic"], written)
    assert dry["acoustic"]["seconds"] > 0 and dry["acoustic"]["declared_bytes"] > 0

    # a change of settings on an existing cache: the same counts, the reasons, and not a byte written
    before = snapshot(cache)
    code, out, err = cli(*base, "--set", "emphasis.threshold=0.7", "--dry-run", "--calibrate", "2")
    assert code == 0, err
    dry = last_json(out)["stages"]
    assert snapshot(cache) == before
    assert dry["acoustic"]["to_compute"] == 0 and dry["acoustic"]["bytes"] == 0
    assert dry["emphasis"]["why"] == {"emphasis.threshold: 0.5 -> 0.7": 16}
    code, out, err = cli(*base, "--set", "emphasis.threshold=0.7")
    assert code == 0, err
    real = last_json(out)["stages"]
    assert {k: v["to_compute"] for k, v in dry.items()} == {k: v["computed"] for k, v in real.items()}
    assert real["emphasis"]["computed"] == real["local"]["computed"] == 16 and real["global"]["computed"] == 0


def test_a_run_that_would_not_fit_stops_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msf.pipeline.run import costs

    corpus = write_manifest(tmp_path / "c", 6)
    cache = tmp_path / "cache"
    args = ("extract", "--corpus", str(corpus), "--cache", str(cache), "--set", 'plugins=["toy_stages"]',
            "--stage", "toy_energy", "--json")
    monkeypatch.setattr(costs, "free_bytes", lambda path: 1000)  # a nearly full disk
    code, _, err = cli(*args)
    assert code == 2 and "stage 'toy_energy' would write about" in err and "1.0 KB free" in err, err
    assert "--force" in err and "Traceback" not in err
    code, out, err = cli(*args, "--dry-run", "--json")
    assert code == 0, err
    assert last_json(out)["free_bytes"] == 1000 and last_json(out)["stages"]["toy_energy"]["bytes"] > 1000
    code, out, err = cli(*args, "--force")
    assert code == 0 and last_json(out)["stages"]["toy_energy"]["computed"] == 6, err
    monkeypatch.setattr(costs, "free_bytes", lambda path: os.statvfs(path).f_bavail)
    code, out, _ = cli(*args)  # nothing left to write: no check, no complaint
    assert code == 0 and last_json(out)["stages"]["toy_energy"]["computed"] == 0


def test_the_run_the_dry_run_and_the_free_space_guard_plan_the_same_tasks(tmp_path: Path) -> None:
    """One planner (pipeline/run/tasks.py): a changed utterance of a group stage recomputes its whole
    group, in whole-group tasks; the dry run counts exactly that, and the run does exactly that."""
    from msf.pipeline.config import load_config
    from msf.pipeline.run.extraction import Extraction

    corpus = write_manifest(tmp_path / "c", 9)  # speakers spk0, spk1, spk2: three utterances each
    cache = tmp_path / "cache"
    args = ("extract", "--corpus", str(corpus), "--cache", str(cache), "--set", 'plugins=["toy_stages"]',
            "--set", "shard_size=4", "--stage", "toy_speaker_relative", "--json")
    code, out, err = cli(*args)
    assert code == 0 and last_json(out)["stages"]["toy_speaker_relative"]["computed"] == 9, err
    ex = Extraction(load_config(None, ['plugins=["toy_stages"]', "shard_size=4"], corpus=str(corpus), cache=cache))
    plan = ex.plan(["toy_speaker_relative"])
    # u0004 (spk1's) loses its entry, as `msf cache verify` drops a damaged one; spk1's others stay fresh
    ex.store.index.drop("toy_speaker_relative", [("u0004", plan["toy_speaker_relative"].fingerprints["u0004"])])
    planner = ex.planner(plan)
    for locate in (False, True):  # a dry run's view and a run's (upstream located): the same work
        work = planner.work("toy_speaker_relative", locate=locate)
        assert work.state.todo == ["u0004"] and work.recomputed == 2
        assert work.tasks == [["u0001", "u0004", "u0007"]]  # spk1, whole
    ex.close()
    code, out, err = cli(*args, "--dry-run", "--calibrate", "0")
    assert code == 0 and last_json(out)["stages"]["toy_speaker_relative"]["to_compute"] == 3, err
    code, out, err = cli(*args)
    report = last_json(out)["stages"]["toy_speaker_relative"]
    assert code == 0 and (report["computed"], report["reused"]) == (3, 6), err
