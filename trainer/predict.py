"""`msf predict`: new audio through the same stages, with the settings the run's features were made with,
in this process (no cluster, no manifest), then the run's model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msf.pipeline.config import MsfConfig
from msf.pipeline.corpus import Corpus, Utterance
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.executors import InProcessExecutor
from msf.pipeline.extraction import Extraction
from msf.pipeline.progress import STDERR
from msf.trainer.data import STAGE_OF, TARGETS, make_batch, mean_sd, source_vector
from msf.trainer.train import load_run, to_tensors


def predict(audio: list[Path], run: Path, transcript: str | None = None, device: str = "cpu",
            progress: bool = True) -> list[dict[str, Any]]:
    if transcript and len(audio) > 1:  # one text for several files would fail all but (at most) one
        raise UsageError(f"--transcript gives the words of one file; {len(audio)} were given (predict them one "
                         "at a time, or leave --transcript out and Whisper transcribes each)")
    model, cfg = load_run(run, device)
    config = MsfConfig.model_validate_json((run / "extraction.json").read_text())
    stages = dict(config.stages)
    if stages.get("align", {}).get("backend") == "provided":
        # A corpus's own alignment does not exist for new audio: the offline profile's aligner instead.
        stages["align"] = {**stages["align"], "backend": "sphinx"}
        STDERR.print("align: the features used the corpus's provided alignment; new audio is aligned with sphinx "
                     "(after whisper ASR when there is no --transcript)")
    missing = [str(a) for a in audio if not Path(a).is_file()]
    if missing:
        raise NotFound(f"audio not found: {', '.join(missing)}")
    ids = [f"{i:04d}_{Path(a).stem}" for i, a in enumerate(audio)]
    # One speaker group: the files' pitch, loudness and rate are relative to each other.
    corpus = Corpus("predict", "predict", [Utterance(i, str(Path(a).resolve()), speaker="predict", split="test",
                                                     transcript=transcript or None) for i, a in zip(ids, audio)])
    sources = cfg.sources.split(",")
    with tempfile.TemporaryDirectory(prefix="msf-predict-") as tmp:
        ex = Extraction(config.model_copy(update={"cache": Path(tmp) / "cache", "stages": stages, "name": "predict"}),
                        corpus=corpus, executor=InProcessExecutor())
        try:
            stages = [STAGE_OF[s] for s in sources]
            ex.run(stages, progress=progress)
            failures: dict[str, str] = {}
            for stage in ex.plan(stages).order:  # the root cause, not the stages it blocked downstream
                for f in ex.failures(stage).values():
                    if not f.error.startswith("upstream stage") or f.utt not in failures:
                        failures[f.utt] = f"{f.stage}: {f.error}"
            ok = [i for i in ids if i not in failures]
            results: dict[str, dict[str, Any]] = {i: {"error": failures[i]} for i in failures if i in ids}
            if ok:
                frames = [np.asarray(ex.read("acoustic", i)["frames"], np.float32) for i in ok]
                if cfg.speaker_norm:  # the files are one speaker group: standardised by their own frames
                    allf = np.concatenate(frames).astype(np.float64)
                    mean, sd = mean_sd(len(allf), allf.sum(0), (allf**2).sum(0))
                    frames = [(f - mean) / sd for f in frames]
                vectors = {s: np.stack([source_vector(s, ex.read(STAGE_OF[s], i)) for i in ok])
                           for s in sources if s != "audio"}
                mask = np.array([bool(ex.read("local", i)["mask"]) if "les" in vectors else True for i in ok])
                b = make_batch(frames, vectors, mask, np.zeros((len(ok), 3), np.float32), ok)
                frames_t, lengths, vecs, les_mask, _ = to_tensors(b, device)
                with torch.inference_mode():
                    pred, _ = model(frames_t, lengths, vecs, les_mask)
                for i, p in zip(ok, pred.float().cpu().numpy()):
                    results[i] = {t: round(float(v), 4) for t, v in zip(TARGETS, p)}
        finally:
            ex.close()
    return [{"audio": str(a), **results[i]} for i, a in zip(ids, audio)]
