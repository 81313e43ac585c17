"""The trainer on a real cache: runs, metrics and statistics, checkpoints without pickles, exact resume
after kill -9, prediction on new audio."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msf.trainer.train import TrainConfig, train

FAST = dict(epochs=4, patience=100, hidden=32, batch_size=16)


def test_train_writes_a_complete_run(demo_features: Path, tmp_path: Path) -> None:
    m = train(TrainConfig(features=demo_features, **FAST), tmp_path / "run", progress=False)
    for split in ("dev", "test"):
        assert set(m[split]) == {"ccc_valence", "ccc_arousal", "ccc_dominance", "ccc_mean", "n"}
        assert all(-1 <= m[split][k] <= 1 for k in m[split] if k != "n")
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == m
    assert (run / "curves.png").stat().st_size > 10_000
    usage = json.loads((run / "usage.json").read_text())["test"]
    assert set(usage["gates"]) == {"gs", "les", "es"} and abs(sum(usage["gates"].values()) - 1) < 1e-3
    assert set(usage["router"]) == {"valence", "arousal", "dominance"}
    assert all(abs(sum(p) - 1) < 1e-3 and len(p) == 4 for p in usage["router"].values())
    for ck in ("best.pt", "last.pt"):  # tensors and plain data only: loads with weights_only=True
        torch.load(run / ck, weights_only=True)
    cfg = json.loads((run / "config.json").read_text())  # msf's defaults: prosody and speaker standardisation
    assert cfg["sources"] == "audio,gs,les,es,prosody" and cfg["speaker_norm"] is True
    concat = train(TrainConfig(features=demo_features, fusion="concat", sources="audio,gs", **FAST),
                   tmp_path / "concat", progress=False)
    assert json.loads((tmp_path / "concat" / "usage.json").read_text())["test"] == {"gates": {}, "router": {}}
    assert concat["test"]["n"] == m["test"]["n"]


def test_a_run_does_not_resume_on_features_extracted_since(demo_corpus: Path, demo_features: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    from msf.pipeline.config import MsfConfig
    from msf.pipeline.errors import UsageError
    from msf.pipeline.run.extraction import Extraction

    cache, run = tmp_path / "cache", tmp_path / "run"
    shutil.copytree(demo_features, cache)
    cfg = TrainConfig(features=cache, **dict(FAST, epochs=2))
    first = train(cfg, run, progress=False)
    assert train(cfg, run, progress=False)["test"] == first["test"]  # the same data: it resumes, done
    # other settings into the same folder: each difference named, nothing trained
    with pytest.raises(UsageError, match=r"other settings \(epochs: 2 there, 4 now; lr: .* there, 0.01 now\)"):
        train(TrainConfig(features=cache, **dict(FAST, epochs=4, lr=0.01)), run, progress=False)
    # a device this machine lacks: refused before any data is read or a folder made
    from msf.pipeline.backends.device import DeviceUnavailable

    with pytest.raises(DeviceUnavailable, match="--device=cuda"):
        train(TrainConfig(features=cache, **dict(FAST, device="cuda")), tmp_path / "no-gpu", progress=False)
    assert not (tmp_path / "no-gpu").exists()
    # The same feature set re-extracted with another emphasis threshold: LES changes under the run.
    ex = Extraction(MsfConfig(corpus=f"demo:{demo_corpus}", cache=cache, profile="offline", workers=1,
                              stages={"align": {"backend": "provided"}, "emphasis": {"threshold": 0.3}}))
    assert ex.run(["acoustic", "global", "local", "extended"], progress=False)["local"].computed > 0
    ex.close()
    with pytest.raises(UsageError, match="holds a run trained on other data .* choose another --out or delete it"):
        train(cfg, run, progress=False)
    assert json.loads((run / "metrics.json").read_text()) == first  # the old run is left as it was


def test_the_model_learns_dominance(demo_features: Path, tmp_path: Path) -> None:
    """Dominance is the dimension the demo rule makes easiest (the phrasing's mood in the words, the
    volume in the audio). Over 10 training seeds on this 80-utterance corpus, test MSE was 0.19-0.46 of
    the training-mean predictor's (median 0.27) and CCC 0.71-0.90; the bounds sit well outside that."""
    from msf.trainer.data import FeatureSet, parse_sources
    from msf.trainer.train import load_run, predict_split

    m = train(TrainConfig(features=demo_features, **dict(FAST, epochs=10)), tmp_path / "run", progress=False)
    data = FeatureSet(demo_features, parse_sources("audio,gs,les,es"))
    model, _ = load_run(tmp_path / "run")
    pred, gold, _ = predict_split(model, data, "test", "cpu")
    mse = ((pred - gold) ** 2).mean(0)
    mean_predictor = ((gold - data.splits["train"].labels.mean(0)) ** 2).mean(0)
    assert mse[2] <= 0.6 * mean_predictor[2], (mse, mean_predictor)
    assert m["test"]["ccc_dominance"] >= 0.5, m["test"]


