"""`msf predict`: new audio through the same stages, with the settings the run's features were made with,
in this process (no cluster), then the run's model.

A prediction is a function of the file (and of the speaker and transcript the user gives): each file is
its own utterance, with an id made from its path; one without a speaker group worth the name is put
against the run's training population (pipeline/speaker_baseline.py), never against the other files of
the call. Features go to a cache (`cache`, or a temporary one), committed shard by shard, so a rerun
with the same cache after a crash, or with another run's model, recomputes nothing it already has and
pays no language-model call twice. Rows are written as each batch is predicted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.cache.view import CacheView
from msf.pipeline.config import MsfConfig
from msf.pipeline.corpus import TARGETS, Corpus, Utterance, load_corpus
from msf.pipeline.errors import NotFound, UsageError
from msf.pipeline.run.executors import InProcessExecutor
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.progress import STDERR
from msf.pipeline.speaker_baseline import RunBaseline, frame_baselines, gender_of
from msf.trainer.data import (SOURCE_FIELDS, STAGE_OF, batch_groups, crop_frames, evaluation_windows, make_batch,
                              source_matrix, source_present)
from msf.trainer.train import MAX_BATCH_FRAMES, host_casts, infer, load_run

if TYPE_CHECKING:
    from msf.trainer.ensemble import Ensemble

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")
READ_AHEAD = 64  # files whose features are read together, then cut into batches bounded by frames
COLUMNS = ("id", "audio", "speaker", *TARGETS, "masked", "error")


def file_id(path: Path) -> str:
    """An utterance id that depends on the file's path alone, so a rerun finds its cached features."""
    resolved = str(path.resolve())
    return f"{path.stem}-{hashlib.blake2b(resolved.encode(), digest_size=4).hexdigest()}"


def predict_corpus(inputs: list[Path], transcript: str | None = None) -> tuple[Corpus, dict[str, str]]:
    """The utterances to predict: audio files, every audio file of a folder (sorted), or a manifest
    (.csv/.jsonl with `id` and `audio`, optional `speaker`, `transcript`, `gender`); and each one's
    audio path as the user gave it."""
    utts: list[Utterance] = []
    shown: dict[str, str] = {}
    for p in inputs:
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
            if not files:
                raise UsageError(f"{p}: a folder with no audio files ({', '.join(AUDIO_SUFFIXES)})")
            utts += [Utterance(file_id(f), str(f.resolve())) for f in files]
            shown.update((file_id(f), str(f)) for f in files)
        elif p.suffix.lower() in (".csv", ".jsonl"):
            corpus = load_corpus(str(p), check_audio=False)
            if corpus.problems:
                STDERR.print(f"{p}: {len(corpus.problems)} row(s) refused: " + "; ".join(map(str, corpus.problems[:5])))
            utts += corpus.utterances
        elif p.is_file():
            utts.append(Utterance(file_id(p), str(p.resolve())))
            shown[utts[-1].id] = str(p)
        else:
            raise NotFound(f"audio not found: {p}")
    if transcript:
        if len(utts) > 1:  # one text for several files would fail all but (at most) one
            raise UsageError(f"--transcript gives the words of one file; {len(utts)} were given (a manifest's "
                             "`transcript` column gives each file its own, or Whisper transcribes them)")
        utts = [Utterance(u.id, u.audio, u.speaker, transcript=transcript, extra=u.extra) for u in utts]
    seen: set[str] = set()
    dupes = [u.id for u in utts if u.id in seen or seen.add(u.id)]  # type: ignore[func-returns-value]
    if dupes:
        raise UsageError(f"the same file (or id) is given twice: {', '.join(dupes[:5])}")
    return Corpus("predict", "predict", [Utterance(u.id, u.audio, u.speaker, "test", u.transcript, extra=u.extra)
                                         for u in utts]), shown


