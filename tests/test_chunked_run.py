"""A run over a corpus larger than `chunk_size` streams it: the driver reads, hashes, plans and runs a
chunk of whole speakers at a time, and the cache it leaves is the one a run in one chunk leaves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import toy_stages  # noqa: F401  (registers toy_energy, toy_speaker_relative)
from conftest import write_tone

from msf.pipeline.cache.view import CacheView
from msf.pipeline.config import load_config
from msf.pipeline.corpus import CorpusError, load_corpus
from msf.pipeline.run.extraction import Extraction

STAGES = ["toy_speaker_relative"]  # audio -> toy_energy -> a speaker group stage
# spk_big (7 utterances) is larger than a chunk of 4; "Unknown" names nobody: each is a group of its own
SPEAKERS = ["spk_big", "spk_a", "Unknown", "spk_big", "spk_b", "spk_a", "spk_big", "Unknown", "spk_b", "spk_big",
            "spk_a", "spk_big", "spk_c", "spk_big", "Unknown", "spk_big"]


def corpus(root: Path, rows: list[tuple[str, str]] | None = None, valence: dict[int, str] | None = None) -> Path:
    """A manifest of tone utterances with the speakers above (or `rows` of (id, speaker))."""
    rows = rows or [(f"u{i:02d}", s) for i, s in enumerate(SPEAKERS)]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "speaker", "split", "valence", "arousal", "dominance"])
        for i, (uid, speaker) in enumerate(rows):
            wav = root / "wavs" / f"{uid}.wav"
            if not wav.exists():
                write_tone(wav, seconds=0.4 + 0.05 * (i % 7), freq=150 + 13 * i, seed=i)
            w.writerow([uid, f"wavs/{uid}.wav", speaker, "train", (valence or {}).get(i, 4.0), 3.0, 5.0])
    return root / "manifest.csv"


def extract(manifest: Path, cache: Path, chunk: int) -> dict[str, tuple[int, int, int]]:
    cfg = load_config(None, [], corpus=str(manifest), cache=cache, plugins=["toy_stages"], shard_size=3,
                      chunk_size=chunk)
    ex = Extraction(cfg)
    try:
        reports = ex.run(STAGES, progress=False)
    finally:
        ex.close()
    return {k: (r.computed, r.reused, r.failed) for k, r in reports.items()}


def contents(cache: Path) -> dict[str, dict[str, tuple[str, dict]]]:
    """Per stage, each utterance's fingerprint and record (arrays as lists)."""
    with CacheView.open(cache) as view:
        out = {}
        for stage in ("audio", "toy_energy", "toy_speaker_relative"):
            fps, recs = view.fingerprints(stage), view.records(stage)
            out[stage] = {u: (fps[u], {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in recs[u].items()})
                          for u in recs}
        return out


@pytest.fixture(scope="module")
def one_and_chunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("chunked")
    manifest = corpus(root / "c")
    n = len(SPEAKERS)
    assert extract(manifest, root / "one", 1000) == {s: (n, 0, 0) for s in ("audio", "toy_energy", *STAGES)}
    assert extract(manifest, root / "chunked", 4) == {s: (n, 0, 0) for s in ("audio", "toy_energy", *STAGES)}
    return manifest, root / "one", root / "chunked"


def test_a_run_in_chunks_leaves_the_cache_a_run_in_one_chunk_leaves(one_and_chunked: tuple[Path, Path, Path]) -> None:
    manifest, one, chunked = one_and_chunked
    assert contents(chunked) == contents(one)
    # every speaker's group was computed whole, the one larger than a chunk too; the unknown ones alone
    rel = contents(chunked)["toy_speaker_relative"]
    for i, speaker in enumerate(SPEAKERS):
        expected = 1 if speaker == "Unknown" else SPEAKERS.count(speaker)
        assert rel[f"u{i:02d}"][1]["group_size"] == expected, (speaker, rel[f"u{i:02d}"])
    with CacheView.open(chunked) as view:  # members in manifest order; markers recorded: status plans nothing
        assert [u.id for u in view.utterances] == [f"u{i:02d}" for i in range(len(SPEAKERS))]
        assert view._complete() is not None
    n = len(SPEAKERS)
    assert extract(manifest, chunked, 4) == {s: (0, n, 0) for s in ("audio", "toy_energy", *STAGES)}


def test_a_changed_file_recomputes_its_speaker_in_chunks_as_in_one(one_and_chunked: tuple[Path, Path, Path],
                                                                    tmp_path: Path) -> None:
    import shutil

    manifest, one, chunked = one_and_chunked
    root = tmp_path / "copy"
    shutil.copytree(manifest.parent, root / "c")
    for name in ("one", "chunked"):  # the caches name the audio by path: copy them beside the corpus
        shutil.copytree(one if name == "one" else chunked, root / name)
    write_tone(root / "c" / "wavs" / "u03.wav", seconds=0.8, freq=333, seed=99)  # a spk_big utterance
    big = SPEAKERS.count("spk_big")
    n = len(SPEAKERS)
    want = {"audio": (1, n - 1, 0), "toy_energy": (1, n - 1, 0), "toy_speaker_relative": (big, n - big, 0)}
    assert extract(root / "c" / "manifest.csv", root / "one", 1000) == want
    assert extract(root / "c" / "manifest.csv", root / "chunked", 4) == want
    assert contents(root / "chunked") == contents(root / "one")