def test_prosody_source_and_speaker_standardisation(demo_features: Path, tmp_path: Path) -> None:
    """`prosody` is the emphasis stage's speaker-relative pitch (st), loudness (dB) and log rate of each
    utterance; speaker standardisation gives each speaker's frames zero mean and unit variance per
    dimension. Both train, and a run remembers them for evaluation."""
    import numpy as np

    from msf.pipeline.cache.view import CacheView
    from msf.trainer.data import FeatureSet, parse_sources

    data = FeatureSet(demo_features, parse_sources("audio,prosody"), in_memory=True, speaker_norm=True)
    split = data.splits["train"]
    view = CacheView(demo_features)
    rec, _ = view.read("emphasis", split.ids[3])
    view.close()
    assert split.vectors["prosody"][3].tolist() == pytest.approx(
        [rec["pitch_st"], rec["loudness_db"], np.log(rec["rate_ratio"])], abs=1e-5)
    assert data.vector_dims["prosody"] == 3
    by_speaker: dict[str, list] = {}
    for name in ("train", "dev", "test"):
        s = data.splits[name]
        for b in data.batches(name, 64, shuffle=False):
            for uid, f, n in zip(b.ids, b.frames, b.lengths):
                by_speaker.setdefault(s.speakers[s.ids.index(uid)], []).append(f[:n])
    assert len(by_speaker) >= 2
    for frames in by_speaker.values():
        allf = np.concatenate(frames).reshape(-1, data.frame_shape[-1])
        assert np.abs(allf.mean(0)).max() < 1e-3 and np.abs(allf.std(0) - 1).max() < 1e-2
    m = train(TrainConfig(features=demo_features, sources="audio,prosody", speaker_norm=True, **FAST),
              tmp_path / "run", progress=False)
    assert all(-1 <= m["test"][k] <= 1 for k in ("ccc_valence", "ccc_arousal", "ccc_dominance"))
    with pytest.raises(Exception, match="speaker_norm"):  # a feature set loaded otherwise is refused
        train(TrainConfig(features=demo_features, sources="audio,prosody", speaker_norm=False, **FAST),
              tmp_path / "other", progress=False, data=data)


