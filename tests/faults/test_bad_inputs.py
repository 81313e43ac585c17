"""Real corpora's bad inputs, all in one corpus next to good utterances: each bad one gets its own
specific recorded error (visible in `msf status --failed`), every other utterance completes, and the
trainer skips what failed and says how many."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from typer.testing import CliRunner

from msf.cli import app
from msf.trainer.train import TrainConfig, train

SR = 16000
# utterance id -> (stage that fails it, words its error must contain); None: it must complete
EXPECTED: dict[str, tuple[str, str] | None] = {
    "bad_corrupt": ("audio", "not a readable audio file"),
    "bad_empty": ("audio", "audio file is empty (0 bytes)"),
    "bad_silence": ("audio", "silent: digital silence"),
    "bad_noise": ("audio", "no speech: the loudest frames"),
    "bad_nan": ("audio", "samples are NaN or infinite"),
    "bad_missing": ("audio", "audio file not found"),
    "bad_textfile": ("audio", "not a readable audio file"),
    "bad_nonascii": ("align", "the transcript does not match the audio"),
    "bad_mismatch": ("align", "the transcript does not match the audio"),
    "ok_long": None,  # two minutes with its whole transcript: sphinx has no 30 s window
    "ok_8k": None,
    "ok_48k_stereo": None,
    "ok_empty_transcript": None,  # transcribed instead
}


def _faulty_corpus(demo: Path, root: Path) -> tuple[Path, list[dict]]:
    rows = list(csv.DictReader(open(demo / "manifest.csv")))
    good = [r for r in rows if r["split"] == "train"][:24] + [r for r in rows if r["split"] == "dev"][:8] + \
        [r for r in rows if r["split"] == "test"][:6]
    for r in good:
        r["audio"] = str(demo / r["audio"])
    wav = root / "wavs"
    wav.mkdir(parents=True)
    src, _ = sf.read(good[0]["audio"], dtype="float32")
    rng = np.random.default_rng(0)
    (wav / "corrupt.wav").write_bytes((demo / rows[1]["audio"]).read_bytes()[:20] + b"\x00" * 64)
    (wav / "empty.wav").write_bytes(b"")
    sf.write(wav / "silence.wav", np.zeros(2 * SR, np.float32), SR)
    sf.write(wav / "noise.wav", (0.05 * rng.standard_normal(SR)).astype(np.float32), SR)
    sf.write(wav / "nan.wav", np.where(np.arange(len(src)) % 100 == 0, np.nan, src).astype(np.float32), SR,
             subtype="FLOAT")
    (wav / "textfile.wav").write_text("this is not audio, just text with a .wav name")
    repeats = int(125 * SR / len(src)) + 1
    sf.write(wav / "long.wav", np.tile(src, repeats), SR)  # over two minutes
    sf.write(wav / "8k.wav", soxr.resample(src, SR, 8000), 8000)
    sf.write(wav / "48k.wav", np.stack([soxr.resample(src, SR, 48000)] * 2, 1), 48000)
    base = {k: good[0][k] for k in ("speaker", "split", "valence", "arousal", "dominance")} | {"split": "train"}
    text = good[0]["transcript"]
    bad = [
        ("bad_corrupt", "corrupt.wav", text), ("bad_empty", "empty.wav", text), ("bad_silence", "silence.wav", text),
        ("bad_noise", "noise.wav", ""), ("bad_nan", "nan.wav", text), ("bad_missing", "missing.wav", text),
        ("bad_textfile", "textfile.wav", text), ("ok_long", "long.wav", " ".join([text] * repeats)),
        ("bad_nonascii", good[0]["audio"], "café naïve 東京 über straße"),
        ("bad_mismatch", good[0]["audio"], "the quarterly revenue report shows strong growth in every region"),
        ("ok_8k", "8k.wav", text), ("ok_48k_stereo", "48k.wav", text), ("ok_empty_transcript", good[0]["audio"], ""),
    ]
    extra = [dict(base, id=i, audio=str(wav / a) if "/" not in a else a, transcript=t) for i, a, t in bad]
    refused = [dict(base, id="bad_labels", audio=good[1]["audio"], transcript=text, valence="9.5"),
               dict(good[2])]  # a duplicate id
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(good + extra + refused)
    return manifest, good


@pytest.mark.slow
def test_bad_inputs_are_recorded_and_the_rest_completes(demo_corpus: Path, tmp_path: Path) -> None:
    manifest, good = _faulty_corpus(demo_corpus, tmp_path / "corpus")
    cache = tmp_path / "cache"
    cli = CliRunner()
    res = cli.invoke(app, ["extract", "--corpus", str(manifest), "--cache", str(cache), "--profile", "offline",
                           "--set", "label_range=[1,7]", "--stage", "align", "--stage", "acoustic",
                           "--workers", "2", "--json"])
    assert res.exit_code == 3, res.output  # finished, some utterances failed
    assert "Traceback" not in res.output
    res = cli.invoke(app, ["status", "--cache", str(cache), "--failed", "--json"])
    status = json.loads(res.stdout.strip().splitlines()[-1])
    failed = {(f["utterance"], f["stage"]): f["error"] for f in status["failed"]}
    blocked = {(f["utterance"], f["stage"]): f["blocked"] for f in status["failed"]}
    for utt, expect in EXPECTED.items():
        if expect is None:
            assert not [k for k in failed if k[0] == utt], (utt, failed)
            continue
        stage, words = expect
        assert words in failed.get((utt, stage), ""), (utt, failed)
        if stage == "audio":  # the root cause once, with the stages it blocked
            assert sorted(blocked[(utt, "audio")]) == ["acoustic", "align"] and (utt, "acoustic") not in failed
    assert not [k for k in failed if not k[0].startswith("bad_")]  # every good utterance completed
    problems = " | ".join(status["corpus_problems"])
    assert "valence label 9.5 is outside the corpus scale [1, 7]" in problems and "duplicate utterance id" in problems
    counts = status["stages"]
    assert counts["audio"]["failed"] == 7 and counts["audio"]["fresh"] == len(good) + 6
    res = cli.invoke(app, ["status", "--cache", str(cache), "--failed"])
    assert "not a readable audio file" in res.stdout and "valence label 9.5" in res.stdout

    metrics = train(TrainConfig(features=cache, sources="audio", epochs=2, hidden=32), tmp_path / "run",
                    progress=False)
    assert metrics["skipped"] == {"failed extraction": 7}
    assert metrics["test"]["n"] == 6
