"""The corpus model shared by every reader: one Utterance per manifest row, plus the rows that were refused."""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from msf.pipeline.errors import MsfError


class CorpusError(MsfError, ValueError):
    """The corpus as a whole cannot be read (wrong path, missing required columns, unknown spec)."""


# Extra fields whose values name files (a provided alignment). Fingerprints take a file's content,
# never its path, so a corpus folder that moves keeps every fingerprint.
FILE_EXTRAS = frozenset({"truth", "wdseg", "alignment"})
# Speaker ids that name nobody (MSP-Podcast's "Unknown", empty cells): such utterances never form one
# speaker group, each is a group of its own (speaker statistics over strangers would mix people).
TARGETS = ("valence", "arousal", "dominance")
# An undeclared label scale is inferred (CorpusBuilder._refuse_off_scale), once a target has this many
# labelled rows, as the narrowest of the rating scales of the field that holds its 1st to 99th percentile.
MIN_ROWS_FOR_SCALE = 20
RATING_SCALES = ((0.0, 1.0), (-1.0, 1.0), (1.0, 5.0), (1.0, 7.0), (1.0, 9.0), (0.0, 10.0), (0.0, 100.0))  # narrowest first
UNKNOWN_SPEAKERS = frozenset({"", "unknown", "none", "nan", "n/a", "na", "-", "?"})


@dataclass(slots=True)  # not frozen: frozen dataclasses cost 3 us each to build, 0.3 s per 100k rows
class Utterance:
    id: str
    audio: str  # absolute path
    speaker: str = ""
    split: str = ""
    transcript: str | None = None
    # Named targets (e.g. {"valence": 3.2, "arousal": 4.0, "dominance": 3.5}); an unlabelled one is absent.
    # Named, not three fixed fields, so a corpus may carry another rating beside them.
    targets: dict[str, float] = field(default_factory=dict)
    # Reader-specific hints a stage may read, e.g. {"wdseg": path} or {"session": "3"}.
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # by hand (a test checks it names every field): dataclasses.asdict deep-copies, 10x slower
        return {"id": self.id, "audio": self.audio, "speaker": self.speaker, "split": self.split,
                "transcript": self.transcript, "targets": dict(self.targets), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Utterance":
        return cls(**d)

    def to_row(self) -> tuple[Any, ...]:
        """The utterance as the cache index records it (its `utterances` table's first seven columns):
        the one row serialiser, with `from_row`."""
        return (self.id, self.audio, self.speaker, self.split, self.transcript, _json(self.targets),
                _json(self.extra))

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> "Utterance":
        return cls(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] != "{}" else {},
                   json.loads(r[6]) if r[6] != "{}" else {})

    def group_key(self, field: str) -> str:
        """The group this utterance belongs to by `field`; an unknown speaker is a group of its own."""
        value = str(getattr(self, field) or "")
        if field == "speaker" and value.strip().lower() in UNKNOWN_SPEAKERS:
            return f"\x00{self.id}"  # cannot collide with a real speaker id
        return value

    @property
    def labels(self) -> tuple[float, float, float] | None:
        """The trainer's targets (TARGETS) in order, or None when one of them is missing."""
        t = self.targets
        try:
            return tuple(t[name] for name in TARGETS)  # type: ignore[return-value]
        except KeyError:
            return None


def target_names(utterances: Iterable[Utterance]) -> list[str]:
    """The targets the utterances are rated on: the trainer's (TARGETS) first, then any other, by name."""
    other = {name for u in utterances for name in u.targets} - set(TARGETS)
    return [*TARGETS, *sorted(other)]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: equal values always serialise, and hash, equal (the
    recorded row here, fingerprints in the cache)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _json(d: dict[str, Any]) -> str:
    return canonical_json(d) if d else "{}"


@dataclass(frozen=True)
class CorpusProblem:
    """A row that was refused or needs attention; `where` names the file and row or utterance."""

    where: str
    message: str
    dropped: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + ("" if self.dropped else " (kept)")

    @classmethod
    def missing_audio(cls, where: str, audio: str) -> "CorpusProblem":
        # Kept on purpose: the `audio` stage records the failure, so it shows in `msf status --failed`.
        return cls(where, f"audio file not found: {audio}", dropped=False)


