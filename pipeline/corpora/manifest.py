"""Generic CSV/JSONL manifests (`id, audio, transcript, speaker, split, valence, arousal, dominance`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from msf.pipeline.corpus import Corpus, CorpusBuilder, CorpusError

REQUIRED = ("id", "audio")


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    yield f"{path.name}:{n}", None
                    continue
                yield f"{path.name}:{n}", row if isinstance(row, dict) else None
    else:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise CorpusError(f"{path}: manifest lacks required column(s) {', '.join(missing)}")
            for n, row in enumerate(reader, start=2):  # row 1 is the header
                yield f"{path.name}:{n}", row


def read(
    path: Path,
    spec: str | None = None,
    extra: dict[str, str] | None = None,
    label_range: tuple[float, float] | None = None,
) -> Corpus:
    if not path.is_file():
        raise CorpusError(f"manifest not found: {path}")
    b = CorpusBuilder(label_range)
    for where, row in _rows(path):
        if row is None:
            b.problem(where, "not a JSON object")
            continue
        if not row.get("audio"):
            b.problem(where, "no audio path")
            continue
        audio = Path(str(row["audio"]))
        transcript = row.get("transcript")
        hints = dict(extra or {})
        if row.get("alignment"):  # a TextGrid or .wdseg for align.backend=provided
            alignment = Path(str(row["alignment"]))
            hints["alignment"] = str(alignment if alignment.is_absolute() else path.parent / alignment)
        b.add(
            where,
            str(row.get("id") or ""),
            audio if audio.is_absolute() else path.parent / audio,
            row,
            speaker=str(row.get("speaker") or ""),
            split=str(row.get("split") or ""),
            transcript=str(transcript) if transcript not in (None, "") else None,
            extra=hints,
        )
    return b.build(path.parent.name if path.name.startswith("manifest") else path.stem, spec or str(path))

