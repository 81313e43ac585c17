"""Training, evaluation and checkpoints: CCC loss plus router load balance, early stopping on dev mean
CCC, resumable from the last checkpoint, a run directory with everything needed to reuse the model."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from msf.pipeline.backends.device import Device, place, require_device
from msf.pipeline.corpus import TARGETS
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.faults import fault_point
from msf.pipeline.cache.lock import CacheLock
from msf.pipeline.progress import STDERR
from msf.trainer.data import Batch, FeatureSet, batch_groups, epoch_order, parse_sources, scored_splits
from msf.trainer.model import MIN_CCC_UTTERANCES, MsfSer, ModelConfig, ccc_scores


# Padded frames (utterances x the longest) a batch may hold: 32 utterances of 20 s at 50 frames/s.
MAX_BATCH_FRAMES = 32_000


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Path
    name: str = "default"  # the cache's feature set
    labels: str | None = None  # a manifest to take labels and splits from instead of the cache's rows
    # msf's defaults, shared by `train` and `ablate` (whose "full" is this model): chosen on real
    # speech, RAVDESS, where the prosody source and speaker standardisation made the full model the
    # best and steadiest row (docs/trainer.md, "Real speech"); `--preset paper` is the paper's model.
    sources: str = "audio,gs,les,es,prosody"
    fusion: str = "fm-moe"
    fold: int | None = None
    # IEMOCAP's dev in a fold: "speaker" (one speaker of the next session; four sessions train) or
    # "session" (the next session; three train). See pipeline/corpora/iemocap.py:split_for_fold.
    fold_dev: Literal["speaker", "session"] = "speaker"
    device: Device = "cpu"
    seed: int = 0
    epochs: int = Field(60, ge=1)
    patience: int = Field(12, ge=1)
    batch_size: int = Field(32, ge=1)
    # Training batches: a long turn then shares its batch with few others. 0: no bound. (Evaluation
    # batches are bounded by MAX_BATCH_FRAMES too.)
    max_batch_frames: int = Field(MAX_BATCH_FRAMES, ge=0)
    # Training batches of similar lengths (bucketed, then shuffled): less padding; see `batch_groups`.
    bucket: bool = False
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    hidden: int = Field(128, ge=1)
    experts: int = Field(4, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    balance_weight: float = Field(0.01, ge=0)
    modality_dropout: float = Field(0.0, ge=0, le=1)  # share of training utterances whose text sources are hidden
    text_targets: str = "valence,dominance"  # FM-MoE: the targets the text may inform (comma-separated)
    in_memory: bool | None = None  # None: when the frames fit in memory
    threads: int | None = Field(None, ge=1)  # torch CPU threads; CPU results are bit-exact for the same count
    speaker_norm: bool = True  # standardise acoustic frames per speaker (mean and sd of each dimension)
    text_head: bool = True  # FM-MoE: the text projections also read linearly into the predictions
    # Evaluate and keep an exponential moving average of the weights over about this many epochs
    # (0: the weights as trained). In epochs, not steps, so one setting means the same on 300 and
    # 100,000 utterances. 3: every ablation variant's mean test CCC rose on the demo at corpus seeds
    # 0-2, arousal most (docs/trainer.md, "Weight averaging").
    average_epochs: float = 3.0
    # The hidden states of the cached frames to train on (None: every one cached); no re-extraction.
    layers: list[int] | None = None
    # Fail (before training) when a scored split lost an utterance that has labels (see FeatureSet).
    require_full_coverage: bool = False
    # Longer utterances train on a random window of this many seconds (drawn per epoch) and are
    # evaluated window by window, their predictions averaged: memory bounded by the window, not the
    # turn (a 10-minute segment of 25 WavLM-Large layers is ~1.5 GB of float16 frames). None: no crop.
    max_seconds: float | None = Field(30.0, gt=0)

    @field_validator("average_epochs")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("average_epochs must be 0 (off) or positive")
        return value

    @field_validator("text_targets")
    @classmethod
    def _known_targets(cls, value: str) -> str:
        names = [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in names if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
        return ",".join(names)


# Named sets of training settings under everything else the user gives. "msf": TrainConfig's own
# defaults. "paper": the model as the MSF-SER paper describes it: the text informs all three targets,
# no linear text head beside FM-MoE, no prosody source, no speaker standardisation, no weight averaging.
PRESETS: dict[str, dict[str, Any]] = {
    "msf": {},
    "paper": {"sources": "audio,gs,les,es", "text_targets": "valence,arousal,dominance", "text_head": False,
              "speaker_norm": False, "average_epochs": 0.0},
}


def train_settings(sets: list[str] = (), toml: Path | None = None, preset: str | None = None,  # type: ignore[assignment]
                   **given: Any) -> dict[str, Any]:
    """TrainConfig values: the preset (`--preset`, else `[train] preset`, else msf's) < msf.toml's
    `[train]` section (`toml`, else ./msf.toml) < `--set train.KEY=VALUE` < the options given on the
    command line (None: not given). Unknown keys are refused by TrainConfig."""
    import tomllib

    from msf.pipeline.config import CONFIG_FILE, parse_set

    out: dict[str, Any] = {}
    path = toml if toml is not None else Path(CONFIG_FILE)
    if path.is_file():
        try:
            out.update(tomllib.loads(path.read_text(encoding="utf-8")).get("train", {}))
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{path}: {e}") from None
    for item in sets:
        section, name, value = parse_set(item, "train.KEY=VALUE here")
        if section != "train":
            raise UsageError(f"--set expects train.KEY=VALUE here, got {item!r}")
        out[name] = value
    out.update({k: v for k, v in given.items() if v is not None})
    name = preset or out.pop("preset", None) or "msf"
    out.pop("preset", None)
    if name not in PRESETS:
        raise UsageError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    return {**PRESETS[name], **out}


@dataclass
class Evaluation:
    ccc: dict[str, float]
    gates: dict[str, float]
    router: list[list[float]]  # per target, mean probability of each expert
    pred: np.ndarray  # N x 3, in the split's (sorted id) order
    gold: np.ndarray


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (weights of >= 2 dimensions): decaying LayerNorm gains, biases and
    the layer-mixing logits pulls them toward 0, which is no prior any of them has."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Initialisation and dropout from the seed alone; deterministic kernels where torch has them. On
    CPU a run is bit-exact for the same seed, data and thread count (reductions split by thread)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def host_casts(device: str) -> bool:
    """Whether batches are cast to float32 on the host (`make_batch`): yes but for a GPU, which takes
    them as stored (float16: half the bytes over the bus) and casts them itself."""
    return not device.startswith("cuda")


def to_tensors(b: Batch, device: str) -> tuple[torch.Tensor, ...]:
    """frames (float32; a float16 batch is cast on the device), lengths, vectors (a dict), masks (a dict),
    labels on the device."""
    return (torch.from_numpy(b.frames).to(device, non_blocking=True).float(), torch.from_numpy(b.lengths).to(device),
            {k: torch.from_numpy(v).to(device) for k, v in b.vectors.items()},  # type: ignore[return-value]
            {k: torch.from_numpy(m).to(device) for k, m in b.masks.items()},  # type: ignore[return-value]
            torch.from_numpy(b.labels).to(device))


def infer(model: MsfSer, batches: Iterable[Batch], device: str
          ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The one inference loop: evaluation, `msf predict` on files and `msf predict --features` all run
    their batches through it (inference mode; bfloat16 autocast on CUDA, as in training). Returns one
    row per utterance, in the order first seen: ids, predictions, gold labels, auxiliaries; an utterance
    given as several windows (rows sharing its id) gets the mean of its windows'."""
    model.eval()
    ids: list[str] = []
    preds, golds, aux_all = [], [], {}
    with torch.inference_mode():
        for b in batches:
            frames, lengths, vectors, masks, labels = to_tensors(b, device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                p, aux = model(frames, lengths, vectors, masks)
            ids += b.ids
            preds.append(p.float().cpu().numpy())
            golds.append(labels.cpu().numpy())
            for k, v in aux.items():
                aux_all.setdefault(k, []).append(v.float().cpu().numpy())
    rows = {k: np.concatenate(v) for k, v in {"pred": preds, "gold": golds, **aux_all}.items()}
    if len(set(ids)) < len(ids):  # windows of long utterances: one row per utterance, their mean
        first = {u: i for i, u in reversed(list(enumerate(ids)))}
        order = sorted(first.values())
        place = {i: j for j, i in enumerate(order)}
        owner = np.array([place[first[u]] for u in ids])
        counts = np.bincount(owner, minlength=len(order))
        for k, v in rows.items():
            total = np.zeros((len(order), *v.shape[1:]), np.float64)
            np.add.at(total, owner, v)
            rows[k] = (total / counts.reshape(-1, *[1] * (v.ndim - 1))).astype(v.dtype)
        ids = [ids[i] for i in order]
    return ids, rows.pop("pred"), rows.pop("gold"), rows


def predict_split(model: MsfSer, data: FeatureSet, split: str, device: str, batch_size: int = 64,
                  max_frames: int = MAX_BATCH_FRAMES) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Predictions, gold labels and auxiliaries of a split's utterances in its (sorted id) order
    (`infer`; windows per FeatureSet.batches and max_seconds)."""
    ids, pred, gold, aux = infer(model, data.batches(split, batch_size, shuffle=False, max_frames=max_frames,
                                                     cast=host_casts(device)), device)
    assert ids == data.splits[split].ids, "batches of an unshuffled split come in its order"
    return pred, gold, aux


def evaluate(model: MsfSer, data: FeatureSet, split: str, device: str) -> Evaluation:
    pred, gold, aux = predict_split(model, data, split, device)
    out = ccc_scores(pred, gold)
    gates = {s: round(float(g), 4) for s, g in zip(model.text, aux["gates"].mean(0))} if "gates" in aux else {}
    router = aux["router"].mean(0).round(4).tolist() if "router" in aux else []
    return Evaluation(out, gates, router, pred, gold)


# The one prediction schema, wherever a table of predictions is written (a run's predictions.csv, `msf
# predict`): a target's name is the prediction, `gold_<target>` its label.
PREDICTION_COLUMNS = ("id", "speaker", "split", *TARGETS, *(f"gold_{t}" for t in TARGETS))


@dataclass
class PredictionRow:
    id: str
    split: str
    pred: list[float]
    gold: list[float] | None  # None: unlabelled


def read_predictions(path: Path) -> list[PredictionRow]:
    """A prediction table; also those written before the schema above (`pred_<target>` the prediction,
    `<target>` the label)."""
    import csv

    rows = list(csv.DictReader(open(path)))
    old = bool(rows) and f"pred_{TARGETS[0]}" in rows[0]
    pred = [f"pred_{t}" for t in TARGETS] if old else list(TARGETS)
    gold = list(TARGETS) if old else [f"gold_{t}" for t in TARGETS]
    return [PredictionRow(r["id"], r["split"], [float(r[c]) for c in pred],
                          [float(r[c]) for c in gold] if r[gold[0]] else None) for r in rows]


def split_predictions(data: FeatureSet, split: str, pred: np.ndarray, gold: np.ndarray) -> list[tuple]:
    s = data.splits[split]
    return list(zip(s.ids, s.speaker_ids, [split] * len(s.ids), pred, gold))


def write_predictions(path: Path, rows: list[tuple]) -> None:
    """The one prediction table (id, speaker, split, predicted V/A/D, gold V/A/D or empty) of a run
    (RUN/predictions.csv) and of `msf predict --features`."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PREDICTION_COLUMNS)
        for uid, speaker, split, pred, gold in rows:
            w.writerow([uid, speaker, split, *(f"{v:.4f}" for v in pred),
                        *(("",) * len(TARGETS) if gold is None or np.isnan(gold).any() else (f"{v:g}" for v in gold))])


def weight_average(model: MsfSer, epochs: float, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics) with a horizon of about
    `epochs` epochs; None when off."""
    if epochs <= 0:
        return None
    decay = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash never leaves a half-written checkpoint under the real name


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only


def load_weights(model: MsfSer, state: dict[str, torch.Tensor], path: Path) -> None:
    """The checkpoint's weights into the model, or one clear message when the model has changed since."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        parts = sorted({".".join(k.split(".")[:2]) for k in set(model.state_dict()) ^ set(state)})  # in one only
        raise UsageError(f"{path} was written by another version of the msf model (parts differ: "
                         f"{', '.join(parts) or 'shapes'}); train it again into a new --out") from e


def train(cfg: TrainConfig, out: Path, progress: bool = True, data: FeatureSet | None = None) -> dict[str, Any]:
    """Train (or resume) into OUT; returns the metrics written to OUT/metrics.json."""
    sources = parse_sources(cfg.sources)
    if cfg.fusion not in ("fm-moe", "concat"):
        raise UsageError(f"--fusion must be fm-moe or concat, not {cfg.fusion!r}")
    require_device(cfg.device, "--device")  # before any data is read or the run folder made
    # The same command started twice (two terminals, a resubmitted job) would interleave checkpoints.
    with CacheLock(out, kind="run", way_out="or use another --out"):
        return _train(cfg, out, sources, progress, data)


def _train(cfg: TrainConfig, out: Path, sources: tuple[str, ...], progress: bool,
           data: FeatureSet | None) -> dict[str, Any]:
    resolved = cfg.model_dump(mode="json")
    last = out / "last.pt"
    if (out / "config.json").exists() and last.exists():
        before = json.loads((out / "config.json").read_text())
        keys = [k for k in sorted(set(before) | set(resolved)) if before.get(k) != resolved.get(k)]
        if keys == ["epochs"] and resolved["epochs"] > before["epochs"]:
            # Nothing in training depends on the number of epochs but when it stops (constant learning
            # rate; the weight average's horizon and early stopping count in epochs done): going on from
            # the last checkpoint trains what a run started with the larger number would have.
            STDERR.print(f"continuing {out} to {resolved['epochs']} epochs (it was started for {before['epochs']})")
        elif keys:
            differ = [f"{k}: {before.get(k)!r} there, {resolved.get(k)!r} now" for k in keys]
            raise UsageError(f"{out} holds a run with other settings ({'; '.join(differ)}); a run resumes only with "
                             "the settings it was started with (only a larger --epochs continues it), so choose "
                             "another --out or delete it")
    (out / "config.json").write_text(json.dumps(resolved, indent=2))
    seed_everything(cfg.seed, cfg.threads)
    data = data or FeatureSet(cfg.features, sources, cfg.fold, cfg.name, cfg.labels, cfg.in_memory,
                              speaker_norm=cfg.speaker_norm, layers=cfg.layers, fold_dev=cfg.fold_dev,
                              max_seconds=cfg.max_seconds)
    if bool(data.speaker_stats) != cfg.speaker_norm:
        raise UsageError("the feature set given was loaded with speaker_norm="
                         f"{bool(data.speaker_stats)}, the run asks for {cfg.speaker_norm}")
    report_coverage(data, out, cfg.require_full_coverage)
    if len(data.splits["dev"].ids) < MIN_CCC_UTTERANCES:  # dev's CCC chooses the epoch kept
        raise UsageError(f"the dev split has {len(data.splits['dev'].ids)} utterance(s): its CCC, which chooses the "
                         f"epoch kept, is not defined on fewer than {MIN_CCC_UTTERANCES}; give dev more utterances")
    (out / "extraction.json").write_text(data.extraction)
    data.baseline().save(out)  # `msf predict` puts new audio against the same population
    mcfg = ModelConfig(tuple(data.frame_shape), {s: d for s, d in data.vector_dims.items()}, sources, cfg.fusion,
                       cfg.hidden, cfg.experts, cfg.dropout, modality_dropout=cfg.modality_dropout,
                       text_targets=tuple(filter(None, cfg.text_targets.split(","))), text_head=cfg.text_head)
    model = MsfSer(mcfg)
    model.label_mean.copy_(torch.from_numpy(data.splits["train"].labels.mean(0)))
    place(model, cfg.device, "--device")
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    train_ids = data.splits["train"].ids
    steps = len(batch_groups(epoch_order(train_ids, cfg.seed, 0), cfg.batch_size, training=True,
                             lengths=data.lengths("train") if cfg.max_batch_frames or cfg.bucket else None,
                             max_frames=cfg.max_batch_frames, bucket=cfg.bucket))
    averaged = weight_average(model, cfg.average_epochs, steps)
    scored = averaged.module if averaged else model  # what dev sees and best.pt keeps
    digest = data.digest(sources)
    state = {"epoch": 0, "best": -1e9, "best_epoch": 0, "history": [], "data_digest": digest}
    if last.exists():  # resume exactly where the last finished epoch left off
        ck = load_checkpoint(last)
        check_same_data(out, json.loads(ck["state"]), digest)
        load_weights(model, ck["model"], last)
        opt.load_state_dict(ck["optimizer"])
        if averaged:
            averaged.load_state_dict(ck["averaged"])
        state = json.loads(ck["state"])
        torch.set_rng_state(ck["torch_rng"])
        STDERR.print(f"resuming {out} after epoch {state['epoch']}")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=STDERR, disable=not progress) as bar:
        task = bar.add_task(f"train {cfg.sources} {cfg.fusion}", total=cfg.epochs, completed=state["epoch"], info="")
        while state["epoch"] < cfg.epochs and state["epoch"] - state["best_epoch"] < cfg.patience:
            model.train()
            t0, losses = time.perf_counter(), []
            for b in data.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=state["epoch"],
                                  max_frames=cfg.max_batch_frames, bucket=cfg.bucket, cast=host_casts(cfg.device)):
                frames, lengths, vectors, masks, labels = to_tensors(b, cfg.device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.device.startswith("cuda")):
                    pred, aux = model(frames, lengths, vectors, masks)
                loss = model.loss(pred, labels, aux, cfg.balance_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                fault_point("train-batch")
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                if averaged:
                    averaged.update_parameters(model)
                losses.append(loss.item())
            dev = evaluate(scored, data, "dev", cfg.device).ccc
            state["epoch"] += 1
            state["history"].append({"epoch": state["epoch"], "loss": float(np.mean(losses)), **dev,
                                     "seconds": round(time.perf_counter() - t0, 3)})
            if dev["ccc_mean"] > state["best"]:
                state["best"], state["best_epoch"] = dev["ccc_mean"], state["epoch"]
                _save_atomic({"model": scored.state_dict(), "model_config": json.dumps(mcfg.to_json())},
                             out / "best.pt")
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": json.dumps(state),
                          "torch_rng": torch.get_rng_state(),
                          **({"averaged": averaged.state_dict()} if averaged else {})}, last)
            bar.update(task, completed=state["epoch"], info=f"dev CCC {dev['ccc_mean']:.3f} (best {state['best']:.3f})")
    load_weights(model, load_checkpoint(out / "best.pt")["model"], out / "best.pt")
    return finish(model, data, digest, cfg.device, out, state["history"])


