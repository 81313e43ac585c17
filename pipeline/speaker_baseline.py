"""The speaker-baseline rule: what an utterance's pitch, loudness, rate and frames are relative to.

An utterance is relative to its speaker when its speaker group is worth the name: a known speaker id
with at least MIN_SPEAKER_UTTERANCES utterances in the feature set. Otherwise (an unknown or empty
speaker, as for much of MSP-Podcast; a speaker with fewer utterances; a file given to `msf predict`)
it is relative to the population baseline: the training split's statistics, by gender where the
corpus gives one. The population is fitted once per run from the training split and stored with the
run, so `msf predict` gives a file the same numbers whatever other files share the call.

This module owns the rule; `emphasis` (its speaker-relative fields), the trainer's `prosody` source
and `--speaker-norm`, `describe`'s delivery summary and `msf predict` all call it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from msf.pipeline.errors import UsageError

# With fewer utterances a speaker's "usual" is mostly the utterance itself: with one, its pitch,
# loudness and rate relative to the speaker are 0 by construction; with two, each is half the gap
# between the two. Three is the smallest group whose median is not made of the utterance measured.
MIN_SPEAKER_UTTERANCES = 3
ANY_GENDER = ""


def gender_of(extra: dict[str, str]) -> str:
    """The corpus's gender for an utterance ("female", "male"), or ANY_GENDER when it gives none."""
    g = str(extra.get("gender", "")).strip().lower()
    return {"f": "female", "m": "male"}.get(g, g if g in ("female", "male") else ANY_GENDER)


def has_speaker_baseline(group_key: str, group_size: int) -> bool:
    """Whether a speaker group (`Utterance.group_key("speaker")`) is its members' baseline."""
    return not group_key.startswith("\x00") and group_key != "" and group_size >= MIN_SPEAKER_UTTERANCES


def baseline_groups(group_keys: Iterable[str]) -> dict[str, bool]:
    """Per speaker group key: whether it has a baseline of its own (the rule above, over these keys)."""
    keys = list(group_keys)
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    return {k: has_speaker_baseline(k, n) for k, n in sizes.items()}


@dataclass(frozen=True)
class Reference:
    """A speaker's (or a population's) usual delivery: median F0 (Hz), loudness (dB) and syllable rate."""

    f0_hz: float
    loudness_db: float
    rate_syl_s: float

    def relative(self, f0_hz: float, loudness_db: float, rate_syl_s: float) -> tuple[float, float, float]:
        """(pitch in semitones, loudness in dB, rate as a ratio) of one utterance against this reference;
        an unvoiced utterance's pitch is 0 (no evidence either way)."""
        pitch = 12.0 * float(np.log2(f0_hz / self.f0_hz)) if np.isfinite(f0_hz) and f0_hz > 0 else 0.0
        return pitch, float(loudness_db - self.loudness_db), float(rate_syl_s / max(self.rate_syl_s, 1e-6))


def _median(values: list[float]) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    return float(np.median(v)) if len(v) else float("nan")


@dataclass(frozen=True)
class PopulationBaseline:
    """Medians of the training split's utterances, per gender and over everyone (ANY_GENDER)."""

    by_gender: dict[str, Reference]

    @classmethod
    def fit(cls, rows: Iterable[tuple[str, float, float, float]]) -> "PopulationBaseline":
        """From (gender, median F0 Hz, loudness dB, syllables/s) of each training utterance."""
        rows = list(rows)
        groups: dict[str, list[tuple[str, float, float, float]]] = {ANY_GENDER: rows}
        for r in rows:
            if r[0] != ANY_GENDER:
                groups.setdefault(r[0], []).append(r)
        out = {g: Reference(_median([r[1] for r in rs]), _median([r[2] for r in rs]), _median([r[3] for r in rs]))
               for g, rs in groups.items() if rs}
        return cls(out)

    def reference(self, gender: str) -> Reference:
        ref = self.by_gender.get(gender) or self.by_gender.get(ANY_GENDER)
        if ref is None:
            raise ValueError("the population baseline is empty: it was fitted on no utterance")
        return ref

    def to_dict(self) -> dict[str, Any]:
        return {g: asdict(r) for g, r in sorted(self.by_gender.items())}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PopulationBaseline":
        return cls({g: Reference(**r) for g, r in d.items()})


def prosody_vector(record: dict[str, Any], gender: str, population: PopulationBaseline | None) -> np.ndarray:
    """The `prosody` source of one utterance from its `emphasis` record: median pitch (st), loudness (dB)
    and log speaking rate, relative to its speaker where the record has a speaker baseline, else to the
    population's reference for its gender."""
    if record.get("speaker_baseline", True):
        pitch, loud, rate = float(record["pitch_st"]), float(record["loudness_db"]), float(record["rate_ratio"])
    else:
        if population is None:
            raise ValueError("an utterance without a speaker baseline needs the population baseline")
        pitch, loud, rate = population.reference(gender).relative(*measures(record))
    return np.array([pitch, loud, np.log(max(rate, 1e-3))], np.float32)