@dataclass
class RowWriter:
    """One row per file, appended as it is predicted (CSV or JSON lines by the suffix), flushed per batch."""

    path: Path | None

    def __post_init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._f = None
        if self.path is not None:
            if self.path.suffix.lower() not in (".csv", ".jsonl"):
                raise UsageError(f"--out {self.path}: write .csv or .jsonl")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8", newline="")
            self._csv = csv.DictWriter(self._f, COLUMNS) if self.path.suffix.lower() == ".csv" else None
            if self._csv:
                self._csv.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        if self._f is None:
            return
        for r in rows:
            if self._csv:
                self._csv.writerow({c: r.get(c, "") for c in COLUMNS})
            else:
                self._f.write(json.dumps(r) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def predict(inputs: list[Path], run: Path, transcript: str | None = None, device: str = "cpu",
            progress: bool = True, cache: Path | None = None, out: Path | None = None,
            settings: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows (id, audio, speaker, V/A/D or error, and `masked`: the sources left out because a text-side
    stage failed, with the cause) in the inputs' order; also written to `out` as they come.
    `settings`: stage settings that cannot change a result (devices, batch sizes) over the run's."""
    model, cfg = load_run(run, device)
    config = MsfConfig.model_validate_json((run / "extraction.json").read_text())
    stages = {k: dict(v) for k, v in config.stages.items()}
    for stage, values in (settings or {}).items():
        stages.setdefault(stage, {}).update(values)
    # A prediction is a function of the file: Whisper decodes one file a call (batched files can, rarely,
    # hear a word differently with other files beside them; docs/config.md, align.asr_batch).
    stages.setdefault("align", {})["asr_batch"] = 1
    if stages.get("align", {}).get("backend") == "provided":
        # A corpus's own alignment does not exist for new audio: the offline profile's aligner instead.
        stages["align"] = {**stages["align"], "backend": "sphinx"}
        STDERR.print("align: the features used the corpus's provided alignment; new audio is aligned with sphinx "
                     "(after whisper ASR when there is no transcript)")
    if out is not None and any(Path(i).resolve() == out.resolve() for i in inputs):
        raise UsageError(f"--out {out} is one of the inputs: it would be overwritten; write the predictions elsewhere")
    corpus, shown = predict_corpus(inputs, transcript)
    sources = cfg.sources.split(",")
    baseline = RunBaseline.load(run)
    writer = RowWriter(out)
    with ExitStack() as stack:
        root = cache if cache is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msf-predict-")))
        ex = Extraction(config.model_copy(update={"cache": root, "stages": stages, "name": "predict"}),
                        corpus=corpus, executor=InProcessExecutor())
        stack.callback(writer.close)
        stack.callback(ex.close)
        needed = list(dict.fromkeys(STAGE_OF[s] for s in sources))
        ex.run(needed, progress=progress)
        failed: dict[str, dict[str, str]] = {}  # utterance -> stage -> the root cause's message
        for stage in ex.plan(needed).order:
            for f in ex.failures(stage).values():
                failed.setdefault(f.utt, {})[stage] = f"{f.root}: {f.error}"  # blocked upstream: its root cause
        rows = {u.id: {"id": u.id, "audio": shown.get(u.id, u.audio), "speaker": u.speaker} for u in corpus.utterances}
        for u in corpus.utterances:  # no acoustic features: no prediction; a text-side failure: masked
            causes = failed.get(u.id, {})
            if "acoustic" in causes:
                rows[u.id]["error"] = causes["acoustic"]
            elif lost := [s for s in sources if STAGE_OF[s] in causes]:
                rows[u.id]["masked"] = f"{','.join(lost)} ({causes[STAGE_OF[lost[0]]]})"
        writer.write([r for r in rows.values() if "error" in r])
        ok = [u for u in corpus.utterances if "error" not in rows[u.id]]
        with CacheView.open(root, "predict") as view:
            column = view.column(SOURCE_FIELDS["audio"][0], [u.id for u in ok], cfg.layers)
            frame_stats = _frame_stats(column, ok, baseline) if cfg.speaker_norm else None
            crop = crop_frames(view, [u.id for u in ok], cfg.max_seconds)
            for start in range(0, len(ok), READ_AHEAD):
                chunk = ok[start : start + READ_AHEAD]
                frames = column.read(range(start, start + len(chunk)))
                if frame_stats is not None:
                    frames = [(f.astype(np.float32) - m) / sd for f, (m, sd) in zip(frames, map(frame_stats, chunk))]
                records = {st: view.records(st, [u.id for u in chunk]) for st in needed if st != "acoustic"}
                text = [s for s in sources if s != "audio"]
                vectors = {s: source_matrix(s, chunk, records[STAGE_OF[s]], _population(baseline, s)) for s in text}
                masks = {s: np.array([source_present(s, records[STAGE_OF[s]].get(u.id)) for u in chunk]) for s in text}
                # a file longer than the run's max_seconds is predicted window by window and its windows'
                # predictions averaged, as evaluation does (evaluation_windows): memory bounded by the window
                windows = [(k, a, b) for k in range(len(chunk)) for a, b in evaluation_windows(len(frames[k]), crop)]
                owner = np.array([k for k, _, _ in windows])
                pieces = [frames[k] if b < 0 else frames[k][a:b] for k, a, b in windows]
                groups = batch_groups(np.arange(len(windows)), 64, training=False,
                                      lengths=np.array([len(f) for f in pieces]), max_frames=MAX_BATCH_FRAMES)
                batches = (make_batch([pieces[i] for i in g], {s: v[owner[g]] for s, v in vectors.items()},
                                      {s: m[owner[g]] for s, m in masks.items()},
                                      np.zeros((len(g), len(TARGETS)), np.float32), [chunk[k].id for k in owner[g]],
                                      cast=host_casts(device)) for g in groups)
                ids, pred, _, _ = infer(model, batches, device)  # the loop evaluation runs, windows averaged
                for uid, p in zip(ids, pred):
                    rows[uid].update({t: round(float(v), 4) for t, v in zip(TARGETS, p)})
                writer.write([rows[u.id] for u in chunk])
    return [rows[u.id] for u in corpus.utterances]


def parse_volatile(sets: list[str]) -> dict[str, dict[str, Any]]:
    """--set STAGE.KEY=VALUE for `predict`: only settings a stage declares cannot change its results
    (devices, batch sizes); any other would make features unlike the ones the model was trained on."""
    from msf.pipeline.config import parse_set
    from msf.pipeline.stage import stage_class

    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        stage, name, value = parse_set(item, "STAGE.KEY=VALUE")
        if not stage:
            raise UsageError(f"--set expects STAGE.KEY=VALUE, got {item!r}")
        key = f"{stage}.{name}"
        cls = stage_class(stage)
        if name not in cls.volatile:
            allowed = ", ".join(sorted(cls.volatile)) or "none"
            raise UsageError(f"--set {key}: predict takes only settings that cannot change a result, so the "
                             f"features match the run's; for {stage!r}: {allowed}")
        out.setdefault(stage, {})[name] = value
    return out


def _population(baseline: RunBaseline, source: str) -> Any:
    if source == "prosody" and baseline.population is None:
        raise UsageError("this run was trained before runs kept their training population (baseline.npz); "
                         "train it again to predict with the prosody source")
    return baseline.population


def _frame_stats(column: ArrayColumn, utts: list[Utterance], baseline: RunBaseline) -> Callable[[Utterance], Any]:
    """utterance -> (mean, sd) for --speaker-norm (speaker_baseline.frame_baselines): a speaker the user
    named with enough files is standardised by its own frames, every other file by the run's training
    population."""
    stats, keys = frame_baselines([u.group_key("speaker") for u in utts], [gender_of(u.extra) for u in utts],
                                  [False] * len(utts), column.read, baseline)
    by_id = {u.id: stats[k] for u, k in zip(utts, keys)}
    return lambda u: by_id[u.id]


def predict_ensemble(inputs: list[Path], ensemble: "Ensemble", transcript: str | None = None, device: str = "cpu",
                     progress: bool = True, cache: Path | None = None, out: Path | None = None,
                     settings: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The members' predictions of the files combined with the ensemble's weights, rows in the inputs'
    order (written to `out` once every member has predicted). The members share one feature cache, so a
    stage with the same settings in several of them is extracted once (found by its fingerprint)."""
    with ExitStack() as stack:
        root = cache if cache is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="msf-predict-")))
        per_member = [predict(inputs, run, transcript, device, progress, cache=root, settings=settings)
                      for run in ensemble.members]
    weights = ensemble.weight_matrix()
    rows = []
    for k, first in enumerate(per_member[0]):
        of_file = [member[k] for member in per_member]
        row = {c: first[c] for c in ("id", "audio", "speaker")}
        errors = [r["error"] for r in of_file if "error" in r]
        if errors:  # a member without features for the file: no ensemble prediction for it
            row["error"] = errors[0]
        else:
            row.update({t: round(float(sum(weights[i, j] * r[t] for i, r in enumerate(of_file))), 4)
                        for j, t in enumerate(TARGETS)})
        masked = list(dict.fromkeys(r["masked"] for r in of_file if r.get("masked")))
        if masked:
            row["masked"] = "; ".join(masked)
        rows.append(row)
    writer = RowWriter(out)
    try:
        writer.write(rows)
    finally:
        writer.close()
    return rows


def predict_cached(ensemble: "Ensemble", features: Path, split: str, out: Path, device: str = "cpu") -> int:
    """`msf predict --features CACHE --split S --out FILE`: a run's predictions (a run is an ensemble of
    one) or several runs' combined, for every utterance of split S of a cache that every member has
    (labelled or not, e.g. MSP-Podcast's Test3), with gold labels where known, in the one prediction
    table; utterances without a speaker baseline against each run's training population. Returns the
    number of rows written."""
    from msf.trainer.ensemble import member_predictions
    from msf.trainer.train import write_predictions

    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: predictions are written as .csv")
    r = member_predictions(ensemble, features, [split], device, required=True)[split]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, list(zip(r.ids, r.speakers, [split] * len(r.ids), ensemble.combine(r.preds), r.gold)))
    if r.dropped:
        lost = list(r.dropped.items())
        STDERR.print(f"{len(lost)} utterance(s) of {split} not predicted: " + ", ".join(
            f"{uid} ({why})" for uid, why in lost[:5]) + (" ..." if len(lost) > 5 else ""))
    return len(r.ids)