def check_same_data(out: Path, state: dict[str, Any], digest: str) -> None:
    """Refuse to resume a run on other data: features re-extracted with other settings (or code), other
    labels or splits. Its checkpoints would go on training, and be scored, on what they never saw."""
    trained_on = state.get("data_digest")
    if trained_on is None and (out / "metrics.json").exists():  # a run from before the digest was kept here
        trained_on = json.loads((out / "metrics.json").read_text()).get("data", {}).get("digest")
    if trained_on != digest:
        raise UsageError(f"{out} holds a run trained on other data (data digest {trained_on or 'not recorded'}, "
                         f"now {digest}: the features, labels or splits changed); choose another --out or delete it")


def report_coverage(data: FeatureSet, out: Path, require_full: bool = False) -> None:
    """OUT/dropped.csv (id, split, reason of every utterance not trained or scored on), one line per
    scored split's coverage, the text sources masked; with `require_full`, a UsageError (before any
    training) when a scored split lost a labelled utterance."""
    import csv

    with open(out / "dropped.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "reason"])
        w.writerows(data.dropped)
    coverage = {k: v for k, v in data.coverage().items() if k != "train"}
    short = {k: v for k, v in coverage.items() if v["kept"] < v["total"]}
    parts = ["coverage: " + ", ".join(f"{k} {v['kept']}/{v['total']}" for k, v in coverage.items())]
    if data.dropped:
        why = ", ".join(f"{n} {reason}" for reason, n in data.skipped.items())
        parts.append(f"dropped {len(data.dropped)} ({why}): see {out / 'dropped.csv'}")
    masked = ", ".join(f"{s} for {n}" for s, n in data.masked.items() if n)
    if masked:
        parts.append(f"masked where a text-side stage failed: {masked}")
    STDERR.print("; ".join(parts))
    if require_full and short:
        raise UsageError("--require-full-coverage: " + ", ".join(f"{k} kept {v['kept']} of {v['total']}"
                                                                 for k, v in short.items())
                         + f" labelled utterances (reasons in {out / 'dropped.csv'})")


def finish(model: MsfSer, data: FeatureSet, digest: str, device: str, out: Path,
           history: list[dict]) -> dict[str, Any]:
    """metrics.json (CCC on dev, test and every other labelled split, each with its n), predictions.csv
    (every scored utterance), usage.json (gate and router statistics), curves.png."""
    metrics: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    predictions = []
    for split in scored_splits(data.splits):
        ev = evaluate(model, data, split, device)
        metrics[split] = {**ev.ccc, "n": len(data.splits[split].ids)}
        if ev.ccc["ccc_mean"] is None:
            STDERR.print(f"[yellow]warning:[/] split {split!r} has {len(data.splits[split].ids)} utterance(s): CCC is "
                         f"not defined on fewer than {MIN_CCC_UTTERANCES}; metrics.json gives null, not a score")
        usage[split] = {"gates": ev.gates, "router": dict(zip(TARGETS, ev.router))}
        predictions += split_predictions(data, split, ev.pred, ev.gold)
    write_predictions(out / "predictions.csv", predictions)
    metrics["skipped"] = data.skipped
    metrics["coverage"] = {k: v for k, v in data.coverage().items() if k != "train"}
    if any(data.masked.values()):
        metrics["masked"] = {s: n for s, n in data.masked.items() if n}
    metrics["data"] = {"digest": digest, "feature_set": data.name, **{s: len(v.ids) for s, v in data.splits.items()}}
    if data.unmatched_label_rows:
        metrics["data"]["label_rows_without_cached_utterance"] = data.unmatched_label_rows
    metrics["threads"] = torch.get_num_threads()
    if history:
        metrics["best_epoch"] = max(history, key=lambda h: h["ccc_mean"])["epoch"]
        (out / "history.json").write_text(json.dumps(history, indent=2))
        plot_curves(history, out / "curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "usage.json").write_text(json.dumps(usage, indent=2))
    return metrics


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["loss"] for h in history])
    a.set(title="training loss", xlabel="epoch")
    for t in (*TARGETS, "mean"):
        b.plot(ep, [h[f"ccc_{t}"] for h in history], label=t, lw=2 if t == "mean" else 1)
    b.set(title="dev CCC", xlabel="epoch")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_features(cfg: TrainConfig, features: Path, name: str | None = None, labels: str | None = None,
                 run_baseline: Any = None) -> FeatureSet:
    """What a trained run reads from a cache (its sources, fold, layers, speaker standardisation and
    windows), from the feature set and labels given or the run's own; `run_baseline` (RunBaseline):
    utterances without a speaker baseline against the run's training population."""
    return FeatureSet(features, parse_sources(cfg.sources), cfg.fold, name or cfg.name, labels or cfg.labels,
                      speaker_norm=cfg.speaker_norm, layers=cfg.layers, fold_dev=cfg.fold_dev,
                      run_baseline=run_baseline, max_seconds=cfg.max_seconds)


