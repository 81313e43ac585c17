"""`extended` (ES): the description embedded by the text encoder. Separate from `describe`, so that
changing the encoder never asks the LLM again."""

from __future__ import annotations

from msf.pipeline.stage import Item, Record, register
from msf.pipeline.text_encoder import TextStage


@register
class ExtendedStage(TextStage):
    name = "extended"
    needs = ("audio", "describe")
    version = "1"

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        vectors = self.encoder.embed([str(it.inputs["describe"]["text"]) for it in batch])
        return [{"embedding": v} for v in vectors]
