"""`global` (GS): the whole transcript embedded by a text encoder, pooled."""

from __future__ import annotations

from msf.pipeline.stage import Item, OutputField, Record, UtteranceError, register
from msf.pipeline.backends.text_encoder import TextStage


def transcript_of(item: Item) -> str:
    """The manifest transcript (with its punctuation) when there is one, else the aligner's (ASR) words."""
    text = (item.utt.transcript or "").strip() or str(item.inputs["align"]["transcript"]).strip()
    if not text:
        raise UtteranceError("empty transcript")
    return text


@register
class GlobalStage(TextStage):
    name = "global"
    needs = ("audio", "align")
    needed_unless = {"align": "transcript"}  # the manifest's transcript needs no alignment
    version = "1"
    fields = {"embedding": OutputField("float32", ("D",), "the transcript's sentence embedding")}
    reads = ("transcript",)

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        texts: list[str | Exception] = []
        for item in batch:
            try:
                texts.append(transcript_of(item))
            except UtteranceError as e:
                texts.append(e)
        good = [t for t in texts if isinstance(t, str)]
        vectors = iter(self.encoder.embed(good) if good else [])
        return [t if isinstance(t, Exception) else {"embedding": next(vectors)} for t in texts]
