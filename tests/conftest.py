from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # toy_stages importable as a plugin here and in subprocesses
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Dask configures its logging handlers on first import, bound to the sys.stderr of that moment. Inside
# a CliRunner invocation that is a stream closed afterwards, and a later log line (a cluster closing)
# would print "--- Logging error ---". Imported here, the handlers hold the real stderr.
import distributed  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _close_extractions(monkeypatch: pytest.MonkeyPatch):
    """Every Extraction a test builds is closed when the test ends. One left open keeps its Dask
    cluster until interpreter exit, whose shutdown then logs to pytest's closed capture stream
    ("--- Logging error ---", seen on a loaded machine)."""
    from msf.pipeline.run.extraction import Extraction

    made: list[Extraction] = []
    init = Extraction.__init__

    def tracked(self: Extraction, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Extraction, "__init__", tracked)
    yield
    for ex in made:
        ex.close()  # idempotent: most are closed already


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, freq: float = 220.0, channels: int = 1,
               seed: int = 0) -> Path:
    """A tone in syllable-like bursts (3 per second, with pauses) over a faint noise floor: the
    `audio` stage refuses a steady tone as hum, not speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.maximum(0.0, np.sin(2 * np.pi * 3 * t + rng.uniform(0, np.pi))) ** 2
    x = 0.5 * envelope * np.sin(2 * np.pi * freq * t) + 0.003 * rng.standard_normal(len(t))
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_manifest(root: Path, n: int, seed: int = 0, start: int = 0) -> Path:
    """n tone utterances of varied length; returns the manifest path (appends when it exists)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    new = not manifest.exists()
    with open(manifest, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance"])
        for i in range(start, start + n):
            write_tone(root / "wavs" / f"u{i:04d}.wav", seconds=0.3 + 1.2 * rng.random(),
                       freq=120 + 300 * rng.random(), seed=i)
            w.writerow([f"u{i:04d}", f"wavs/u{i:04d}.wav", f"utterance number {i}", f"spk{i % 3}",
                        ["train", "dev", "test"][i % 3], 4.0, 3.5, 5.0])
    return manifest


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def save_tiny_encoder(kind: str, d: Path) -> Path:
    """A tiny random WavLM / wav2vec2 / HuBERT saved like a hub checkpoint (no download)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg, model = {
        # WavLM with a layer-norm feature encoder: padded batches are exact with an attention mask.
        "wavlm": (tf.WavLMConfig, tf.WavLMModel),
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),  # group norm: one file at a time
        "hubert": (tf.HubertConfig, tf.HubertModel),
    }[kind]
    extra = {"feat_extract_norm": "layer", "do_stable_layer_norm": True} if kind == "wavlm" else {}
    model(cfg(**TINY, **extra)).save_pretrained(d)
    tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=kind == "wavlm").save_pretrained(d)
    return d


def direct_hidden_states(model_dir: Path, wave: np.ndarray, layer: int = -1) -> np.ndarray:
    """One hidden state of a saved encoder for one waveform, computed directly with transformers."""
    import torch
    import transformers as tf

    m = tf.AutoModel.from_pretrained(model_dir).eval()
    x = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.inference_mode():
        return m(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[layer][0].numpy()


@pytest.fixture
def tone_corpus(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "corpus", 12)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msf.pipeline.corpora.demo import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", n=80, seed=0, workers=2, progress=False)


@pytest.fixture(scope="session")
def demo_features(demo_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus extracted with the offline profile (its provided alignment): a real cache."""
    from msf.pipeline.config import MsfConfig
    from msf.pipeline.run.executors import InProcessExecutor  # a real cache; Dask runs: test_execution.py
    from msf.pipeline.run.extraction import Extraction

    cache = tmp_path_factory.mktemp("demo-features") / "cache"
    ex = Extraction(MsfConfig(corpus=f"demo:{demo_corpus}", cache=cache, profile="offline", workers=2,
                              stages={"align": {"backend": "provided"}}), executor=InProcessExecutor())
    ex.run(["acoustic", "global", "local", "extended"], progress=False)
    ex.close()
    return cache


@pytest.fixture(scope="session")
def audio_run(demo_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audio-only run without speaker standardisation: a file's prediction then depends on its own
    frames alone, as a cached utterance's does."""
    from typer.testing import CliRunner

    from msf.cli import app

    run = tmp_path_factory.mktemp("audio-run") / "run"
    r = CliRunner().invoke(app, ["train", "--features", str(demo_features), "--out", str(run), "--sources", "audio",
                                 "--epochs", "2", "--no-speaker-norm", "--set", "train.hidden=16"])
    assert r.exit_code == 0, r.output
    return run