@dataclass
class Corpus:
    name: str
    spec: str
    utterances: list[Utterance]
    problems: list[CorpusProblem] = field(default_factory=list)
    label_range: tuple[float, float] | None = None
    where: dict[str, str] = field(default_factory=dict)  # utterance id -> file:row

    def missing_audio(self, audio_hashes: dict[str, str]) -> None:
        """Report audio files a content-hash pass found missing (when the reader did not look), by
        utterance id: a rerun that takes the corpus from the cache's records says it the same way."""
        for u in self.utterances:
            if audio_hashes.get(u.audio) == "missing":
                self.problems.append(CorpusProblem.missing_audio(u.id, u.audio))


@dataclass
class Streaming:
    """Where a reader hands its utterances, a chunk at a time, instead of building a Corpus: a run over
    a corpus of a million never holds it whole (pipeline/run/extraction.py)."""

    take: Callable[[list[Utterance]], None]
    seen: Callable[[list[str]], set[str]]  # adds a chunk's ids; returns those an earlier chunk had
    chunk: int = 10_000
    # the label scale a manifest that declares none is on, inferred by a first pass over its labels
    scales: dict[str, "InferredScale"] | None = None


@dataclass(frozen=True)
class InferredScale:
    """The rating scale a target's labels are on (`low`-`high`), from their 1st to 99th percentile."""

    target: str
    low: float
    high: float
    p1: float
    p99: float

    def refusal(self, value: float) -> str | None:
        if self.low <= value <= self.high:
            return None
        return (f"{self.target} label {value:g} is off the {self.low:g}-{self.high:g} scale the rest of the corpus "
                f"is on ({self.p1:g} to {self.p99:g} for 98 % of its rows): a typo? If the scale is wider, "
                "declare it (label_range=[LO,HI] in msf.toml, or --set 'label_range=[1,9]')")


def infer_scales(values: dict[str, Sequence[float]]) -> dict[str, InferredScale]:
    """Per target, the narrowest rating scale of the field (RATING_SCALES) that holds its 1st to 99th
    percentile (the outermost row on each side left out, so one typo cannot widen it); targets with
    fewer than MIN_ROWS_FOR_SCALE labels, or on no known scale, are left out."""
    import numpy as np

    out: dict[str, InferredScale] = {}
    for name in sorted(values):
        v = np.asarray(values[name], dtype=float)
        if len(v) < MIN_ROWS_FOR_SCALE:
            continue
        lo = float(np.percentile(v, 1, method="higher"))
        hi = float(np.percentile(v, 99, method="lower"))
        scale = next(((a, b) for a, b in RATING_SCALES if a <= lo and hi <= b), None)
        if scale is not None:
            out[name] = InferredScale(name, scale[0], scale[1], lo, hi)
    return out


