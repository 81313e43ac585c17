"""`extended` (ES): the description embedded by the text encoder. Separate from `describe`, so that
changing the encoder never asks the LLM again."""

from __future__ import annotations

from msf.pipeline.stage import Item, Record, Stage, register
from msf.pipeline.text_encoder import OFFLINE_TEXT, TextEncoder, TextEncoderParams


@register
class ExtendedStage(Stage):
    name = "extended"
    needs = ("audio", "describe")
    version = "1"
    Params = TextEncoderParams
    volatile = frozenset({"device"})
    profiles = {"offline": OFFLINE_TEXT}
    batch_size = 32

    def setup(self) -> None:
        self.encoder = TextEncoder(self.params, "extended.model")  # type: ignore[arg-type]

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        vectors = self.encoder.embed([str(it.inputs["describe"]["text"]) for it in batch])
        return [{"embedding": v} for v in vectors]
