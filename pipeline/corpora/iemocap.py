"""IEMOCAP: EmoEvaluation V/A/D (1-5 scale), transcriptions, ForcedAlignment `.wdseg`, five sessions.

Transcripts lose their non-speech markers (`[LAUGHTER]`, `[BREATHING]`, ...; alignment_files.MARKER)
before any stage sees them; a turn that is markers only keeps them in `extra["nonverbal"]`, has no
transcript, and is not sent to ASR (align fails it, the text sources are masked, its audio is scored).

Folds are leave-one-session-out: for fold K, session K is test and the other four train, but for one
speaker of session K+1 held out as dev (`split_for_fold`). The cache never depends on the fold;
`refold` re-splits at train time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from msf.pipeline.corpora.alignment_files import strip_markers
from msf.pipeline.corpus import Corpus, CorpusBuilder, CorpusError, Streaming, Utterance, listing
from msf.pipeline.errors import UsageError

EVAL_LINE = re.compile(
    r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>\S+)\s+(?P<cat>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
TRANSCRIPT_LINE = re.compile(r"^(?P<utt>Ses\S+)\s+\[[^\]]*\]:\s*(?P<text>.*)$")
SESSIONS = 5


FOLD_DEV_RULES = ("speaker", "session")


def split_for_fold(session: int, fold: int, speaker: str = "", dev: str = "speaker") -> str:
    """The split of an utterance of `session` (spoken by `speaker`, e.g. "Ses02F") in fold `fold`.

    dev="speaker" (the default, as the literature trains): session `fold` is test, the other four
    sessions train, except one speaker of the next session (cyclic) held out as dev: its female speaker
    in odd folds, its male speaker in even ones, so dev is speaker-disjoint from train and test and
    both genders serve as dev across the five folds. dev="session": session fold+1 (cyclic) is dev and
    the other three train (msf's rule before, kept for comparison)."""
    if not 1 <= fold <= SESSIONS:
        raise UsageError(f"IEMOCAP fold must be 1..{SESSIONS}, got {fold}")
    if dev not in FOLD_DEV_RULES:
        raise UsageError(f"fold_dev must be one of {', '.join(FOLD_DEV_RULES)}, not {dev!r}")
    if session == fold:
        return "test"
    if session != fold % SESSIONS + 1:
        return "train"
    if dev == "session":
        return "dev"
    return "dev" if speaker.endswith("F" if fold % 2 else "M") else "train"


def refold(utterances: list[Utterance], fold: int, dev: str = "speaker") -> list[Utterance]:
    return [replace(u, split=split_for_fold(int(u.extra["session"]), fold, u.speaker, dev)) for u in utterances]


def _transcripts(session_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            m = TRANSCRIPT_LINE.match(line.strip())
            if m:
                out[m["utt"]] = m["text"].strip()
    return out


def inputs(root: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file `read` reads or looks for: the EmoEvaluation files, the
    transcriptions and the ForcedAlignment `.wdseg` files, per session."""
    out: list[tuple[str, int, int]] = []
    for session in sorted(p for p in root.glob("Session[1-5]") if p.is_dir()):
        dialog = session / "dialog"
        out += [*listing(str(dialog / "EmoEvaluation"), ".txt"), *listing(str(dialog / "transcriptions"), ".txt")]
        aligned = session / "sentences" / "ForcedAlignment"
        for d in sorted(p for p in aligned.glob("*") if p.is_dir()):
            out += listing(str(d), ".wdseg")
    return out


def read(root: Path, spec: str, fold: int = 1, check_audio: bool = True, stream: Streaming | None = None) -> Corpus:
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise CorpusError(f"not an IEMOCAP root (no Session1..Session5 folders): {root}")
    b = CorpusBuilder(label_range=(1.0, 5.0), check_audio=check_audio, stream=stream)
    for session_dir in sessions:
        session = int(session_dir.name[-1])
        transcripts = _transcripts(session_dir)
        for eval_file in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialog = eval_file.stem
            for n, line in enumerate(eval_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                m = EVAL_LINE.match(line.strip())
                if not m:
                    continue
                where = f"{session_dir.name}/{eval_file.name}:{n}"
                utt = m["utt"]
                vad = [v.strip() for v in m["vad"].split(",")]
                if len(vad) != 3:
                    b.problem(where, f"expected [V, A, D], got [{m['vad']}]")
                    continue
                wdseg = session_dir / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg"
                sex = utt.rsplit("_", 1)[-1][0]  # Ses01F_impro01_M012: the male speaker of a dialog
                extra = {"session": str(session), "category": m["cat"],
                         "gender": {"F": "female", "M": "male"}.get(sex, "")}
                if wdseg.is_file():
                    extra["wdseg"] = str(wdseg.resolve())
                said = transcripts.get(utt)
                words = strip_markers(said) if said else None  # [LAUGHTER] etc. are not words (MARKER)
                if said and not words:  # a turn of laughter or breathing only: scored on its audio
                    extra["nonverbal"] = said
                b.add(
                    where,
                    utt,
                    session_dir / "sentences" / "wav" / dialog / f"{utt}.wav",
                    {"valence": vad[0], "arousal": vad[1], "dominance": vad[2]},
                    speaker=f"Ses{session:02d}{sex}",
                    split=split_for_fold(session, fold, f"Ses{session:02d}{sex}"),
                    transcript=words or None,
                    extra=extra,
                )
    return b.build("iemocap", spec)