class CorpusBuilder:
    """Collects rows, refusing duplicates and unparsable labels with a specific message per row. With
    `stream`, hands them on a chunk at a time (duplicates of an earlier chunk are refused then)."""

    def __init__(self, label_range: tuple[float, float] | None = None, check_audio: bool = True,
                 stream: Streaming | None = None):
        self.utterances: list[Utterance] = []
        self.problems: list[CorpusProblem] = []
        self.label_range = label_range
        self.check_audio = check_audio
        self.where: dict[str, str] = {}  # utterance id -> file:row, for problems found later
        self._seen: set[str] = set()
        self.stream = stream
        self.scales = stream.scales if stream and label_range is None else None

    def problem(self, where: str, message: str, dropped: bool = True) -> None:
        self.problems.append(CorpusProblem(where, message, dropped))

    def label(self, where: str, name: str, raw: Any) -> tuple[bool, float | None]:
        """Parse one label; (ok, value). Empty means unlabelled, which is fine for prediction."""
        if raw is None or raw == "" or (isinstance(raw, str) and not raw.strip()):
            return True, None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            self.problem(where, f"{name} label {raw!r} is not a number")
            return False, None
        if not math.isfinite(value):
            self.problem(where, f"{name} label {raw!r} is not finite")
            return False, None
        if self.label_range and not (self.label_range[0] <= value <= self.label_range[1]):
            lo, hi = self.label_range
            self.problem(where, f"{name} label {value:g} is outside the corpus scale [{lo:g}, {hi:g}]")
            return False, None
        return True, value

    def add(self, where: str, utt_id: str, audio: Path | str, labels: dict[str, Any], speaker: str = "",
            split: str = "", transcript: str | None = None, extra: dict[str, str] | None = None) -> None:
        """One row; `labels` are the raw values of named targets ({"valence": "3.2", ...}; empty or None:
        unlabelled). Plain strings and no pathlib: at 100k rows every microsecond per row is a tenth of a
        second of every command."""
        utt_id = (utt_id or "").strip()
        if not utt_id:
            self.problem(where, "empty utterance id")
            return
        if utt_id in self._seen:
            self.problem(where, f"duplicate utterance id {utt_id!r}")
            return
        values = self._labels(where, labels)
        if values is None:
            return
        if self.scales:
            refused = next((r for k, v in values.items() if k in self.scales
                            and (r := self.scales[k].refusal(v)) is not None), None)
            if refused:
                self.problem(where, refused)
                return
        audio = str(audio)
        if not os.path.isabs(audio):
            audio = os.path.abspath(audio)
        if self.check_audio and not os.path.exists(audio):
            self.missing_audio(where, audio)
        self._seen.add(utt_id)
        self.where[utt_id] = where
        self.utterances.append(Utterance(utt_id, audio, speaker, split, transcript, values, extra or {}))
        if self.stream and len(self.utterances) >= self.stream.chunk:
            self._flush()

    def _flush(self) -> None:
        """Hand the chunk on, less the ids an earlier chunk had."""
        assert self.stream is not None
        dups = self.stream.seen([u.id for u in self.utterances])
        for u in self.utterances:
            if u.id in dups:
                self.problem(self.where[u.id], f"duplicate utterance id {u.id!r}")
        if self.utterances:
            self.stream.take([u for u in self.utterances if u.id not in dups] if dups else self.utterances)
        self.utterances, self.where, self._seen = [], {}, set()

    def _labels(self, where: str, labels: dict[str, Any]) -> dict[str, float] | None:
        """The labelled targets by name, or None (with the problem recorded) when one is unusable."""
        try:  # the common case in one pass; anything unusual takes the path that explains itself
            values = {k: float(raw) for k, raw in labels.items() if raw is not None and raw != ""}
            lo, hi = self.label_range or (-math.inf, math.inf)
            if all(lo <= v <= hi and math.isfinite(v) for v in values.values()):
                return values
        except (TypeError, ValueError):
            pass
        values = {}
        for name, raw in labels.items():
            ok, value = self.label(where, name, raw)
            if not ok:
                return None
            if value is not None:
                values[name] = value
        return values

    def missing_audio(self, where: str, audio: str) -> None:
        self.problems.append(CorpusProblem.missing_audio(where, audio))

    def build(self, name: str, spec: str) -> Corpus:
        """The corpus; when streaming, its utterances have gone to the stream and it holds none."""
        if self.stream:
            self._flush()
        elif self.label_range is None:
            self._refuse_off_scale()
        return Corpus(name, spec, self.utterances, self.problems, self.label_range, self.where)

    def _refuse_off_scale(self) -> None:
        """A manifest that declares no scale (`label_range`) is checked against the scale its labels are
        on (`infer_scales`): a label outside it is refused with its line (a 9.5 among ratings of 1 to 7
        skews every CCC it enters); genuine ratings lie on their scale. A corpus on another scale, or
        whose labels crowd one part of a wider one, declares it with `label_range`."""
        scales = infer_scales({name: [u.targets[name] for u in self.utterances if name in u.targets]
                               for name in {k for u in self.utterances for k in u.targets}})
        refused: set[str] = set()
        for name, scale in scales.items():
            for u in self.utterances:
                why = scale.refusal(u.targets[name]) if name in u.targets else None
                if why is not None:
                    refused.add(u.id)
                    self.problem(self.where.get(u.id, u.id), why)
        if refused:
            self.utterances = [u for u in self.utterances if u.id not in refused]