@pytest.mark.slow
def test_kill9_inside_training_batches_then_resume_equals_an_uninterrupted_run(demo_features: Path,
                                                                              tmp_path: Path) -> None:
    """Three runs, each SIGKILLed inside a training batch chosen from a seed (always in its second
    epoch): last.pt always loads whole, each kill keeps exactly one more finished epoch, and the
    resumed run's figures equal an uninterrupted run's."""
    from msf.trainer.data import FeatureSet, parse_sources

    options = dict(FAST, epochs=10)
    clean = train(TrainConfig(features=demo_features, **options), tmp_path / "clean", progress=False)
    per_epoch = -(-len(FeatureSet(demo_features, parse_sources("audio,gs,les,es")).splits["train"].ids)
                  // options["batch_size"])
    run = tmp_path / "killed"
    code = (f"from pathlib import Path; from msf.trainer.train import TrainConfig, train; "
            f"train(TrainConfig(features=Path({str(demo_features)!r}), **{options!r}), Path({str(run)!r}), progress=False)")
    rng = random.Random(3)
    for kill in range(1, 4):
        k = rng.randint(per_epoch + 1, 2 * per_epoch)
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MSF_KILL_AT": f"train-batch:{k}"},
                              capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        state = json.loads(torch.load(run / "last.pt", weights_only=True)["state"])  # never half-written
        assert state["epoch"] == kill
    resumed = train(TrainConfig(features=demo_features, **options), run, progress=False)
    assert resumed["test"] == clean["test"] and resumed["dev"] == clean["dev"]


def test_a_run_being_trained_is_not_trained_into_twice(demo_features: Path, tmp_path: Path) -> None:
    from msf.pipeline.cache.lock import CacheBusy, CacheLock

    with CacheLock(tmp_path / "run"):  # what a first `msf train --out run` holds while it trains
        with pytest.raises(CacheBusy, match=r"the run .*run is in use by msf process \d+ .*; wait for it to "
                                            r"finish or use another --out"):
            train(TrainConfig(features=demo_features, **FAST), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_predict_new_audio(demo_features: Path, demo_corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    train(TrainConfig(features=demo_features, sources="audio,gs", **FAST), tmp_path / "run", progress=False)
    import csv

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))[:2]
    wavs = [str(demo_corpus / r["audio"]) for r in rows]
    out = []
    for wav, transcript in ((wavs[0], rows[0]["transcript"]), (wavs[1], None)):  # given, then transcribed
        args = ["predict", wav, "--run", str(tmp_path / "run"), "--json"]
        res = CliRunner().invoke(app, args + (["--transcript", transcript] if transcript else []))
        assert res.exit_code == 0, res.output
        out += json.loads(res.stdout.strip().splitlines()[-1])
    assert [o["audio"] for o in out] == wavs
    assert all(1 <= o[k] <= 7 for o in out for k in ("valence", "arousal", "dominance")), out
    res = CliRunner().invoke(app, ["predict", wavs[0], "--run", str(tmp_path / "run"), "--json",
                                   "--transcript", "the quarterly revenue report shows strong growth"])
    wrong = json.loads(res.stdout.strip().splitlines()[-1])[0]
    # the words cannot be aligned, but GS embeds the transcript given, needing no alignment: predicted
    assert "error" not in wrong and "masked" not in wrong and 1 <= wrong["valence"] <= 7, wrong
    res = CliRunner().invoke(app, ["predict", *wavs, "--run", str(tmp_path / "run"), "--transcript", "the words"])
    assert res.exit_code == 2 and "--transcript gives the words of one file; 2 were given" in res.output
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.wav"), "--run", str(tmp_path / "run")])
    assert res.exit_code == 2 and "audio not found" in res.output
    res = CliRunner().invoke(app, ["predict", wavs[0], "--run", str(tmp_path)])  # the folder above the run
    assert res.exit_code == 2 and "is not a trained run" in res.output and f"holds runs: {tmp_path / 'run'}" in res.output
    for device, says in [("cuda:99", "--device=cuda:99: this machine has no such device"),  # none has 100 GPUs
                         ("gpu", "--device='gpu' is not a device: use cpu, cuda, cuda:N or mps")]:
        res = CliRunner().invoke(app, ["predict", wavs[0], "--run", str(tmp_path / "run"), "--device", device])
        assert res.exit_code == 2 and says in res.output, res.output
        res = CliRunner().invoke(app, ["train", "--features", str(demo_features), "--out", str(tmp_path / "d"),
                                       "--device", device])
        assert res.exit_code == 2 and ("settings: device: " if device == "gpu" else says) in res.output, res.output
    res = CliRunner().invoke(app, ["train", "--features", str(demo_features), "--out", str(tmp_path / "e"),
                                   "--epochs", "0"])
    assert res.exit_code == 2 and "settings: epochs: Input should be greater than or equal to 1" in res.output
    res = CliRunner().invoke(app, ["ablate", "--features", str(demo_features), "--out", str(tmp_path / "ab"),
                                   "--seeds", "0"])
    assert res.exit_code == 2 and "--seeds is the number of training seeds per variant: at least 1" in res.output
    assert not (tmp_path / "ab").exists()


@pytest.mark.slow
def test_training_depends_on_the_features_not_the_shard_layout(tmp_path: Path) -> None:
    """The same features in three layouts: extracted with 1 worker, with 2 workers, and compacted into
    shards of 7. Same seed, identical figures to the last digit (streamed from the shards once, too)."""
    import shutil

    from typer.testing import CliRunner

    from msf.cli import app
    from msf.pipeline.corpora.demo import build_demo_corpus

    corpus = build_demo_corpus(tmp_path / "corpus", n=30, seed=5, progress=False)
    caches = {}
    for workers in ("1", "2"):
        caches[workers] = tmp_path / f"workers-{workers}"
        r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(caches[workers]),
                                     "--profile", "offline", "--stage", "acoustic", "--workers", workers])
        assert r.exit_code == 0, r.output
    caches["compacted"] = tmp_path / "compacted"
    shutil.copytree(caches["2"], caches["compacted"])
    assert CliRunner().invoke(app, ["cache", "compact", "--cache", str(caches["compacted"]), "--shard-size", "7"]).exit_code == 0
    layouts = {k: len(list((c / "acoustic").glob("shard-*.h5"))) for k, c in caches.items()}
    assert len(set(layouts.values())) == 3, layouts  # three shardings of the same entries
    # as trained by default, and with batches bucketed by length and bounded by frames (the lengths read
    # from the shards' offsets when streamed, from the frames when held in memory)
    for extra in ({}, {"bucket": True, "max_batch_frames": 2000}):
        runs = {}
        for (name, cache), in_memory in [*((kv, None) for kv in caches.items()), (("compacted", caches["compacted"]), False)]:
            options = dict(FAST, epochs=3, seed=7, sources="audio", in_memory=in_memory, **extra)
            runs[(name, in_memory)] = train(TrainConfig(features=cache, **options),
                                            tmp_path / f"run-{name}-{in_memory}-{len(extra)}", progress=False)
        figures = {k: (m["dev"], m["test"], m["data"]["digest"]) for k, m in runs.items()}
        assert len(set(map(repr, figures.values()))) == 1, figures


