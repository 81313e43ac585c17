"""`local` (LES): the emphasised words in context. The encoder reads the whole transcript; the token
embeddings of the emphasised words are pooled (or all words, weighted by their emphasis score)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from msf.pipeline.stage import Item, OutputField, Record, register
from msf.pipeline.backends.text_encoder import TextEncoderParams, TextStage


class LocalParams(TextEncoderParams):
    # flagged: mean over the tokens of the flagged words; weighted: every word's tokens, weighted by
    # its emphasis score (soft; still masked when no word is flagged).
    pooling_words: Literal["flagged", "weighted"] = "flagged"


@register
class LocalStage(TextStage):
    name = "local"
    needs = ("audio", "align", "emphasis")
    version = "1"
    fields = {"embedding": OutputField("float32", ("D",), "pooled embedding of the stressed words"),
              "mask": OutputField("bool", doc="False when no word is stressed (the model masks LES)"),
              "n_emphasized": OutputField("int")}
    Params = LocalParams

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        p: LocalParams = self.params  # type: ignore[assignment]
        words = [[str(w) for w in it.inputs["align"]["words"]] for it in batch]
        tokens, word_ids = self.encoder.tokens(words)
        out: list[Record | Exception] = []
        for item, tok, wid in zip(batch, tokens, word_ids):
            e = item.inputs["emphasis"]
            flags, scores = np.asarray(e["emphasized"], bool), np.asarray(e["score"], np.float32)
            # per-token weight from its word; special tokens and truncated words weigh nothing
            if p.pooling_words == "flagged":
                w = np.array([float(flags[i]) if i is not None else 0.0 for i in wid], np.float32)
            else:
                w = np.array([scores[i] if i is not None else 0.0 for i in wid], np.float32)
            present = bool(flags.any()) and w.sum() > 0
            vec = (w[:, None] * tok).sum(0) / w.sum() if present else np.zeros(tok.shape[1], np.float32)
            out.append({"embedding": vec.astype(np.float32), "mask": present, "n_emphasized": int(flags.sum())})
        return out
