"""The command-line contract: JSON shapes, failures listing, show, cache maintenance, clear errors."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import write_manifest
from typer.testing import CliRunner

from msf.cli import _path_problem, app
from msf.pipeline.errors import EXIT_PARTIAL
from msf.pipeline.cache.lock import CacheLock

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_extract_status_show_json(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 6)
    (tmp_path / "c" / "wavs" / "u0005.wav").write_bytes(b"")
    cache = str(tmp_path / "cache")
    code, out, _ = invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "audio", "--json")
    assert code == EXIT_PARTIAL  # finished, one utterance failed
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stages"]["audio"]["computed"] == 5 and summary["stages"]["audio"]["failed"] == 1
    assert set(summary["stages"]["audio"]) == {"computed", "reused", "failed", "seconds"}
    code, _, err = invoke("extract", "--cache", cache, "--stage", "audio")  # a rerun that names no corpus
    assert code == 2 and "no corpus: pass --corpus SPEC" in err and f"was extracted from {corpus}" in err

    code, out, _ = invoke("status", "--cache", cache, "--json")
    counts = json.loads(out)["stages"]["audio"]
    assert {k: counts[k] for k in ("total", "fresh", "stale", "missing", "failed")} == {
        "total": 6, "fresh": 5, "stale": 0, "missing": 0, "failed": 1}
    assert counts["bytes"] > 0 and counts["bytes_all"] == counts["bytes"]
    code, out, _ = invoke("status", "--cache", cache, "--failed", "--json")
    failed = json.loads(out)["failed"]
    assert failed == [{"utterance": "u0005", "stage": "audio", "kind": "bad input", "error": failed[0]["error"],
                       "blocked": []}]
    assert "empty (0 bytes)" in failed[0]["error"]
    code, out, _ = invoke("status", "--cache", cache, "--failed")
    assert code == 0 and "u0005" in out and "empty" in out

    code, out, _ = invoke("show", "--cache", cache, "--stage", "audio", "u0001", "--json")
    rec = json.loads(out)
    assert rec["sample_rate"] == 16000 and rec["channels"] == 1 and 0.3 <= rec["duration"] <= 1.5

    code, out, _ = invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "audio", "--json")
    again = json.loads(out.strip().splitlines()[-1])["stages"]["audio"]
    assert (again["computed"], again["reused"], again["failed"]) == (0, 5, 1)  # the failure is retried


def test_toy_stages_via_cli_and_set(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 4)
    cache = str(tmp_path / "cache")
    base = ["extract", "--corpus", str(corpus), "--cache", cache, "--set", 'plugins=["toy_stages"]', "--json"]
    code, out, err = invoke(*base, "--stage", "toy_summary")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["stages"]["toy_summary"]["computed"] == 4
    code, out, _ = invoke(*base, "--stage", "toy_summary", "--set", "toy_summary.scale=5")
    s = json.loads(out.splitlines()[-1])["stages"]
    assert (s["audio"]["computed"], s["toy_energy"]["computed"], s["toy_summary"]["computed"]) == (0, 0, 4)
    code, out, _ = invoke("show", "--cache", cache, "--stage", "toy_energy", "u0002", "--json")
    assert json.loads(out)["frames"]["dtype"] == "float16"


def test_clear_errors(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 2)
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "x"), "--set", "audio.nope=1")
    assert code == 2 and "stage 'audio' parameters: nope: no such setting; the settings are " in err
    assert "min_seconds" in err  # nothing near "nope": every setting is named
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "x"),
                          "--set", "emphasis.threshhold=0.6")
    assert code == 2 and "threshhold: no such setting; did you mean threshold?" in err.replace("\n", " ")
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "x"), "--set", "worker=2")
    assert code == 2 and "did you mean workers?" in err.replace("\n", " ")
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "x"), "--stage", "audio",
                          "--set", "emphasis.threshold=high")  # a stage this run does not reach is checked too
    assert code == 2 and "stage 'emphasis' parameters: threshold: Input should be a valid number" in err
    assert not (tmp_path / "x").exists()  # refused before the cache is made or any audio hashed
    code, _, err = invoke("extract", "--corpus", str(corpus), "--stage", "nosuch", "--cache", str(tmp_path / "x"))
    assert code == 2 and "unknown stage 'nosuch'" in err and "Traceback" not in err
    empty = tmp_path / "empty.csv"
    empty.write_text("id,audio,transcript,speaker,split,valence,arousal,dominance\n")
    code, _, err = invoke("extract", "--corpus", str(empty), "--cache", str(tmp_path / "e"), "--profile", "offline")
    assert code == 2 and "has no usable utterances (no rows)" in err
    for spec, says in [("demo:/no/such/dir", "msf corpus demo --out /no/such/dir"),
                       (str(tmp_path / "typo.csv"), "manifest not found"), ("mps-podcast:/data", "unknown corpus spec")]:
        code, _, err = invoke("extract", "--corpus", spec, "--cache", str(tmp_path / "d"), "--profile", "offline")
        assert code == 2 and says in err
        assert not (tmp_path / "d").exists()  # no empty cache left behind by a typo
    code, _, err = invoke("status", "--cache", str(tmp_path / "empty"))
    assert code == 2 and "no msf cache" in err
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "m"), "--stage", "align",
                          "--set", "align.model=/no/such/model")
    assert code == 2 and "model '/no/such/model' (align.model): not on this machine" in err and "Traceback" not in err
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(corpus), "--stage", "audio")
    assert code == 2 and f"cannot create the folder {corpus}: a file stands where a folder is needed" in err
    code, _, err = invoke("corpus", "demo", "--out", str(corpus / "sub"), "--n", "1")
    assert code == 2 and "a file stands where a folder is needed (Not a directory)" in err
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "g"), "--stage", "acoustic",
                          "--set", "acoustic.device=gpu")
    assert code == 2 and "device: Value error, 'gpu' is not a device" in err
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "g"), "--stage", "acoustic",
                          "--profile", "offline", "--set", "acoustic.device=cuda:99")  # no machine has 100 GPUs
    assert code == 2 and "acoustic.device=cuda:99: this machine has no such device (CUDA GPUs visible to" in err
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(tmp_path / "s"), "--stage", "audio",
                          "--scheduler", "no-port-here")
    assert code == 2 and "cannot reach the Dask scheduler at no-port-here" in err and "Traceback" not in err


def test_a_full_disk_is_a_user_problem_and_other_os_errors_stay_bugs() -> None:
    why = _path_problem(OSError(errno.ENOSPC, "No space left on device", "/c/shard-00001.h5"))
    assert why is not None and "no space left writing /c/shard-00001.h5" in why and "msf cache gc" in why
    assert _path_problem(PermissionError(errno.EACCES, "Permission denied", "/runs/x")) == \
        "cannot use /runs/x: Permission denied"
    assert _path_problem(ConnectionResetError(errno.ECONNRESET, "reset")) is None


def test_a_run_that_stops_before_committing_anything_leaves_the_feature_set_as_it_was(tmp_path: Path) -> None:
    """A model that cannot load must not re-point the feature set at settings nothing was extracted
    with: training would find nothing, and `cache gc` would offer to delete the features that exist."""
    corpus = write_manifest(tmp_path / "c", 2)
    cache = str(tmp_path / "cache")
    assert invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "audio")[0] == 0
    before = json.loads(invoke("status", "--cache", cache, "--json")[1])
    (tmp_path / "broken").mkdir()  # looks like a CTranslate2 model, does not load: found by the run itself
    (tmp_path / "broken" / "model.bin").write_bytes(b"not a model")
    broken = ("--set", f"align.model={tmp_path / 'broken'}", "--set", "align.backend=whisper")
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "align", *broken)
    assert code == 2 and "cannot be loaded offline" in err  # audio was fresh: nothing was committed
    assert json.loads(invoke("status", "--cache", cache, "--json")[1])["stages"] == before["stages"]
    code, out, _ = invoke("cache", "gc", "--cache", cache)
    assert code == 0 and "would remove 0 entries" in out
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "align", *broken,
                          "--set", "audio.min_contrast_db=3")
    assert code == 2  # this time the audio stage committed its new entries first: the new settings stand
    after = json.loads(invoke("status", "--cache", cache, "--json")[1])["stages"]
    assert after["audio"]["fresh"] == 2 and after["align"]["missing"] == 2
    code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "align", "--name", "new",
                          *broken)
    assert code == 2 and "no feature set 'new'" in invoke("status", "--cache", cache, "--name", "new")[2]


def test_second_writer_gets_a_clear_message(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 2)
    cache = tmp_path / "cache"
    with CacheLock(cache):
        code, _, err = invoke("extract", "--corpus", str(corpus), "--cache", str(cache), "--profile", "offline")
    assert code == 2 and "is in use by msf process" in err and "--wait" in err
    code, _, _ = invoke("extract", "--corpus", str(corpus), "--cache", str(cache), "--stage", "audio", "--json")
    assert code == 0


def test_cache_verify_compact_gc(tmp_path: Path) -> None:
    corpus = write_manifest(tmp_path / "c", 10)
    cache = tmp_path / "cache"
    invoke("extract", "--corpus", str(corpus), "--cache", str(cache), "--set", "shard_size=3", "--stage", "audio")
    shards = sorted((cache / "audio").glob("shard-*.h5"))
    assert len(shards) == 4
    code, out, _ = invoke("cache", "verify", "--cache", str(cache))
    assert code == 0 and "all intact" in out
    shards[0].write_bytes(shards[0].read_bytes()[:500])
    code, out, _ = invoke("cache", "verify", "--cache", str(cache), "--json")
    report = json.loads(out)
    assert code == EXIT_PARTIAL and list(report["bad"]["audio"]) == [shards[0].name]
    hit = report["bad"]["audio"][shards[0].name]
    code, out, _ = invoke("extract", "--corpus", str(corpus), "--cache", str(cache), "--stage", "audio", "--json")
    assert json.loads(out.splitlines()[-1])["stages"]["audio"]["computed"] == len(hit)
    code, out, _ = invoke("cache", "gc", "--cache", str(cache), "--json")  # a dry run unless --yes
    assert json.loads(out)["files"] == 1 and not json.loads(out)["removed"] and shards[0].exists()
    code, out, _ = invoke("cache", "gc", "--cache", str(cache), "--yes")
    assert "removed 0 entries" in out and "1 shard file(s)" in out and not shards[0].exists()
    code, out, _ = invoke("cache", "compact", "--cache", str(cache), "--shard-size", "100")
    assert "audio: 1 shard(s)" in out and len(list((cache / "audio").glob("shard-*.h5"))) == 1
    code, out, _ = invoke("status", "--cache", str(cache), "--json")
    assert json.loads(out)["stages"]["audio"]["fresh"] == 10
    (cache / "index.sqlite").write_bytes(b"overwritten by a careless copy" * 100)  # the index itself damaged
    for command in (("status", "--cache", str(cache)), ("cache", "verify", "--cache", str(cache)),
                    ("extract", "--corpus", str(corpus), "--cache", str(cache), "--stage", "audio")):
        code, _, err = invoke(*command)
        assert code == 2 and f"the cache index {cache / 'index.sqlite'} is damaged" in err and ".recover" in err, err


def test_msf_toml_in_working_directory_and_overrides(tmp_path: Path, monkeypatch) -> None:
    corpus = write_manifest(tmp_path / "c", 3)
    (tmp_path / "msf.toml").write_text(
        f'corpus = "{corpus}"\ncache = "{tmp_path / "cache"}"\nplugins = ["toy_stages"]\nshard_size = 2\n'
        "[stages.toy_summary]\nscale = 2.0\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("extract", "--stage", "toy_summary", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["stages"]["toy_summary"]["computed"] == 3
    code, out, _ = invoke("extract", "--stage", "toy_summary", "--set", "toy_summary.scale=2.0", "--json")
    assert json.loads(out.splitlines()[-1])["stages"]["toy_summary"]["computed"] == 0  # same value: nothing
    code, out, _ = invoke("extract", "--stage", "toy_summary", "--set", "toy_summary.scale=4", "--json")
    assert json.loads(out.splitlines()[-1])["stages"]["toy_summary"]["computed"] == 3
    (tmp_path / "msf.toml").write_text("corpus = [unclosed\n")
    code, _, err = invoke("extract")
    assert code == 2 and "msf.toml" in err
    (tmp_path / "msf.toml").write_text(f'corpus = "{corpus}"\n[audio]\nmin_contrast_db = 10\n')
    code, _, err = invoke("extract")  # the brackets reach the terminal: not taken for rich markup
    assert code == 2 and "msf.toml: [audio] is not a section msf reads; a stage's settings go under [stages.audio]" in err


def test_a_bug_is_reported_as_an_internal_error_not_a_user_mistake(tmp_path: Path, monkeypatch) -> None:
    from msf.pipeline.cache import view as cache_view

    corpus = write_manifest(tmp_path / "c", 2)
    cache = str(tmp_path / "cache")
    assert invoke("extract", "--corpus", str(corpus), "--cache", cache, "--stage", "audio")[0] == 0

    def broken(self, why=False):  # noqa: ANN001, ANN202 - a bug inside msf, where a KeyError used to pass for a user error
        return {}["no such key"]

    monkeypatch.setattr(cache_view.CacheView, "status", broken)
    code, _, err = invoke("status", "--cache", cache)
    assert code == 1 and "internal error" in err and "a bug in msf" in err
    assert "Traceback" in err and "KeyError: 'no such key'" in err
    code, _, err = invoke("status", "--cache", str(tmp_path / "nowhere"))  # a user mistake stays one line
    assert code == 2 and err.startswith("error: no msf cache") and "Traceback" not in err


@pytest.mark.slow
def test_library_logs_are_quiet_unless_verbose(tmp_path: Path) -> None:
    """transformers' loading bars and Dask's port warning are not msf's to show; --verbose shows them."""
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:  # Dask warns when its port is taken
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", 8787))
            busy.listen()
        except OSError:  # already taken (another suite on this machine runs this test): the condition wanted
            pass
        errs = {}
        corpus = write_manifest(tmp_path / "c", 4)  # with transcripts: `global` loads its text model
        for verbose in ([], ["--verbose"]):
            args = [sys.executable, "-m", "msf.cli", *verbose, "extract", "--corpus", str(corpus),
                    "--cache", str(tmp_path / f"cache{len(verbose)}"), "--profile", "offline", "--workers", "2",
                    "--set", "align.backend=provided", "--stage", "global", "--json"]
            done = subprocess.run(args, capture_output=True, text=True)
            assert done.returncode == EXIT_PARTIAL, done.stderr[-2000:]  # tones have no provided alignment
            errs[bool(verbose)] = done.stderr
    assert "Loading weights" not in errs[False] and "Warning" not in errs[False], errs[False][-2000:]
    assert "Loading weights" in errs[True]
