"""MSP-Podcast: `Labels/labels_consensus.csv`, `Audios/`, `Transcripts/` (1-7 scale)."""

from __future__ import annotations

import csv
from pathlib import Path

from msf.pipeline.corpus import Corpus, CorpusBuilder, CorpusError

SPLITS = {"Train": "train", "Development": "dev", "Test1": "test", "Test2": "test2", "Test3": "test3"}
COLUMNS = ("FileName", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set")


def _transcript(root: Path, file_name: str) -> str | None:
    path = root / "Transcripts" / (Path(file_name).stem + ".txt")
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None


def read(root: Path, spec: str) -> Corpus:
    labels = root / "Labels" / "labels_consensus.csv"
    if not labels.is_file():
        raise CorpusError(f"not an MSP-Podcast root (no Labels/labels_consensus.csv): {root}")
    b = CorpusBuilder(label_range=(1.0, 7.0))
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
            b.add(
                where,
                Path(name).stem,
                root / "Audios" / name,
                {"valence": row["EmoVal"], "arousal": row["EmoAct"], "dominance": row["EmoDom"]},
                speaker=(row["SpkrID"] or "").strip(),
                split=split,
                transcript=_transcript(root, name),
            )
    return b.build("msp-podcast", spec)