@pytest.mark.parametrize("fusion", ["fm-moe", "concat"])
def test_modality_dropout_hides_the_text_in_training_only(fusion: str) -> None:
    from msf.trainer.model import ModelConfig, MsfSer

    torch.manual_seed(0)
    model = MsfSer(ModelConfig((8,), {"gs": 6, "les": 6, "es": 6}, ("audio", "gs", "les", "es"), fusion, hidden=16,
                               dropout=0.0, modality_dropout=1.0))
    with torch.no_grad():  # FiLM starts as the identity; make it depend on the text for this check
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    frames, lengths = torch.randn(4, 10, 8), torch.tensor([10, 7, 5, 10])
    mask = {"gs": torch.ones(4, dtype=torch.bool), "les": torch.tensor([True, False, True, True]),
            "es": torch.ones(4, dtype=torch.bool)}
    text = [{s: torch.randn(4, 6) for s in ("gs", "les", "es")} for _ in range(2)]
    model.train()  # every utterance's text hidden: the predictions cannot depend on it
    assert torch.equal(model(frames, lengths, text[0], mask)[0], model(frames, lengths, text[1], mask)[0])
    model.eval()  # never at evaluation
    assert not torch.allclose(model(frames, lengths, text[0], mask)[0], model(frames, lengths, text[1], mask)[0])


def test_the_text_informs_only_its_targets() -> None:
    """By default arousal reads the audio alone: other text, same arousal, other valence and dominance;
    with every target named, the text moves arousal too. A misspelt target is refused by name."""
    from msf.trainer.model import ModelConfig, MsfSer

    frames, lengths = torch.randn(4, 10, 8), torch.tensor([10, 7, 5, 10])
    mask = {"gs": torch.ones(4, dtype=torch.bool), "les": torch.tensor([True, False, True, True]),
            "es": torch.ones(4, dtype=torch.bool)}
    text = [{s: torch.randn(4, 6) for s in ("gs", "les", "es")} for _ in range(2)]
    moved = {}
    for targets in [("valence", "dominance"), ("valence", "arousal", "dominance")]:
        torch.manual_seed(0)
        model = MsfSer(ModelConfig((8,), {"gs": 6, "les": 6, "es": 6}, ("audio", "gs", "les", "es"), hidden=16,
                                   text_targets=targets)).eval()
        with torch.no_grad():  # FiLM starts as the identity; make it depend on the text for this check
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
            y0, y1 = (model(frames, lengths, t, mask)[0] for t in text)
        moved[targets] = [not torch.equal(y0[:, d], y1[:, d]) for d in range(3)]
    assert moved[("valence", "dominance")] == [True, False, True]
    assert moved[("valence", "arousal", "dominance")] == [True, True, True]
    with pytest.raises(ValueError, match=r"unknown target\(s\) valance; choose from valence, arousal, dominance"):
        TrainConfig(features=Path("x"), text_targets="valance,dominance")