def measures(record: dict[str, Any]) -> tuple[float, float, float]:
    """The utterance's own delivery from its `emphasis` record: (median F0 Hz, loudness dB, syllables/s)."""
    return float(record["f0_median_hz"]), float(record["loudness_abs_db"]), float(record["rate_syl_s"])


def mean_sd(n: int, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (float32) from a frame count, sum and sum of squares;
    the sd is floored so a constant dimension stays finite once divided by it."""
    mean = total / max(n, 1)
    sd = np.sqrt(np.maximum(total_sq / max(n, 1) - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(sd, 1e-3).astype(np.float32)


class FrameStats:
    """Per-group mean and sd of acoustic frames for `--speaker-norm`: the groups with a baseline of their
    own, and the population (training split, by gender) for the rest. Only those groups accumulate, in
    float64 sums over the frame's dimensions, so memory grows with the number of known speakers, never
    with the number of unknown-speaker utterances."""

    def __init__(self) -> None:
        self._acc: dict[str, list[Any]] = {}

    def add(self, key: str, frames: np.ndarray) -> None:
        a = self._acc.setdefault(key, [0, 0.0, 0.0])
        f64 = frames.astype(np.float64)
        a[0] += len(f64)
        a[1] = a[1] + f64.sum(0)
        a[2] = a[2] + (f64**2).sum(0)

    def finish(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {k: mean_sd(*a) for k, a in self._acc.items()}


def frame_baselines(groups: Sequence[str], genders: Sequence[str], train: Sequence[bool],
                    read: Callable[[list[int]], Sequence[np.ndarray]], run: "RunBaseline | None" = None,
                    block: int = 64) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The rule for frames (`--speaker-norm`): the statistics each utterance is standardised by, and its
    key into them. A speaker group with a baseline of its own (`baseline_groups` over `groups`): the
    mean and sd of each dimension over all its frames (no labels used, so test speakers are
    standardised by their own audio, the usual practice in SER); every other utterance: its gender's
    population, the training utterances' frames (`train`), or, given a trained `run`, that run's.
    `read(indices)` gives the utterances' frames; only those the rule needs are read, `block` at a time."""
    own = baseline_groups(groups)
    acc = FrameStats()
    needed = [i for i, g in enumerate(groups) if own[g] or (train[i] and run is None)]
    for start in range(0, len(needed), block):
        idx = needed[start : start + block]
        for i, f in zip(idx, read(idx)):
            if own[groups[i]]:
                acc.add(groups[i], f)
            if train[i] and run is None:
                acc.add(population_key(ANY_GENDER), f)
                if genders[i] != ANY_GENDER:
                    acc.add(population_key(genders[i]), f)
    stats = acc.finish()
    if run is not None and not all(own[g] for g in groups):
        if not run.frames:
            raise UsageError("this run was trained before runs kept their population's frame statistics "
                             "(baseline.npz); train it again to predict with --speaker-norm")
        stats.update(run.frames)
    keys = [g if own[g] else population_key(x if population_key(x) in stats else ANY_GENDER)
            for g, x in zip(groups, genders)]
    return stats, keys


def population_key(gender: str) -> str:
    """The key of a population's frame statistics beside the speaker groups' (never a speaker id)."""
    return f"\x01population:{gender}"


@dataclass(frozen=True)
class RunBaseline:
    """What a trained run keeps of its training population, for audio without a speaker baseline:
    the prosody reference (with the `prosody` source) and the frame statistics (with --speaker-norm)."""

    population: PopulationBaseline | None
    frames: dict[str, tuple[np.ndarray, np.ndarray]] | None  # population_key(gender) -> (mean, sd)

    FILE = "baseline.npz"

    def save(self, run: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for key, (mean, sd) in (self.frames or {}).items():
            g = key.removeprefix(population_key(""))
            arrays[f"mean:{g}"], arrays[f"sd:{g}"] = mean, sd
        meta = json.dumps({"population": self.population.to_dict() if self.population else None,
                           "frames": self.frames is not None})
        np.savez(run / self.FILE, meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, run: Path) -> "RunBaseline":
        """The run's baseline; an older run (trained before the rule) has none, and says so."""
        path = run / cls.FILE
        if not path.is_file():
            return cls(None, None)
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            frames = {population_key(k.removeprefix("mean:")): (z[k], z["sd:" + k.removeprefix("mean:")])
                      for k in z.files if k.startswith("mean:")} if meta["frames"] else None
        pop = PopulationBaseline.from_dict(meta["population"]) if meta["population"] else None
        return cls(pop, frames)

    def frame_stats(self, gender: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.frames:
            raise ValueError("this run kept no population frame statistics (train it again with this msf)")
        return self.frames.get(population_key(gender)) or self.frames[population_key(ANY_GENDER)]
