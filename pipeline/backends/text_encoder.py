"""A transformers text encoder shared by the text stages (GS, LES, ES): token embeddings with the word
each token belongs to, and mean or CLS pooling."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from msf.pipeline.backends.device import Device, Precision, place, precision_fingerprint, torch_dtype
from msf.pipeline.backends.model_loading import BUNDLED_MINILM, OFFLINE_TEXT_MODEL, load_transformers
from msf.pipeline.stage import ModelNeed, Stage, StageParams

OFFLINE_TEXT = {"model": BUNDLED_MINILM}


class TextEncoderParams(StageParams):
    model: str = "roberta-large"
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 256  # tokens; longer texts are truncated
    device: Device = "cpu"
    precision: Precision = "auto"  # the dtype the encoder runs in; auto: bfloat16 on CUDA, float32 on CPU


class TextEncoder:
    def __init__(self, p: TextEncoderParams, param: str):
        import transformers

        self.model, source = load_transformers(p.model, "AutoModel", param,
                                               offline=OFFLINE_TEXT_MODEL)
        place(self.model, p.device, f"{param.split('.')[0]}.device")
        self.model.to(torch_dtype(p.precision, p.device))  # type: ignore[attr-defined]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True,
                                                                    add_prefix_space=True)
        self.p = p

    def tokens(self, texts: list[str] | list[list[str]]) -> tuple[list[np.ndarray], list[list[int | None]]]:
        """Per text: token embeddings (n_tokens x D, special tokens included) and, for word lists,
        the word index of each token (None for special tokens)."""
        import torch

        words = bool(texts) and isinstance(texts[0], list)
        enc = self.tokenizer(texts, is_split_into_words=words, padding=True, truncation=True,
                             max_length=self.p.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**{k: v.to(self.p.device) for k, v in enc.items()}).last_hidden_state  # type: ignore[operator]
        hidden = hidden.float().cpu().numpy()
        mask = enc["attention_mask"].numpy().astype(bool)
        word_ids = [enc.word_ids(b) if words else [] for b in range(len(texts))]
        return [hidden[b][mask[b]] for b in range(len(texts))], [w[: mask[b].sum()] for b, w in enumerate(word_ids)]

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        """One pooled vector per text: the mean over its tokens (sentence-transformers' pooling) or CLS."""
        out = []
        for t in self.tokens(texts)[0]:
            out.append((t.mean(axis=0) if self.p.pooling == "mean" else t[0]).astype(np.float32))
        return out


class TextStage(Stage):
    """What GS, LES and ES share: the encoder (loaded once per worker), its profile and volatiles."""

    Params = TextEncoderParams
    volatile = frozenset({"device"})
    profiles = {"offline": OFFLINE_TEXT}
    batch_size = 32

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        p: TextEncoderParams = params  # type: ignore[assignment]
        return precision_fingerprint(super().fingerprint_params(params), p.precision, p.device)

    def models(self) -> list[ModelNeed]:
        return [ModelNeed(f"{self.name}.model", self.params.model, "transformers", OFFLINE_TEXT_MODEL)]  # type: ignore[attr-defined]

    def declared_bytes(self, seconds: float) -> float | None:
        """One float32 vector of the encoder's width (plus LES's mask and count): any length of audio."""
        from msf.pipeline.backends.model_loading import transformers_config

        return 4.0 * transformers_config(self.params.model, f"{self.name}.model", OFFLINE_TEXT_MODEL).hidden_size + 16  # type: ignore[attr-defined]

    def setup(self) -> None:
        self.encoder = TextEncoder(self.params, f"{self.name}.model")  # type: ignore[arg-type]
