"""`extended` (ES): the description embedded by the text encoder. Separate from `describe`, so that
changing the encoder never asks the LLM again."""

from __future__ import annotations

from msf.pipeline.stage import Item, OutputField, Record, register
from msf.pipeline.backends.text_encoder import TextStage


@register
class ExtendedStage(TextStage):
    name = "extended"
    needs = ("audio", "describe")
    version = "1"
    fields = {"embedding": OutputField("float32", ("D",), "the ES description's sentence embedding")}

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        vectors = self.encoder.embed([str(it.inputs["describe"]["text"]) for it in batch])
        return [{"embedding": v} for v in vectors]
