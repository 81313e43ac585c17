"""Fingerprints: an unchanged rerun computes nothing; a change recomputes exactly what it touches."""

from __future__ import annotations

from pathlib import Path

import toy_stages  # noqa: F401  (registers toy_energy, toy_summary)
from conftest import write_manifest, write_tone

from msf.pipeline.config import load_config
from msf.pipeline.run.extraction import Extraction

STAGES = ["toy_summary"]  # pulls in toy_energy and audio upstream, like make


def run(corpus: Path, cache: Path, *sets: str) -> dict[str, int]:
    cfg = load_config(None, list(sets), corpus=str(corpus), cache=cache,
                      plugins=["toy_stages"], shard_size=5)
    ex = Extraction(cfg)
    try:
        reports = ex.run(STAGES, progress=False)
    finally:
        ex.close()
    return {k: r.computed for k, r in reports.items()}


def counts(status: dict) -> dict[str, int]:
    return {k: status[k] for k in ("total", "fresh", "stale", "missing", "failed")}


def test_reruns_compute_exactly_what_changed(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 12)
    cache = tmp_path / "cache"
    assert run(corpus, cache) == {"audio": 12, "toy_energy": 12, "toy_summary": 12}
    assert run(corpus, cache) == {"audio": 0, "toy_energy": 0, "toy_summary": 0}
    # a downstream parameter: only that stage
    assert run(corpus, cache, "toy_summary.scale=2") == {"audio": 0, "toy_energy": 0, "toy_summary": 12}
    # an upstream parameter: that stage and everything downstream, nothing upstream
    assert run(corpus, cache, "toy_summary.scale=2", "toy_energy.gain=0.5") == {
        "audio": 0, "toy_energy": 12, "toy_summary": 12}
    # back to the first settings: their entries are still in the cache, kept under their fingerprints
    assert run(corpus, cache) == {"audio": 0, "toy_energy": 0, "toy_summary": 0}
    # one added audio file: exactly one entry per stage
    write_manifest(tmp_path / "c", 1, start=12)
    assert run(corpus, cache) == {"audio": 1, "toy_energy": 1, "toy_summary": 1}
    # one changed audio file (same path, new content): exactly one entry per stage
    write_tone(tmp_path / "c" / "wavs" / "u0003.wav", seconds=0.9, freq=333, seed=99)
    assert run(corpus, cache) == {"audio": 1, "toy_energy": 1, "toy_summary": 1}
    assert run(corpus, cache) == {"audio": 0, "toy_energy": 0, "toy_summary": 0}


def test_a_touched_but_identical_file_is_not_recomputed(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 4)
    cache = tmp_path / "cache"
    run(corpus, cache)
    wav = tmp_path / "c" / "wavs" / "u0001.wav"
    wav.write_bytes(wav.read_bytes())  # new mtime, same content: re-hashed, same fingerprint
    assert run(corpus, cache) == {"audio": 0, "toy_energy": 0, "toy_summary": 0}


def test_stored_values_follow_the_parameters(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 3)
    cache = tmp_path / "cache"
    run(corpus, cache)
    run(corpus, cache, "toy_summary.scale=3")

    def extraction(*sets: str) -> Extraction:
        return Extraction(load_config(None, list(sets), corpus=str(corpus), cache=cache, plugins=["toy_stages"]))

    base, tripled, unseen = extraction(), extraction("toy_summary.scale=3"), extraction("toy_summary.scale=5")
    # each variant under its own settings
    b, t = (x.view().records("toy_summary", ["u0001"])["u0001"] for x in (base, tripled))
    assert abs(t["mean"] - 3 * b["mean"]).max() < 1e-5
    assert t["tags"].tolist() == ["u0001", "dev"] and t["speaker"] == "spk1"
    assert counts(base.view().status()["toy_summary"]) == {"total": 3, "fresh": 3, "stale": 0, "missing": 0,
                                                           "failed": 0}
    assert counts(unseen.view().status()["toy_summary"]) == {"total": 3, "fresh": 0, "stale": 3, "missing": 0,
                                                             "failed": 0}
    for ex in (base, tripled, unseen):
        ex.close()


def test_bad_files_are_recorded_and_retried_while_the_rest_completes(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 5)
    (tmp_path / "c" / "wavs" / "u0002.wav").write_text("this is not audio")
    (tmp_path / "c" / "wavs" / "u0004.wav").unlink()
    cache = tmp_path / "cache"
    assert run(corpus, cache) == {"audio": 3, "toy_energy": 3, "toy_summary": 3}
    ex = Extraction(load_config(None, [], corpus=str(corpus), cache=cache, plugins=["toy_stages"]))
    failures = {(f.stage, f.utt): f for f in ex.store.index.failures()}
    assert "not a readable audio file" in failures[("audio", "u0002")].error
    assert failures[("audio", "u0002")].kind == failures[("audio", "u0004")].kind == "bad input"
    assert "audio file not found" in failures[("audio", "u0004")].error
    blocked = failures[("toy_energy", "u0002")]  # blocked upstream: a kind and a cause, the root's words once
    assert (blocked.kind, blocked.cause, blocked.error) == ("upstream", "audio", failures[("audio", "u0002")].error)
    assert counts(ex.view().status()["audio"]) == {"total": 5, "fresh": 3, "stale": 0, "missing": 0, "failed": 2}
    ex.close()
    write_tone(tmp_path / "c" / "wavs" / "u0004.wav", seed=4)  # fixed: retried and completed next run
    assert run(corpus, cache) == {"audio": 1, "toy_energy": 1, "toy_summary": 1}
