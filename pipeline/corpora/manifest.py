"""Generic CSV/JSONL manifests (`id, audio, transcript, speaker, split, valence, arousal, dominance`, and the
optional `alignment` and `gender`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from operator import itemgetter
from pathlib import Path
from typing import Iterator

from msf.pipeline.corpus import TARGETS, Corpus, CorpusBuilder, CorpusError, Streaming, infer_scales

REQUIRED = ("id", "audio")
DELIMITERS = (",", ";", "\t")  # spreadsheets in many locales save CSV with ";"


COLUMNS = ("id", "audio", "transcript", "speaker", "split", "valence", "arousal", "dominance", "alignment", "gender")


def first_non_utf8_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8 (the decoder's own position is within its chunk)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return raw.count(b"\n", 0, e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)) + 1
    return 0


def _rows(path: Path) -> Iterator[tuple[str, list[str] | None]]:
    """(file:row, values in COLUMNS order) per row; None for a row that is not a JSON object."""
    name = path.name
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if not isinstance(row, dict):
                    yield f"{name}:{n}", None
                    continue
                yield f"{name}:{n}", ["" if row.get(c) is None else str(row[c]) for c in COLUMNS]
        return
    # utf-8-sig: spreadsheets' "CSV UTF-8" starts with a byte-order mark, which would end up in "id"
    with open(path, encoding="utf-8-sig", newline="") as f:
        first = f.readline()
        f.seek(0)
        delimiter = next((d for d in DELIMITERS if set(REQUIRED) <= set(next(csv.reader([first], delimiter=d)))),
                         ",")
        reader = csv.reader(f, delimiter=delimiter)  # plain rows by index: DictReader costs 2x at 100k rows
        header = next(reader, [])
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise CorpusError(f"{path}: manifest lacks required column(s) {', '.join(missing)}")
        width = len(header)
        # absent columns read an empty cell appended past the row's end
        pick = itemgetter(*(header.index(c) if c in header else width for c in COLUMNS))
        for n, values in enumerate(reader, start=2):  # row 1 is the header
            if len(values) != width:
                values = (values + [""] * width)[:width]
            values.append("")
            yield f"{name}:{n}", list(pick(values))


def _label_values(path: Path) -> dict[str, list[float]]:
    """Every row's finite labels per target: a first pass for a manifest that declares no scale and
    is streamed (CorpusBuilder refuses an off-scale label as it reads; built whole, it refuses after)."""
    out: dict[str, list[float]] = {t: [] for t in TARGETS}
    for _, row in _rows(path):
        for name, raw in zip(TARGETS, row[5:8] if row else ()):
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isfinite(value):
                out[name].append(value)
    return out


def read(
    path: Path,
    spec: str | None = None,
    extra: dict[str, str] | None = None,
    label_range: tuple[float, float] | None = None,
    check_audio: bool = True,
    stream: Streaming | None = None,
) -> Corpus:
    if not path.is_file():
        raise CorpusError(f"manifest not found: {path}")
    base = os.path.abspath(path.parent)  # relative paths are relative to the manifest
    try:  # rows are read as they are used: a 100k-row manifest is never held whole
        if stream is not None and label_range is None:  # rows leave a chunk at a time: the scale first
            stream = dataclasses.replace(stream, scales=infer_scales(_label_values(path)))
        b = CorpusBuilder(label_range, check_audio, stream)
        for where, row in _rows(path):
            if row is None:
                b.problem(where, "not a JSON object")
                continue
            utt, audio, transcript, speaker, split, v, a, d, alignment, gender = row
            if not audio:
                b.problem(where, "no audio path")
                continue
            hints = dict(extra) if extra else {}
            if alignment:  # a TextGrid or .wdseg for align.backend=provided
                hints["alignment"] = os.path.join(base, alignment)
            if gender:  # the population baseline's group for speakers without one (pipeline/speaker_baseline.py)
                hints["gender"] = gender
            # os.path.join keeps an absolute audio path as it is
            b.add(where, utt, os.path.join(base, audio), {"valence": v, "arousal": a, "dominance": d}, speaker, split, transcript or None, hints)
    except UnicodeDecodeError:
        raise CorpusError(f"{path}:{first_non_utf8_line(path)}: not UTF-8 text; save the manifest as UTF-8") from None
    return b.build(path.parent.name if path.name.startswith("manifest") else path.stem, spec or str(path))
