"""The corpus model shared by every reader: one Utterance per manifest row, plus the rows that were refused."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msf.pipeline.errors import MsfError


class CorpusError(MsfError, ValueError):
    """The corpus as a whole cannot be read (wrong path, missing required columns, unknown spec)."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path
    speaker: str = ""
    split: str = ""
    transcript: str | None = None
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None
    # Reader-specific hints a stage may read, e.g. {"wdseg": path} or {"session": "3"}.
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Utterance":
        return cls(**d)

    @property
    def labels(self) -> tuple[float, float, float] | None:
        if None in (self.valence, self.arousal, self.dominance):
            return None
        return (self.valence, self.arousal, self.dominance)  # type: ignore[return-value]


@dataclass(frozen=True)
class CorpusProblem:
    """A row that was refused or needs attention; `where` names the file and row or utterance."""

    where: str
    message: str
    dropped: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + ("" if self.dropped else " (kept)")


@dataclass
class Corpus:
    name: str
    spec: str
    utterances: list[Utterance]
    problems: list[CorpusProblem] = field(default_factory=list)
    label_range: tuple[float, float] | None = None

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}


class CorpusBuilder:
    """Collects rows, refusing duplicates and unparsable labels with a specific message per row."""

    def __init__(self, label_range: tuple[float, float] | None = None):
        self.utterances: list[Utterance] = []
        self.problems: list[CorpusProblem] = []
        self.label_range = label_range
        self._seen: set[str] = set()

    def problem(self, where: str, message: str, dropped: bool = True) -> None:
        self.problems.append(CorpusProblem(where, message, dropped))

    def label(self, where: str, name: str, raw: Any) -> tuple[bool, float | None]:
        """Parse one label; (ok, value). Empty means unlabelled, which is fine for prediction."""
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
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

    def add(self, where: str, utt_id: str, audio: Path, labels: dict[str, Any], **fields: Any) -> None:
        utt_id = (utt_id or "").strip()
        if not utt_id:
            self.problem(where, "empty utterance id")
            return
        if utt_id in self._seen:
            self.problem(where, f"duplicate utterance id {utt_id!r}")
            return
        parsed: dict[str, float | None] = {}
        for name in ("valence", "arousal", "dominance"):
            ok, value = self.label(where, name, labels.get(name))
            if not ok:
                return
            parsed[name] = value
        if not audio.exists():
            # Kept on purpose: the `audio` stage records the failure, so it shows in `msf status --failed`.
            self.problem(where, f"audio file not found: {audio}", dropped=False)
        self._seen.add(utt_id)
        self.utterances.append(Utterance(id=utt_id, audio=str(audio.resolve()), **parsed, **fields))

    def build(self, name: str, spec: str) -> Corpus:
        return Corpus(name, spec, self.utterances, self.problems, self.label_range)


def load_corpus(spec: str, label_range: tuple[float, float] | None = None) -> Corpus:
    """Dispatch on the corpus spec: a manifest path, or `msp-podcast:`, `iemocap:`, `demo:` + path.
    `label_range` declares a generic manifest's label scale (the named corpora know theirs)."""
    from msf.pipeline.corpora import demo, iemocap, manifest, msp_podcast

    kind, _, rest = spec.partition(":")
    readers = {"msp-podcast": msp_podcast.read, "iemocap": iemocap.read, "demo": demo.read}
    if rest and kind in readers:
        return readers[kind](Path(rest).expanduser(), spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".csv", ".jsonl"):
        return manifest.read(path, spec, label_range=label_range)
    raise CorpusError(
        f"unknown corpus spec {spec!r}: give a manifest (.csv or .jsonl) or one of "
        "msp-podcast:PATH, iemocap:PATH, demo:PATH"
    )