def test_a_duplicate_in_a_later_chunk_is_refused_with_its_line(tmp_path: Path) -> None:
    rows = [(f"u{i:02d}", f"spk{i % 2}") for i in range(9)] + [("u01", "spk1")]
    manifest = corpus(tmp_path / "c", rows)
    cfg = load_config(None, [], corpus=str(manifest), cache=tmp_path / "cache", plugins=["toy_stages"], chunk_size=3)
    ex = Extraction(cfg)
    try:
        reports = ex.run(["toy_energy"], progress=False)
        assert reports["audio"].computed == 9
        assert ex.corpus_problems() == ["manifest.csv:11: duplicate utterance id 'u01'"]
    finally:
        ex.close()


def test_a_streamed_manifest_refuses_an_off_scale_label_as_a_whole_read_does(tmp_path: Path) -> None:
    manifest = corpus(tmp_path / "c", [(f"u{i:02d}", "spk") for i in range(30)],
                      valence={i: str(1 + (i % 7)) for i in range(30)} | {17: "9.5"})
    whole = [str(p) for p in load_corpus(str(manifest)).problems]
    assert len(whole) == 1 and whole[0].startswith("manifest.csv:19: valence label 9.5 is off the 1-7 scale")
    cfg = load_config(None, [], corpus=str(manifest), cache=tmp_path / "cache", plugins=["toy_stages"], chunk_size=4)
    ex = Extraction(cfg)
    try:
        assert ex.run(["audio"], progress=False)["audio"].computed == 29
        assert ex.corpus_problems() == whole
    finally:
        ex.close()


def test_a_manifest_refused_after_some_chunks_leaves_no_cache(tmp_path: Path) -> None:
    manifest = corpus(tmp_path / "c", [(f"u{i:02d}", "spk") for i in range(6)])
    manifest.write_bytes(manifest.read_bytes() + b"u99,wavs/u00.wav,spk,train,4,3,\xff\n")
    cfg = load_config(None, [], corpus=str(manifest), cache=tmp_path / "cache", plugins=["toy_stages"], chunk_size=2)
    ex = Extraction(cfg)
    try:
        with pytest.raises(CorpusError, match=r"manifest.csv:8: not UTF-8 text"):
            ex.run(["audio"], progress=False)
    finally:
        ex.close()
    assert not (tmp_path / "cache").exists()


def test_chunks_end_where_a_speaker_ends(one_and_chunked: tuple[Path, Path, Path]) -> None:
    from msf.pipeline.cache.planning import run_chunks
    from msf.pipeline.cache.shard_store import ShardStore

    _, _, chunked = one_and_chunked
    store = ShardStore(chunked, readonly=True)
    try:
        store.index.members_from_set("default")
        chunks = [[s.utt.id for s in c] for c in run_chunks(store.index, 4, "speaker")]
        whole = [[s.utt.id for s in c] for c in run_chunks(store.index, 1000, "speaker")]
    finally:
        store.close()
    assert whole == [[f"u{i:02d}" for i in range(len(SPEAKERS))]]  # one chunk: manifest order
    assert sorted(u for c in chunks for u in c) == whole[0] and len(chunks) > 3
    speaker = dict(zip(whole[0], SPEAKERS))
    for c in chunks:
        assert len(c) <= 4 or {speaker[u] for u in c} == {"spk_big"}  # a speaker larger than a chunk: whole
    for s in set(SPEAKERS) - {"Unknown"}:
        assert sum(any(speaker[u] == s for u in c) for c in chunks) == 1, s


def test_status_counted_a_chunk_at_a_time_equals_status_planned_whole(one_and_chunked: tuple[Path, Path, Path]
                                                                       ) -> None:
    manifest, _, chunked = one_and_chunked
    n = len(SPEAKERS)

    def status(chunk: int) -> dict:
        # another gain: no completion marker matches, so status plans (the set's members, chunk by chunk)
        cfg = load_config(None, ["toy_energy.gain=0.5"], corpus=str(manifest), cache=chunked, plugins=["toy_stages"],
                          chunk_size=chunk)
        with CacheView(chunked, "default", config=cfg) as view:
            return view.status(why=True)

    whole, in_chunks = status(1000), status(4)
    assert in_chunks == whole
    assert whole["audio"]["fresh"] == n and whole["toy_energy"]["stale"] == whole["toy_speaker_relative"]["stale"] == n
    assert whole["toy_energy"]["why"] == {"toy_energy.gain: 1.0 -> 0.5": n}


def test_failures_found_a_chunk_at_a_time_equal_those_of_the_whole_plan(tmp_path: Path) -> None:
    manifest = corpus(tmp_path / "c", [(f"u{i:02d}", f"spk{i % 3}") for i in range(9)])
    (tmp_path / "c" / "wavs" / "u05.wav").write_text("this is not audio")
    cfg = load_config(None, [], corpus=str(manifest), cache=tmp_path / "cache", plugins=["toy_stages"], chunk_size=3)
    ex = Extraction(cfg)
    try:
        assert ex.run(STAGES, progress=False)["audio"].failed == 1
    finally:
        ex.close()

    def failures(chunk: int) -> list[tuple[str, str, str, str]]:
        with CacheView(tmp_path / "cache", "default", config=cfg.model_copy(update={"chunk_size": chunk})) as view:
            return [(f.stage, f.utt, f.kind, f.cause) for f in view.failures()]

    assert failures(3) == failures(1000) == [("audio", "u05", "bad input", ""),
                                             ("toy_energy", "u05", "upstream", "audio"),
                                             ("toy_speaker_relative", "u05", "upstream", "audio")]
