"""The public read API (`msf.open_cache`): utterances, records, declared fields, array columns with
layers chosen at read time, a torch Dataset and its collate; `msf train --layers`; the docs' example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import msf
from msf.pipeline.errors import UsageError


def test_the_read_api_on_a_demo_cache(demo_features: Path) -> None:
    with msf.open_cache(demo_features) as cache:
        utts = cache.utterances
        assert len(utts) == 80 and {u.split for u in utts} == {"train", "dev", "test"}
        assert {"acoustic.frames", "global.embedding", "local.mask", "emphasis.pitch_st", "align.words"} <= set(
            cache.fields)
        assert cache.fields["acoustic.frames"].varying and not cache.fields["global.embedding"].varying
        ids = [u.id for u in utts[:3]]
        recs = cache.records("global", ids)
        assert list(recs) == ids and all(r["embedding"].shape == (384,) for r in recs.values())
        assert set(cache.fingerprints("acoustic")) == {u.id for u in utts}
        assert cache.settings.profile == "offline"

        train = [u for u in utts if u.split == "train"]
        ds = cache.dataset("train", ["acoustic.frames", "global.embedding", "local.mask", "align.words"])
        assert len(ds) == len(train)
        item = ds[0]
        first = sorted(train, key=lambda u: u.id)[0]
        assert item["id"] == first.id and item["speaker"] == first.speaker
        assert (item["valence"], item["arousal"], item["dominance"]) == first.labels
        assert item["acoustic.frames"].dtype == torch.float32 and item["acoustic.frames"].shape[1] == 384
        np.testing.assert_array_equal(item["global.embedding"].numpy(), cache.records("global", [first.id])[first.id]["embedding"])
        assert isinstance(item["local.mask"], bool) and isinstance(item["align.words"], np.ndarray)

        loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ds.collate)
        batch = next(iter(loader))
        lengths = batch["acoustic.frames.lengths"]
        assert batch["acoustic.frames"].shape == (5, int(lengths.max()), 384)
        assert lengths.tolist() == [len(ds[k]["acoustic.frames"]) for k in range(5)]
        assert batch["acoustic.frames.mask"].sum(1).tolist() == lengths.tolist()
        for b in range(5):  # padding is zeros, real rows are the item's
            n = int(lengths[b])
            assert torch.equal(batch["acoustic.frames"][b, :n], ds[b]["acoustic.frames"])
            assert not batch["acoustic.frames"][b, n:].any()
        assert batch["global.embedding"].shape == (5, 384) and batch["valence"].shape == (5,)
        assert batch["local.mask"].dtype == torch.bool and len(batch["id"]) == 5

        cut = cache.dataset("dev", ["acoustic.frames"], max_seconds=0.5)
        assert max(len(cut[k]["acoustic.frames"]) for k in range(len(cut))) == 25  # 50 frames/s

        with pytest.raises(UsageError, match=r"has no field 'global.embeding'; its fields: .*global\.embedding"):
            cache.dataset("train", ["global.embeding"])
        with pytest.raises(UsageError, match=r"has no split 'validation'; its splits: dev, test, train"):
            cache.dataset("validation", ["global.embedding"])


def test_stages_write_the_fields_they_declare(demo_features: Path) -> None:
    """Every built-in stage's records hold exactly its declared fields (optional ones may be absent),
    of the declared kind: a renamed field fails here, not in a training epoch."""
    from msf.pipeline.stage import stage_class

    with msf.open_cache(demo_features) as cache:
        some = [u.id for u in cache.utterances[:4]]
        for stage in cache.stages:
            declared = stage_class(stage).fields
            assert declared, f"{stage} declares no fields"
            for rec in cache.records(stage, some).values():
                required = {k for k, f in declared.items() if not f.optional}
                assert required <= set(rec) <= set(declared), (stage, set(rec) ^ set(declared))
                for k, v in rec.items():
                    f = declared[k]
                    if f.shape:
                        assert isinstance(v, np.ndarray) and v.ndim == len(f.shape) - (k == "frames" and v.ndim == 2)
                    else:
                        assert isinstance(v, {"str": str, "bool": bool, "int": int, "float": float}[f.dtype]), (k, v)


@pytest.fixture(scope="module")
def all_layer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tone utterances through a tiny WavLM with every hidden state kept (3 of them) and GS."""
    from conftest import save_tiny_encoder, write_manifest

    from msf.pipeline.config import MsfConfig
    from msf.pipeline.run.extraction import Extraction

    root = tmp_path_factory.mktemp("layers")
    corpus = write_manifest(root / "corpus", 12)
    model = save_tiny_encoder("wavlm", root / "wavlm")
    ex = Extraction(MsfConfig(corpus=str(corpus), cache=root / "cache", profile="offline", workers=1,
                              stages={"acoustic": {"model": str(model), "layers": "all", "backend": "transformers"}}))
    ex.run(["acoustic", "global"], progress=False)
    ex.close()
    return root / "cache"


