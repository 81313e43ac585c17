from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_tone

from msf.pipeline.corpora.iemocap import refold, split_for_fold
from msf.pipeline.corpus import CorpusError, load_corpus


def test_csv_manifest_reports_bad_rows_and_loads_the_rest(tmp_path: Path) -> None:
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav")
    (tmp_path / "m.csv").write_text(
        "id,audio,transcript,speaker,split,valence,arousal,dominance\n"
        "a,a.wav,hello there,s1,train,4,3,5\n"
        "a,b.wav,duplicate,s1,train,4,3,5\n"
        "c,b.wav,,s2,dev,high,3,5\n"
        "d,missing.wav,,s2,test,,,\n"
        ",b.wav,,s2,test,1,1,1\n"
    )
    c = load_corpus(str(tmp_path / "m.csv"))
    assert [u.id for u in c.utterances] == ["a", "d"]
    assert c.utterances[0].labels == (4.0, 3.0, 5.0)
    assert c.utterances[0].transcript == "hello there"
    assert c.utterances[1].labels is None and c.utterances[1].transcript is None
    msgs = [str(p) for p in c.problems]
    assert any("m.csv:3" in m and "duplicate utterance id 'a'" in m for m in msgs)
    assert any("m.csv:4" in m and "valence label 'high' is not a number" in m for m in msgs)
    assert any("m.csv:5" in m and "audio file not found" in m and "(kept)" in m for m in msgs)
    assert any("m.csv:6" in m and "empty utterance id" in m for m in msgs)


def test_jsonl_manifest(tmp_path: Path) -> None:
    write_tone(tmp_path / "w" / "x.wav")
    lines = [{"id": "x", "audio": "w/x.wav", "speaker": "s", "split": "train", "valence": 2.5,
              "arousal": 3, "dominance": 4}, "not json", {"id": "y"}]
    (tmp_path / "m.jsonl").write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines))
    c = load_corpus(str(tmp_path / "m.jsonl"))
    assert [u.id for u in c.utterances] == ["x"]
    assert Path(c.utterances[0].audio) == (tmp_path / "w" / "x.wav").resolve()
    assert len(c.problems) == 2


def test_manifest_missing_required_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("name,path\nx,y.wav\n")
    with pytest.raises(CorpusError, match="lacks required column"):
        load_corpus(str(tmp_path / "m.csv"))