def evaluate_run(run: Path, features: Path, name: str | None = None, labels: str | None = None,
                 device: str = "cpu") -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`msf evaluate`: a trained run's CCC (with n) on every scored split of a cache, and the settings in
    which that cache's features differ from the run's training features (allowed, and said)."""
    from msf.pipeline.cache.planning import settings_changes
    from msf.pipeline.config import MsfConfig
    from msf.trainer.data import STAGE_OF

    model, cfg = load_run(run, device)
    data = run_features(cfg, features, name, labels)
    changes = settings_changes(MsfConfig.model_validate_json((run / "extraction.json").read_text()),
                               MsfConfig.model_validate_json(data.extraction), [STAGE_OF[s] for s in data.sources])
    result = {s: {**evaluate(model, data, s, device).ccc, "n": len(data.splits[s].ids)}
              for s in scored_splits(data.splits)}
    return result, changes


def load_run(run: Path, device: str = "cpu") -> tuple[MsfSer, TrainConfig]:
    if not (run / "config.json").is_file() or not (run / "best.pt").is_file():
        inside = sorted(str(p.parent) for p in run.glob("*/best.pt"))  # `msf ablate`'s variant/seed-K
        raise NotFound(f"{run} is not a trained run (no config.json and best.pt)"
                       + (f"; it holds runs: {', '.join(inside)}" if inside else
                          "; `msf train --out DIR` writes one"))
    cfg = TrainConfig.model_validate_json((run / "config.json").read_text())
    best = load_checkpoint(run / "best.pt")
    mc = json.loads(best["model_config"])
    mcfg = ModelConfig(**{**mc, "frame_shape": tuple(mc["frame_shape"]), "sources": tuple(mc["sources"])})
    model = place(MsfSer(mcfg), device, "--device")
    load_weights(model, best["model"], run / "best.pt")
    model.eval()
    return model, cfg