def test_a_checkpoint_of_another_model_version_says_so(demo_features: Path, tmp_path: Path) -> None:
    """A run written before the model gained a part (here the text head) fails to load with one message
    that names the part and the way out, not a state-dict traceback."""
    from msf.pipeline.errors import UsageError
    from msf.trainer.train import load_run

    train(TrainConfig(features=demo_features, **dict(FAST, epochs=1)), tmp_path / "run", progress=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    best["model"] = {k: v for k, v in best["model"].items() if not k.startswith("moe.text_head.")}
    torch.save(best, tmp_path / "run" / "best.pt")
    with pytest.raises(UsageError, match=r"another version of the msf model \(parts differ: moe.text_head\); train it again"):
        load_run(tmp_path / "run")


def test_weight_averaging_keeps_the_average_over_its_horizon(demo_features: Path, tmp_path: Path) -> None:
    """`average_epochs` is the horizon, in epochs, of the moving average of the weights that dev scores
    and best.pt keeps: 1 epoch of 10 steps is a decay of 0.9 per step; a horizon shorter than a step
    keeps the trained weights (last.pt's); off, best.pt is the trained model."""
    from msf.trainer.train import weight_average

    layer = torch.nn.Linear(1, 1, bias=False)
    averaged = weight_average(layer, epochs=1.0, steps_per_epoch=10)
    expected = None
    for value in (1.0, 2.0, 4.0, -3.0):
        layer.weight.data.fill_(value)
        averaged.update_parameters(layer)
        expected = value if expected is None else 0.9 * expected + 0.1 * value  # the first update copies
        assert averaged.module.weight.item() == pytest.approx(expected)
    assert weight_average(layer, 0.0, 10) is None

    one = dict(FAST, epochs=1)
    for avg in (0.0, 1e-9):
        run = tmp_path / f"avg-{avg}"
        train(TrainConfig(features=demo_features, average_epochs=avg, **one), run, progress=False)
        best = torch.load(run / "best.pt", weights_only=True)["model"]
        trained = torch.load(run / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(best[k], trained[k]) for k in trained)
    run = tmp_path / "avg-1"
    train(TrainConfig(features=demo_features, average_epochs=1.0, **one), run, progress=False)
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert not all(torch.equal(best[k], v) for k, v in torch.load(run / "last.pt", weights_only=True)["model"].items())
    with pytest.raises(Exception, match="average_epochs"):
        TrainConfig(features=demo_features, average_epochs=-1)


def test_make_batch_casts_or_pads_as_stored_and_the_device_gets_float32_exactly() -> None:
    """Stored float16 frames (one layer or several), cast on the host as they are padded (CPU training)
    or padded as float16 and cast on the device (GPU): float32 bit-equal to numpy's cast either way,
    zero past each length, however the copy is cut into pieces."""
    import numpy as np

    from msf.trainer.data import make_batch
    from msf.trainer.train import host_casts, to_tensors

    assert host_casts("cpu") and not host_casts("cuda:1")
    rng = np.random.default_rng(0)
    for shape in ((384,), (3, 200)):  # 85 and 54 frames per piece
        frames = [rng.standard_normal((n, *shape)).astype(np.float16) for n in (1, 54, 55, 130)]
        for cast, dtype in ((True, np.float32), (False, np.float16)):
            b = make_batch(frames, {}, {}, np.zeros((4, 3), np.float32), ["a", "b", "c", "d"], cast)
            assert b.frames.dtype == dtype and b.frames.shape == (4, 130, *shape)
            on_device = to_tensors(b, "cpu")[0]
            assert on_device.dtype == torch.float32
            for k, f in enumerate(frames):
                assert np.array_equal(on_device[k, : len(f)].numpy(), f.astype(np.float32))
                assert not on_device[k, len(f) :].any()
            assert b.lengths.tolist() == [1, 54, 55, 130]


def test_the_ablation_table_shows_the_spread_over_training_seeds() -> None:
    from msf.trainer.ablate import table

    runs = [{"ccc_valence": v, "ccc_arousal": 0.5, "ccc_dominance": 0.5, "ccc_mean": m}
            for v, m in ((0.7, 0.6), (0.9, 0.8))]
    row = {"ccc_valence": 0.8, "ccc_arousal": 0.5, "ccc_dominance": 0.5, "ccc_mean": 0.7}
    lines = table({"audio": {**row, "runs": runs}}).splitlines()
    assert lines[0].endswith("| dominance | CCC mean | sd over seeds |")
    assert lines[2] == "| audio | 0.800 | 0.500 | 0.500 | 0.700 | 0.141 |"  # stdev(0.6, 0.8)
    assert table({"audio": {**row, "runs": runs[:1]}}).splitlines()[2] == "| audio | 0.800 | 0.500 | 0.500 | 0.700 |"


def test_bucketed_batches_depend_on_seed_epoch_ids_and_lengths_only() -> None:
    import numpy as np

    from msf.trainer.data import BUCKET_BATCHES, batch_groups, epoch_order

    rng = np.random.default_rng(0)
    ids = [f"u{i:04d}" for i in range(500)]
    lengths = rng.integers(50, 600, len(ids))

    def groups(seed: int, epoch: int, **kw: object) -> list[list[int]]:
        order = epoch_order(ids, seed, epoch)
        return [g.tolist() for g in batch_groups(order, 16, training=True, lengths=lengths, seed=seed, epoch=epoch,
                                                 **kw)]  # type: ignore[arg-type]

    a = groups(0, 1, bucket=True, max_frames=4000)
    assert a == groups(0, 1, bucket=True, max_frames=4000)  # a function of its inputs
    assert a != groups(0, 2, bucket=True, max_frames=4000) and a != groups(1, 1, bucket=True, max_frames=4000)
    assert sorted(k for g in a for k in g) == list(range(len(ids)))  # every utterance once
    over = [g for g in a if len(g) > 16 or (len(g) > 1 and len(g) * lengths[g].max() > 4000)]
    assert len(over) <= 1 and all(len(g) <= 17 for g in over)  # only where a last single joined its neighbour
    padded = lambda gs: sum(len(g) * lengths[g].max() for g in gs)  # noqa: E731
    plain = groups(0, 1)
    assert padded(groups(0, 1, bucket=True)) < 0.8 * padded(plain)  # similar lengths share a batch
    assert [len(g) for g in plain] == [16] * 31 + [4] and BUCKET_BATCHES > 1  # unbounded, unbucketed: as before
    long = lengths.copy()
    long[7] = 10_000  # one utterance longer than the bound is a batch of its own
    assert [7] in [g.tolist() for g in batch_groups(np.arange(500), 16, training=False, lengths=long, max_frames=4000)]


def test_a_last_training_batch_of_one_joins_the_one_before() -> None:
    import numpy as np

    from msf.trainer.data import batch_groups

    order = np.arange(33)
    assert [len(g) for g in batch_groups(order, 16, training=True)] == [16, 17]
    assert [len(g) for g in batch_groups(order, 16, training=False)] == [16, 16, 1]  # evaluation: as is
    assert [len(g) for g in batch_groups(order[:32], 16, training=True)] == [16, 16]
    assert np.concatenate(batch_groups(order, 16, training=True)).tolist() == order.tolist()


@pytest.mark.parametrize("sources", ["audio", "audio,prosody", "audio,gs,prosody", "audio,gs,les,es,prosody"])
def test_training_with_one_utterance_left_over_for_the_last_batch(demo_features: Path, tmp_path: Path,
                                                                  sources: str) -> None:
    """N_train = 1 (mod the batch size): the prosody projection's BatchNorm stopped training with
    'Expected more than 1 value per channel'; every source combination trains now."""
    from msf.trainer.data import FeatureSet, parse_sources

    n = len(FeatureSet(demo_features, parse_sources("audio"), in_memory=False).splits["train"].ids)
    options = dict(FAST, epochs=1, batch_size=n - 1)  # batches of n - 1 and 1
    for fusion in ("fm-moe", "concat"):
        m = train(TrainConfig(features=demo_features, sources=sources, fusion=fusion, **options),
                  tmp_path / f"run-{fusion}", progress=False)
        assert all(-1 <= m["test"][k] <= 1 for k in ("ccc_valence", "ccc_arousal", "ccc_dominance"))


def test_msf_train_takes_the_batching_settings(demo_features: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    r = CliRunner().invoke(app, ["train", "--features", str(demo_features), "--out", str(tmp_path / "run"),
                                 "--sources", "audio", "--epochs", "1", "--bucket", "--max-batch-frames", "3000"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    saved = (tmp_path / "run").rglob("*.json")
    assert any('"bucket": true' in p.read_text() and '"max_batch_frames": 3000' in p.read_text() for p in saved)
    bad = CliRunner().invoke(app, ["train", "--features", str(demo_features), "--out", str(tmp_path / "bad"),
                                   "--max-batch-frames", "-1"])
    assert bad.exit_code == 2 and "max_batch_frames" in bad.stderr and "Traceback" not in bad.stderr


def test_every_labelled_split_is_scored_on_its_own(tmp_path: Path) -> None:
    """MSP-Podcast's Test2 (and any split a manifest names) is scored under its own key with its n, by
    train and by evaluate, not skipped as 'no split'; ablate reports a table per test set."""
    import csv

    from typer.testing import CliRunner

    from msf.cli import app
    from msf.pipeline.corpora.demo import build_demo_corpus

    corpus = build_demo_corpus(tmp_path / "corpus", n=36, seed=8, progress=False)
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    tests = [r for r in rows if r["split"] == "test"]
    for k, r in enumerate(tests):
        r["split"] = ("test", "test2", "test_b")[k % 3]
    with open(corpus / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("dev", "test", "test2", "test_b")}
    assert min(counts.values()) > 0
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(cache), "--profile", "offline",
                                 "--set", "align.backend=provided", "--stage", "acoustic", "--stage", "global",
                                 "--stage", "local", "--stage", "extended"])
    assert r.exit_code == 0, r.stderr
    m = train(TrainConfig(features=cache, sources="audio", **dict(FAST, epochs=1)), tmp_path / "run", progress=False)
    assert m["skipped"] == {} and {s: m[s]["n"] for s in counts} == counts
    assert all(m[s]["ccc_mean"] is None if counts[s] < 3 else -1 <= m[s]["ccc_mean"] <= 1 for s in counts)
    ev = CliRunner().invoke(app, ["evaluate", "--run", str(tmp_path / "run"), "--features", str(cache)])
    assert ev.exit_code == 0, ev.stderr
    assert json.loads(ev.stdout) == {s: m[s] for s in counts}
    from msf.trainer.ablate import ablate

    results = ablate(cache, tmp_path / "ablation", seeds=1, progress=False, prosody=False, **dict(FAST, epochs=1))
    assert all(set(r["splits"]) == {"test2", "test_b"} for r in results.values())  # a table per other test set
    report = (tmp_path / "ablation" / "ablation.md").read_text()
    assert "\ntest2\n" in report and "\ntest_b\n" in report and report.count("| full |") == 3
    # some variants only (`--variants`): the paired tests whose two sides ran; an unknown name is refused
    some = ablate(cache, tmp_path / "some", seeds=1, progress=False, prosody=False, variants=["full", "audio+gs"],
                  **dict(FAST, epochs=1))
    assert list(some) == ["audio+gs", "full"] and all("ci95" in r and "vs_audio" not in r for r in some.values())
    assert "vs_concat" not in some["full"] and "| full |" in (tmp_path / "some" / "ablation.md").read_text()
    r = CliRunner().invoke(app, ["ablate", "--features", str(cache), "--out", str(tmp_path / "x"), "--variants",
                                 "audio,fulll"])
    assert r.exit_code == 2 and "no variant 'fulll'; variants: audio, audio+gs, audio+gs+les, full, concat" in r.stderr


def test_settings_come_from_presets_msf_toml_set_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset < msf.toml's [train] < --set train.KEY=VALUE < a command-line option; msf.toml's [train]
    is no error for extraction's settings; the paper preset is the paper's model."""
    from msf.pipeline.config import load_config
    from msf.pipeline.errors import UsageError
    from msf.trainer.model import ModelConfig, MsfSer
    from msf.trainer.train import train_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "msf.toml").write_text('corpus = "x.csv"\n[train]\nhidden = 64\nlr = 0.002\npreset = "paper"\n')
    s = train_settings(["train.lr=0.005", "train.experts=2"], epochs=7, seed=None)
    cfg = TrainConfig(features=Path("c"), **s)
    assert (cfg.hidden, cfg.lr, cfg.experts, cfg.epochs, cfg.seed) == (64, 0.005, 2, 7, 0)
    assert (cfg.sources, cfg.text_targets, cfg.text_head, cfg.speaker_norm, cfg.average_epochs) == (
        "audio,gs,les,es", "valence,arousal,dominance", False, False, 0.0)  # the toml named the paper preset
    assert load_config(None).corpus == "x.csv"  # [train] is the trainer's, not a stage section
    msf_cfg = TrainConfig(features=Path("c"), **train_settings([], preset="msf"))
    assert msf_cfg.sources == "audio,gs,les,es,prosody" and msf_cfg.speaker_norm and msf_cfg.text_head
    with pytest.raises(UsageError, match="no preset 'papers'; presets: msf, paper"):
        train_settings([], preset="papers")
    with pytest.raises(UsageError, match="--set expects train.KEY=VALUE here"):
        train_settings(["hidden=3"])
    model = MsfSer(ModelConfig((8,), {"gs": 4}, ("audio", "gs"), text_targets=("valence", "arousal", "dominance"),
                               text_head=False))
    assert model.moe.text_head is None and model.moe.reads_text == [True, True, True]


def test_a_failed_text_stage_masks_a_source_and_a_lost_utterance_is_listed(demo_features: Path,
                                                                           tmp_path: Path) -> None:
    """No silent shrinkage: a test utterance whose `global` failed is kept with GS masked, in every
    variant; one without acoustic features is dropped, listed by id and reason in dropped.csv and in
    the coverage; --require-full-coverage then refuses to train."""
    import csv
    import shutil
    import time

    import msf
    from msf.pipeline.cache.index import CacheIndex, Failure
    from msf.pipeline.errors import UsageError
    from msf.trainer.ablate import ablate

    cache = tmp_path / "cache"
    shutil.copytree(demo_features, cache)
    with msf.open_cache(cache) as view:
        test = sorted(u.id for u in view.utterances if u.split == "test")
        fps = {st: view.fingerprints(st) for st in ("global", "acoustic")}
    text_failed, lost = test[0], test[1]
    index = CacheIndex(cache)  # as a run records them: the entry gone, a failure under its fingerprint
    for stage, uid, error in (("global", text_failed, "no words to embed"), ("acoustic", lost, "decode error")):
        index.drop(stage, [(uid, fps[stage][uid])])
        index.commit([], [Failure(stage, uid, fps[stage][uid], error, time.time())])
    index.close()
    m = train(TrainConfig(features=cache, **dict(FAST, epochs=1)), tmp_path / "run", progress=False)
    assert m["coverage"]["test"] == {"kept": len(test) - 1, "total": len(test)} and m["test"]["n"] == len(test) - 1
    assert m["masked"] == {"gs": 1} and m["skipped"] == {"failed extraction": 1}
    assert list(csv.reader(open(tmp_path / "run" / "dropped.csv")))[1:] == [[lost, "test", "failed extraction"]]
    scored = {r["id"] for r in csv.DictReader(open(tmp_path / "run" / "predictions.csv")) if r["split"] == "test"}
    assert text_failed in scored and lost not in scored
    results = ablate(cache, tmp_path / "ab", seeds=1, progress=False, variants=["audio", "full"], **dict(FAST, epochs=1))
    assert list(results) == ["audio", "full"] and all(  # every variant on the same utterances
        json.loads((tmp_path / "ab" / v / "seed-0" / "metrics.json").read_text())["test"]["n"] == len(test) - 1
        for v in results)
    with pytest.raises(UsageError, match=r"--require-full-coverage: test kept \d+ of \d+ labelled utterances"):
        train(TrainConfig(features=cache, require_full_coverage=True, **dict(FAST, epochs=1)), tmp_path / "strict",
              progress=False)


def test_the_seed_ensemble_averages_the_seeds_predictions() -> None:
    """ablate's seed ensemble: the CCC of the seeds' averaged predictions, beside the mean of the seeds'
    CCCs; seeds that agree make an ensemble equal to each of them, and averaging independent errors
    beats the mean of the seeds."""
    from msf.trainer.ablate import table
    import numpy as np

    from msf.trainer.bootstrap import _ccc, resample_index, seed_ensemble

    rng = np.random.default_rng(0)
    gold = rng.uniform(1, 7, (200, 3))
    same = np.stack([gold + rng.normal(0, 0.5, gold.shape)] * 3)
    index = resample_index(len(gold), 200)
    one = _ccc(same[0], gold)
    ens = seed_ensemble(same, gold, index)
    assert np.allclose([ens["ccc_valence"], ens["ccc_arousal"], ens["ccc_dominance"]], one, atol=1e-4)
    noisy = np.stack([gold + rng.normal(0, 1.0, gold.shape) for _ in range(3)])
    ens = seed_ensemble(noisy, gold, index)
    mean_of_seeds = float(np.mean([_ccc(p, gold).mean() for p in noisy]))
    assert ens["ccc_mean"] > mean_of_seeds + 0.02 and ens["ci95"]["ccc_mean"][0] < ens["ccc_mean"] < ens["ci95"]["ccc_mean"][1]
    row = {"ccc_valence": 0.8, "ccc_arousal": 0.5, "ccc_dominance": 0.5, "ccc_mean": 0.6,
           "runs": [{"ccc_mean": 0.6}] * 2, "ci95": {"ccc_mean": [0.5, 0.7]},
           "seed_ensemble": {"ccc_mean": 0.65, "ci95": {"ccc_mean": [0.55, 0.74]}}}
    lines = table({"audio": row}).splitlines()
    assert lines[0].endswith("| seed ensemble, 95% CI |") and lines[2].endswith(" 0.650 [0.550, 0.740] |")