def corpus_digest(spec: str, label_range: tuple[float, float] | None = None) -> str | None:
    """A digest of everything a reader's output depends on but the audio, so an unchanged corpus need
    not be parsed again to know it is unchanged: a manifest's bytes; for the readers of many files
    (MSP-Podcast, IEMOCAP) the name, size and mtime of every file they read (their `inputs`), which
    a directory scan gives without opening one (MSP-Podcast 1.12: 270k transcripts). Also the spec,
    its absolute place and msf's version (a reader's code). None when the spec cannot be read."""
    import hashlib

    from msf import __version__
    from msf.pipeline.corpora import iemocap, msp_podcast

    try:
        kind, path = corpus_source(spec)
    except CorpusError:
        return None
    inputs = {"msp-podcast": msp_podcast.inputs, "iemocap": iemocap.inputs}.get(kind)
    path = path / "manifest.csv" if kind == "demo" else path
    h = hashlib.blake2b(f"{__version__}|{spec}|{os.path.abspath(path.expanduser())}|{label_range}|".encode(),
                        digest_size=16)
    try:
        if inputs:  # 10,000 lines at a time: MSP-Podcast's 270k transcripts are never one list
            lines = (f"{name}\x1f{size}\x1f{mtime_ns}" for name, size, mtime_ns in inputs(path.expanduser()))
            sep = ""
            while block := list(itertools.islice(lines, 10_000)):
                h.update((sep + "\n".join(block)).encode())
                sep = "\n"
        else:
            h.update(path.expanduser().read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def listing(folder: str, suffix: str) -> Iterator[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the files in `folder` whose names end with `suffix`, in directory
    order, as the scan yields them; none when the folder does not exist. One scandir and a stat each:
    no file is opened (300k transcripts: about 1.1 s). Not sorted (0.3 s more there, and a list): an
    unchanged folder lists in the same order, and a folder that lists otherwise only costs one parse."""
    try:
        it = os.scandir(folder)
    except FileNotFoundError:
        return
    with it:
        for e in it:
            if e.name.endswith(suffix):
                st = e.stat()
                yield e.path, st.st_size, st.st_mtime_ns


READERS = ("msp-podcast", "iemocap", "demo")


def corpus_source(spec: str) -> tuple[str, Path]:
    """(reader, path) a spec names: one of READERS and the corpus root, or "manifest" and the manifest
    file. An unknown form or a path that does not exist is refused here, cheaply, before a cache is
    made for it."""
    kind, _, rest = spec.partition(":")
    if rest and kind in READERS:
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise CorpusError(f"no {kind} corpus at {path}: the folder does not exist" + (
                f" (build one with `msf corpus demo --out {path}`)" if kind == "demo" else ""))
        return kind, path
    path = Path(spec).expanduser()
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise CorpusError(
            f"unknown corpus spec {spec!r}: give a manifest (.csv or .jsonl) or one of "
            "msp-podcast:PATH, iemocap:PATH, demo:PATH"
        )
    if not path.is_file():
        raise CorpusError(f"manifest not found: {path}")
    return "manifest", path


def load_corpus(spec: str, label_range: tuple[float, float] | None = None, check_audio: bool = True,
                stream: Streaming | None = None) -> Corpus:
    """Dispatch on the corpus spec: a manifest path, or `msp-podcast:`, `iemocap:`, `demo:` + path.
    `label_range` declares a generic manifest's label scale (the named corpora know theirs);
    `check_audio=False` reads labels and splits only (training elsewhere, where the audio is not).
    `stream`: the utterances go there a chunk at a time, and the corpus returned holds only the
    problems (the caller counts what it took)."""
    from msf.pipeline.corpora import demo, iemocap, manifest, msp_podcast

    kind, path = corpus_source(spec)
    if kind == "manifest":
        corpus = manifest.read(path, spec, label_range=label_range, check_audio=check_audio, stream=stream)
    else:
        readers = {"msp-podcast": msp_podcast.read, "iemocap": iemocap.read, "demo": demo.read}
        corpus = readers[kind](path, spec, check_audio=check_audio, stream=stream)
    if not corpus.utterances and stream is None:
        no_usable_utterances(corpus)
    return corpus


def no_usable_utterances(corpus: Corpus) -> None:
    """Nothing to extract or label: say so rather than run on nothing."""
    refused = [str(p) for p in corpus.problems]
    raise CorpusError(f"{corpus.spec} has no usable utterances" + (
        f": all {len(refused)} rows were refused, e.g. {refused[0]}" if refused else " (no rows)"))