def test_spreadsheet_csv_exports_read_as_they_are(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" (a byte-order mark), ";"-separated CSV (many locales) and CRLF line ends read
    like a plain CSV; a manifest that is not UTF-8 is one clear error."""
    write_tone(tmp_path / "a.wav")
    rows = [["id", "audio", "transcript", "split", "valence", "arousal", "dominance"],
            ["a", "a.wav", "well, hello", "train", "4.5", "3", "5"]]
    plain = "\n".join(",".join(f'"{v}"' if "," in v else v for v in r) for r in rows) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + plain.encode())
    (tmp_path / "semi.csv").write_text("\r\n".join(";".join(r) for r in rows) + "\r\n", newline="")
    for name in ("bom.csv", "semi.csv"):
        c = load_corpus(str(tmp_path / name))
        assert [(u.id, u.transcript, u.labels) for u in c.utterances] == [("a", "well, hello", (4.5, 3.0, 5.0))]
        assert not c.problems
    (tmp_path / "u16.csv").write_text(plain, encoding="utf-16")
    with pytest.raises(CorpusError, match=r"u16.csv:1: not UTF-8 text; save the manifest as UTF-8"):
        load_corpus(str(tmp_path / "u16.csv"))
    # a Latin-1 row far down a long manifest: the error names its line, not a byte of a decoder's chunk
    many = plain + "".join(f"b{i},a.wav,fine,train,4,4,4\n" for i in range(3000)) + "c,a.wav,caf\xe9,train,4,4,4\n"
    for name, bom in (("latin1.csv", b""), ("latin1-bom.csv", b"\xef\xbb\xbf")):
        (tmp_path / name).write_bytes(bom + many.encode("latin-1"))
        with pytest.raises(CorpusError, match=rf"{name}:3003: not UTF-8 text"):
            load_corpus(str(tmp_path / name))


def test_unknown_spec() -> None:
    with pytest.raises(CorpusError, match="unknown corpus spec"):
        load_corpus("nowhere")


def _msp(root: Path) -> None:
    (root / "Labels").mkdir(parents=True)
    (root / "Transcripts").mkdir()
    for name in ("MSP-PODCAST_0001_0001.wav", "MSP-PODCAST_0001_0002.wav", "MSP-PODCAST_0002_0001.wav"):
        write_tone(root / "Audios" / name)
    (root / "Transcripts" / "MSP-PODCAST_0001_0001.txt").write_text("so that was great\n")
    (root / "Labels" / "labels_consensus.csv").write_text(
        "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
        "MSP-PODCAST_0001_0001.wav,H,4.2,5.8,4.0,127,Female,Train\n"
        "MSP-PODCAST_0001_0002.wav,N,3.0,4.0,3.6,127,Female,Development\n"
        "MSP-PODCAST_0002_0001.wav,A,6.0,2.2,9.5,88,Male,Test1\n"
        "MSP-PODCAST_0002_0002.wav,A,6.0,2.2,5.5,88,Male,Holdout\n"
    )


def test_msp_podcast_layout(tmp_path: Path) -> None:
    root = tmp_path / "MSP"
    _msp(root)
    c = load_corpus(f"msp-podcast:{root}")
    assert [(u.id, u.split, u.speaker) for u in c.utterances] == [
        ("MSP-PODCAST_0001_0001", "train", "127"), ("MSP-PODCAST_0001_0002", "dev", "127")]
    u = c.utterances[0]
    assert u.labels == (5.8, 4.2, 4.0) and u.targets == {"valence": 5.8, "arousal": 4.2, "dominance": 4.0}
    assert u.transcript == "so that was great" and c.utterances[1].transcript is None
    msgs = " ".join(str(p) for p in c.problems)
    assert "dominance label 9.5 is outside the corpus scale [1, 7]" in msgs
    assert "unknown Split_Set 'Holdout'" in msgs


def _iemocap(root: Path) -> None:
    for s in range(1, 6):
        sess = root / f"Session{s}"
        dialog = f"Ses0{s}F_impro01"
        ev = sess / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True)
        tr = sess / "dialog" / "transcriptions"
        tr.mkdir(parents=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        tlines = []
        for k, spk in enumerate("FM"):
            utt = f"{dialog}_{spk}00{k}"
            write_tone(sess / "sentences" / "wav" / dialog / f"{utt}.wav")
            lines += [f"[6.2901 - 8.2357]\t{utt}\tneu\t[2.5000, {2 + k}.0000, 3.5000]", "C-E1:\tNeutral;\t()", ""]
            tlines.append(f"{utt} [006.2901-008.2357]: Excuse me number {k}.")
            wd = sess / "sentences" / "ForcedAlignment" / dialog
            wd.mkdir(parents=True, exist_ok=True)
            (wd / f"{utt}.wdseg").write_text(" SFrm  EFrm    SegAScr Word\n    0     30    -1000 <s>\n    31    80    -2000 EXCUSE\n")
        (ev / f"{dialog}.txt").write_text("\n".join(lines))
        (tr / f"{dialog}.txt").write_text("\n".join(tlines))


def test_iemocap_layout_and_folds(tmp_path: Path) -> None:
    _iemocap(tmp_path / "IEMOCAP")
    c = load_corpus(f"iemocap:{tmp_path / 'IEMOCAP'}")
    assert len(c.utterances) == 10 and not c.problems
    u = {x.id: x for x in c.utterances}["Ses01F_impro01_M001"]
    assert u.labels == (2.5, 3.0, 3.5)
    assert u.speaker == "Ses01M" and u.transcript == "Excuse me number 1."
    assert u.extra["session"] == "1" and u.extra["wdseg"].endswith("Ses01F_impro01_M001.wdseg")
    assert u.split == "test"  # fold 1 by default
    assert u.extra["gender"] == "male" and {x.id: x for x in c.utterances}["Ses01F_impro01_F000"].extra["gender"] == "female"
    for fold in range(1, 6):
        # four sessions train; dev is one speaker of session fold+1 (F in odd folds, M in even ones)
        got = refold(c.utterances, fold)
        by_split = {s: sorted(x.speaker for x in got if x.split == s) for s in ("train", "dev", "test")}
        nxt = fold % 5 + 1
        assert by_split["test"] == [f"Ses0{fold}F", f"Ses0{fold}M"]
        assert by_split["dev"] == [f"Ses0{nxt}{'F' if fold % 2 else 'M'}"]
        assert len(by_split["train"]) == 7 and not set(by_split["train"]) & set(by_split["dev"] + by_split["test"])
        # the earlier rule, kept as an option: session fold+1 is dev, three sessions train
        splits = {x.extra["session"]: x.split for x in refold(c.utterances, fold, dev="session")}
        assert sorted(splits.values()) == ["dev", "test", "train", "train", "train"]
        assert splits[str(fold)] == "test"
    with pytest.raises(ValueError):
        split_for_fold(1, 6)


def test_an_utterance_round_trips_through_its_dict() -> None:
    from dataclasses import fields

    from msf.pipeline.corpus import Utterance

    u = Utterance("a", "/x.wav", "spk", "dev", "hello", {"valence": 1.0, "arousal": 2.0, "dominance": 3.0},
                  {"session": "2"})
    d = u.to_dict()
    assert set(d) == {f.name for f in fields(Utterance)} and Utterance.from_dict(d) == u
    assert Utterance.from_row(u.to_row()) == u and u.labels == (1.0, 2.0, 3.0)  # the index's row, too
    d["extra"]["session"] = "3"
    d["targets"]["valence"] = 9.0
    assert u.extra == {"session": "2"} and u.targets["valence"] == 1.0  # copies: a stage cannot change the corpus
    partial = Utterance("b", "/x.wav", targets={"valence": 1.0, "naturalness": 4.0})  # another rating beside
    assert partial.labels is None and Utterance.from_row(partial.to_row()).targets == partial.targets


@pytest.mark.parametrize("kind", ["msp-podcast", "iemocap"])
def test_an_unchanged_corpus_is_not_parsed_again(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun, a changed setting and `status --corpus` take the rows recorded at the last extraction
    while no label, transcript or alignment file changed (a directory scan says so); an edited
    transcript is read again."""
    import json

    from typer.testing import CliRunner

    from msf.cli import app
    from msf.pipeline.config import load_config
    from msf.pipeline.corpora import iemocap, msp_podcast
    from msf.pipeline.run.extraction import Extraction

    root = tmp_path / "corpus"
    (_msp if kind == "msp-podcast" else _iemocap)(root)
    spec, cache = f"{kind}:{root}", tmp_path / "cache"
    module = msp_podcast if kind == "msp-podcast" else iemocap
    parsed: list[str] = []
    read = module.read
    monkeypatch.setattr(module, "read", lambda *a, **k: parsed.append("read") or read(*a, **k))

    def extract(*sets: str) -> int:
        ex = Extraction(load_config(None, list(sets), corpus=spec, cache=str(cache), workers=1, read_cwd=False))
        computed = ex.run(["audio"], progress=False)["audio"].computed
        ex.close()
        return computed

    n = extract()
    assert parsed == ["read"] and n == (2 if kind == "msp-podcast" else 10)
    assert extract() == 0 and extract("audio.min_contrast_db=3") == n  # a setting changed: all recomputed
    r = CliRunner().invoke(app, ["status", "--cache", str(cache), "--corpus", spec, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["stages"]["audio"]["fresh"] == n
    assert parsed == ["read"]  # none of these parsed the corpus again
    uid, edited = (("MSP-PODCAST_0001_0001", root / "Transcripts" / "MSP-PODCAST_0001_0001.txt") if kind == "msp-podcast"
                   else ("Ses01F_impro01_F000", root / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"))
    edited.write_text(edited.read_text().replace("great", "terrific").replace("Excuse me number 0", "Pardon me"))
    extract("audio.min_contrast_db=3")
    assert parsed == ["read", "read"]
    from msf.pipeline.cache.shard_store import ShardStore

    store = ShardStore(cache, readonly=True)
    transcript = store.index.utterances([uid])[uid].utt.transcript
    store.close()
    assert transcript in ("so that was terrific", "Pardon me.")


def test_a_refused_manifest_leaves_no_cache_behind(tmp_path: Path) -> None:
    """msf extract on a manifest that cannot be read (not UTF-8, or empty): one error naming the line, exit 2,
    and no cache folder made; a cache that existed before is left as it was."""
    from conftest import write_manifest
    from typer.testing import CliRunner

    from msf.cli import app

    good = write_manifest(tmp_path / "good", 2)
    (tmp_path / "u16.csv").write_text(good.read_text(), encoding="utf-16")
    (tmp_path / "empty.csv").write_text("")
    runner = CliRunner()
    for bad in ("u16.csv", "empty.csv"):
        cache = tmp_path / f"cache-{bad}"
        res = runner.invoke(app, ["extract", "--corpus", str(tmp_path / bad), "--cache", str(cache), "--stage", "audio"])
        assert res.exit_code == 2 and "Traceback" not in res.output and not cache.exists(), res.output
    kept = tmp_path / "kept"
    assert runner.invoke(app, ["extract", "--corpus", str(good), "--cache", str(kept), "--stage", "audio"]).exit_code == 0
    res = runner.invoke(app, ["extract", "--corpus", str(tmp_path / "u16.csv"), "--cache", str(kept), "--stage", "audio"])
    assert res.exit_code == 2 and (kept / "index.sqlite").exists()
