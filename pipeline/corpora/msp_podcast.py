"""MSP-Podcast: `Labels/labels_consensus.csv`, `Audios/`, `Transcripts/` (1-7 scale)."""

from __future__ import annotations

import csv
import itertools
import os
from typing import Iterator
from pathlib import Path

from msf.pipeline.corpus import Corpus, CorpusBuilder, CorpusError, Streaming, listing

SPLITS = {"Train": "train", "Development": "dev", "Test1": "test", "Test2": "test2", "Test3": "test3"}
COLUMNS = ("FileName", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set")


def _transcript(transcripts: str, stem: str) -> str | None:
    try:
        with open(os.path.join(transcripts, stem + ".txt"), encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def inputs(root: Path) -> Iterator[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file `read` reads: the labels file and the transcripts."""
    labels = os.path.join(root, "Labels", "labels_consensus.csv")
    st = os.stat(labels)  # no labels file: not a corpus (OSError), as `read` says
    return itertools.chain([(labels, st.st_size, st.st_mtime_ns)], listing(os.path.join(root, "Transcripts"), ".txt"))


def read(root: Path, spec: str, check_audio: bool = True, stream: Streaming | None = None) -> Corpus:
    labels = root / "Labels" / "labels_consensus.csv"
    if not labels.is_file():
        raise CorpusError(f"not an MSP-Podcast root (no Labels/labels_consensus.csv): {root}")
    b = CorpusBuilder(label_range=(1.0, 7.0), check_audio=check_audio, stream=stream)
    audios, transcripts = os.path.join(os.path.abspath(root), "Audios"), os.path.join(os.path.abspath(root), "Transcripts")
    with open(labels, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"{labels}: lacks column(s) {', '.join(missing)}")
        for n, row in enumerate(reader, start=2):
            where = f"labels_consensus.csv:{n}"
            name = (row["FileName"] or "").strip()
            split = SPLITS.get((row["Split_Set"] or "").strip())
            if split is None:
                b.problem(where, f"unknown Split_Set {row['Split_Set']!r} (expected one of {', '.join(SPLITS)})")
                continue
            stem = os.path.splitext(name)[0]
            b.add(
                where,
                stem,
                os.path.join(audios, name),
                {"valence": row["EmoVal"], "arousal": row["EmoAct"], "dominance": row["EmoDom"]},
                speaker=(row["SpkrID"] or "").strip(),
                split=split,
                transcript=_transcript(transcripts, stem),
                # the population baseline's group for `Unknown` speakers (pipeline/speaker_baseline.py)
                extra={"gender": g} if (g := (row.get("Gender") or "").strip()) else None,
            )
    return b.build("msp-podcast", spec)