def test_layers_chosen_at_read_time_equal_those_layers_of_a_full_read(all_layer_cache: Path) -> None:
    with msf.open_cache(all_layer_cache) as cache:
        ids = sorted(u.id for u in cache.utterances)
        assert cache.stored_layers() == [0, 1, 2]
        full = cache.column("acoustic.frames", ids).read(range(len(ids)))
        assert full[0].ndim == 3 and full[0].shape[1:] == (3, 32)
        two = cache.column("acoustic.frames", ids, layers=[2, 0]).read(range(len(ids)))
        one = cache.column("acoustic.frames", ids, layers=[1]).read(range(len(ids)))
        for f, t, o in zip(full, two, one):
            np.testing.assert_array_equal(t, f[:, [2, 0]])
            np.testing.assert_array_equal(o, f[:, 1])  # one layer: T x D, as a one-layer extraction stores it
        with pytest.raises(UsageError, match=r"--layers 1,7: feature set 'default' holds hidden states 0,1,2; not 7"):
            cache.column("acoustic.frames", ids, layers=[1, 7])
        ds = cache.dataset("train", ["acoustic.frames"], layers=[0, 2])
        assert ds[0]["acoustic.frames"].shape[1:] == (2, 32)


def test_train_on_two_of_the_cached_layers_without_extracting_again(all_layer_cache: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    index = all_layer_cache / "index.sqlite"
    before = index.stat().st_mtime_ns
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--features", str(all_layer_cache), "--out", str(run), "--sources",
                                   "audio", "--layers", "0,2", "--epochs", "2", "--set", "train.hidden=16",
                                   "--set", "train.batch_size=2"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["layers"] == [0, 2] and cfg["hidden"] == 16 and cfg["batch_size"] == 2
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["model"]["acoustic.layer_logits"].shape == (2,)  # a learned weight per chosen layer
    assert index.stat().st_mtime_ns == before  # read only: nothing extracted, nothing written
    res = CliRunner().invoke(app, ["train", "--features", str(all_layer_cache), "--out", str(tmp_path / "x"),
                                   "--sources", "audio", "--layers", "5"])
    assert res.exit_code == 2 and "holds hidden states 0,1,2; not 5" in res.output
    res = CliRunner().invoke(app, ["train", "--features", str(all_layer_cache), "--out", str(tmp_path / "y"),
                                   "--sources", "audio", "--set", "train.hiden=16"])
    assert res.exit_code == 2 and "hiden" in res.output
    res = CliRunner().invoke(app, ["train", "--features", str(all_layer_cache), "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "no stage 'emphasis', 'extended', 'local' (extract it: msf extract --cache" in res.output


def test_the_docs_example_runs(demo_features: Path, tmp_path: Path) -> None:
    """docs/api.md's linear probe, run as written, on a demo cache."""
    import os
    import subprocess
    import sys

    text = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    code = re.search(r"## A linear probe.*?```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    assert 20 <= len(code.strip().splitlines()) <= 40
    script = tmp_path / "probe.py"
    script.write_text(code)
    p = subprocess.run([sys.executable, str(script), str(demo_features)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(r"dev CCC arousal [-0-9.]+", p.stdout), p.stdout


def test_export_writes_one_npy_per_utterance_and_field_and_resumes(demo_features: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    out = tmp_path / "npy"
    args = ["export", "--features", str(demo_features), "--format", "npy", "--out", str(out), "--fields",
            "acoustic.frames,global.embedding"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = list(__import__("csv").DictReader(open(out / "manifest.csv")))
    assert len(rows) == 80 and set(rows[0]) >= {"id", "split", "speaker", "valence", "acoustic.frames"}
    with msf.open_cache(demo_features) as cache:
        ids = [r["id"] for r in rows]
        frames = cache.column("acoustic.frames", ids).read(range(len(ids)))
        embeddings = cache.records("global", ids)
    for r, f in zip(rows, frames):  # the arrays round-trip exactly, as stored
        np.testing.assert_array_equal(np.load(out / r["acoustic.frames"]), f)
        np.testing.assert_array_equal(np.load(out / r["global.embedding"]), embeddings[r["id"]]["embedding"])
    one = out / rows[0]["acoustic.frames"]
    before = one.stat().st_mtime_ns
    (out / rows[1]["acoustic.frames"]).unlink()  # as if a crash had cut the export short
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "1 written, 159 kept" in res.output, res.output
    assert one.stat().st_mtime_ns == before
    res = CliRunner().invoke(app, ["export", "--features", str(demo_features), "--format", "npy", "--out", str(out),
                                   "--fields", "align.words"])
    assert res.exit_code == 2 and "export writes numeric array fields" in res.output
    res = CliRunner().invoke(app, ["export", "--features", str(demo_features), "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 2 and "--format npy" in res.output
