"""The stage contract: a name, upstream stages, typed parameters, a version and a pure batch compute.

A stage never sees HDF5, Dask or fingerprints; the runner hands it `Item`s and stores what it returns.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict

from msf.pipeline.audio_io import load_waveform
from msf.pipeline.corpus import Utterance
from msf.pipeline.errors import NotFound, UsageError

# A stored entry: named numpy arrays, numbers and strings (never pickles).
Record = dict[str, Any]


@dataclass(frozen=True)
class Egress:
    """What a stage sends off this process for each utterance it computes: to which endpoint, and how
    much of the audio (None: words only). The dry run reports it; nothing is sent to a host the
    user did not name."""

    url: str
    max_audio_s: float | None = None

    @property
    def host(self) -> str:
        return urlparse(self.url).netloc or self.url

    @property
    def loopback(self) -> bool:
        """Whether the endpoint is on this machine (127.0.0.0/8, ::1, localhost)."""
        name = urlparse(self.url).hostname or ""
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class ModelNeed:
    """A model a stage loads, as its settings name it: what `msf extract --dry-run` lists as present or
    missing, and what a run checks for all at once before any work (nothing is loaded to check)."""

    param: str  # the --set key that names it, e.g. "acoustic.model"
    model: str
    kind: str  # "transformers" or "whisper" (a CTranslate2 Whisper directory or faster-whisper name)
    offline: str  # what `--profile offline` uses instead, said in the remedy
    when: str = ""  # "" = loaded by every run of the stage; else when it is loaded (not a blocker)


# A dimension named by one of these varies per utterance (frames, words, phones): a collate pads it.
VARYING_DIMS = frozenset({"T", "W", "P"})


@dataclass(frozen=True)
class OutputField:
    """One field of a stage's records, as the stage declares it: dtype (a numpy name, or "str", "bool",
    "int", "float" for scalars and strings) and shape, whose named dimensions are T (frames), W (words),
    P (phones), L (hidden-state layers), D (a width the model decides). `optional`: present in some
    settings only (e.g. describe's audio fields)."""

    dtype: str
    shape: tuple[str | int, ...] = ()
    doc: str = ""
    optional: bool = False

    @property
    def varying(self) -> bool:
        return bool(self.shape) and self.shape[0] in VARYING_DIMS


class StageParams(BaseModel):
    """Typed, validated stage parameters; unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class UtteranceError(Exception):
    """One utterance cannot be processed by a stage; the message is recorded and shown to the user,
    with the failure's kind (index.Failure)."""

    kind = "bad input"


class EndpointFailure(UtteranceError):
    """An LLM endpoint gave no usable answer for one utterance (timeouts, errors, unusable text)."""

    kind = "endpoint"


@dataclass
class Item:
    """One utterance as a stage sees it: the manifest row and the records of its upstream stages."""

    utt: Utterance
    inputs: Mapping[str, Record] = field(default_factory=dict)
    audio_hash: str = ""

    @cached_property
    def waveform(self) -> np.ndarray:
        """16 kHz mono float32, decoded on first use."""
        return load_waveform(self.utt.audio)


def needs_for(cls: type["Stage"], utt: Any) -> tuple[str, ...]:
    """The upstream stages this stage reads for one utterance (see `Stage.needed_unless`)."""
    if not cls.needed_unless:
        return cls.needs
    return tuple(up for up in cls.needs
                 if not (up in cls.needed_unless and getattr(utt, cls.needed_unless[up], None)))


class Stage(ABC):
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ("audio",)
    # Upstream stages needed only by utterances that lack a field: {"align": "transcript"} lets
    # `global` embed a manifest transcript whether or not its alignment succeeded, and keeps the
    # aligner's settings out of its fingerprint.
    needed_unless: ClassVar[dict[str, str]] = {}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]] = StageParams
    # Utterance fields whose values enter the fingerprint (e.g. the transcript for `align`).
    reads: ClassVar[tuple[str, ...]] = ()
    # Parameters that cannot change results (device, concurrency) stay out of the fingerprint.
    volatile: ClassVar[frozenset[str]] = frozenset()
    # Per-profile parameter defaults; "default" is the Params defaults themselves.
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    batch_size: ClassVar[int] = 16
    # An utterance field (e.g. "speaker") whose groups a stage needs whole: statistics over a
    # speaker's utterances. Each compute() call then gets one complete group, and every entry's
    # fingerprint covers the group's members, so a change to one member recomputes its group.
    group_by: ClassVar[str | None] = None
    # Whether compute() reads `item.waveform`: the runner then decodes the next batch's audio while
    # this one computes (on a GPU the forward is otherwise left waiting on the decoder).
    reads_waveform: bool = False
    # A stage registered under a name that is already taken is an error, unless it says it replaces
    # the one registered there (a plugin's own `describe`); whichever is imported first.
    replaces: ClassVar[bool] = False
    # The fields of this stage's records (the public read API checks names against them, and the
    # trainer maps its sources to them). Empty: undeclared (a plugin's), then the shards' names serve.
    fields: ClassVar[dict[str, OutputField]] = {}

    def __init__(self, params: StageParams, workdir: Path | None = None):
        self.params = params
        # A directory the stage may keep its own files in (the LLM answer cache), inside the cache.
        self.workdir = workdir

    def setup(self) -> None:
        """Load models; called once per worker process, before the first compute."""

    @abstractmethod
    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        """One record (or the Exception that explains its failure) per item, in order."""

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        return params.model_dump(mode="json", exclude=set(cls.volatile))

    def preflight(self) -> None:
        """Settings this stage cannot run with, raised as one UsageError before any stage of the run
        computes anything (a run that would stop at this stage stops before the first)."""

    def models(self) -> list[ModelNeed]:
        """The models this stage would load with its settings (none by default)."""
        return []

    def egress(self) -> Egress | None:
        """Where this stage sends an utterance's words or audio, or None when nothing leaves."""
        return None

    def declared_bytes(self, seconds: float) -> float | None:
        """The size of one entry for `seconds` of audio, from the output's shape as the stage and its
        model declare it (before compression; no model weights loaded, nothing computed). None when
        only running the stage can tell; `msf extract --dry-run` then relies on its calibration."""
        return None


REGISTRY: dict[str, type[Stage]] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Stage]) -> type[Stage]:
    """Add a stage under its name. A name taken by another class is an error naming both, unless one
    of them declares `replaces = True`: that one is kept, whichever was imported first, so a plugin's
    stage is never silently swapped for the built-in one (or the other way round)."""
    old = REGISTRY.get(cls.name)
    if old is not None and _qualified(old) != _qualified(cls):  # not the same class imported again
        if old.replaces == cls.replaces:
            raise UsageError(f"two stages are registered as {cls.name!r}: {_qualified(old)} and {_qualified(cls)}; "
                             "rename one, or set `replaces = True` on the one that should be used")
        if old.replaces:  # the replacement was imported first: it stays
            return cls
    REGISTRY[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    import msf.pipeline.stages  # noqa: F401  (registers the built-in stages)

    try:
        return REGISTRY[name]
    except KeyError:
        raise NotFound(f"unknown stage {name!r}; known stages: {', '.join(sorted(REGISTRY))}") from None


def load_plugins(modules: list[str]) -> None:
    """Import modules that register extra stages with @register."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise UsageError(f"cannot import stage plugin {m!r}: {e}") from None


def stage_order(requested: list[str]) -> list[str]:
    """The requested stages and everything upstream of them, upstream first (like make)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise UsageError(f"stage cycle: {' -> '.join(path + (name,))}")
        for up in stage_class(name).needs:
            visit(up, path + (name,))
        order.append(name)

    for name in requested:
        visit(name, ())
    return order
