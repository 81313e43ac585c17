"""The MSF-SER model: acoustic branch, gated intra-modal text fusion, and FM-MoE (or concatenation).

acoustic frames -> [learned layer weights] -> projection -> temporal encoder -> attentive pooling -> a
GS, LES, ES  -> projections -> gates (softmax over the present sources) -> t
FM-MoE: a' = (1 + gamma(t)) * a + beta(t); K expert MLPs over a'; per target (V, A, D) a router
        softmax(W_d [a', t]) mixes the experts, added to the unmodulated a (a residual MoE branch, so text
        can steer the experts without scrambling the acoustic evidence); a linear head per target, plus a
        linear read of the text projections (what the words say needs no detour through the audio).
        Targets outside `text_targets` (arousal by default) route and read the unmodulated a alone.
concat: [a, projections...] -> MLP -> V, A, D.
prosody (optional): the utterance's pitch, loudness and rate relative to its speaker, a small vector
        added to a by a two-layer projection (acoustic evidence, so it joins a, not the text gates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from msf.pipeline.corpus import TARGETS

TEXT = ("gs", "les", "es")


@dataclass(frozen=True)
class ModelConfig:
    frame_shape: tuple[int, ...]  # (D,) or (L, D)
    vector_dims: dict[str, int]  # text source -> input dim
    sources: tuple[str, ...]
    fusion: str = "fm-moe"
    hidden: int = 128
    experts: int = 4
    dropout: float = 0.2
    frame_pool: int = 4  # average frames in groups of this many before the temporal encoder (50 -> 12.5/s)
    modality_dropout: float = 0.0  # in training, the share of utterances that see no text at all
    text_targets: tuple[str, ...] = ("valence", "dominance")  # FM-MoE: the targets the text may inform
    text_head: bool = True  # FM-MoE: a linear read of the text projections added to the predictions

    def to_json(self) -> dict:
        return asdict(self)


class AttentivePooling(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        w = self.score(x).squeeze(-1).masked_fill(pad, float("-inf")).softmax(-1)
        return (w.unsqueeze(-1) * x).sum(1)


class AcousticBranch(nn.Module):
    """Frames (B x T x D, or B x T x L x D with a learned softmax weighting of the layers) -> a (B x h):
    projection, one transformer layer over a grid of `frame_pool` frames, attentive pooling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden
        layers = cfg.frame_shape[0] if len(cfg.frame_shape) == 2 else 1
        self.frame_pool = cfg.frame_pool
        self.layer_logits = nn.Parameter(torch.zeros(layers))  # the learned weighted sum of layers
        self.acoustic_in = nn.Sequential(nn.LayerNorm(cfg.frame_shape[-1]), nn.Linear(cfg.frame_shape[-1], h),
                                         nn.Dropout(cfg.dropout))
        self.temporal = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(h, nhead=4, dim_feedforward=2 * h, dropout=cfg.dropout, batch_first=True),
            num_layers=1, enable_nested_tensor=False)
        self.pool = AttentivePooling(h)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if frames.dim() == 4:  # B x T x L x D: softmax-weighted sum of layers
            frames = (frames * self.layer_logits.softmax(0)[None, None, :, None]).sum(2)
        k = self.frame_pool
        if k > 1:  # emotion lives in syllable-scale prosody: a coarser grid loses little and is k x cheaper
            frames = nn.functional.avg_pool1d(frames.transpose(1, 2), k, k, ceil_mode=True).transpose(1, 2)
            lengths = (lengths + k - 1) // k
        pad = torch.arange(frames.shape[1], device=frames.device)[None] >= lengths[:, None]
        x = self.temporal(self.acoustic_in(frames), src_key_padding_mask=pad)
        return self.pool(x, pad)


class GatedFiLM(nn.Module):
    """Intra-modal fusion and FiLM: gates (a softmax over the text sources present for each utterance)
    mix the projections into t; a' = (1 + gamma(t)) * a + beta(t), starting as the identity."""

    def __init__(self, h: int, sources: int):
        super().__init__()
        self.gate = nn.Linear(h * sources, sources)
        self.film = nn.Linear(h, 2 * h)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)

    def forward(self, a: torch.Tensor, parts: list[torch.Tensor], present: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a', t, gates) from the unmodulated a and the text projections with their presence masks."""
        logits = self.gate(torch.cat(parts, -1))
        absent = torch.stack([m == 0 for m in present], 1)  # B x sources
        none = absent.all(1, keepdim=True)  # no text source at all: t = 0, the identity modulation
        gates = logits.masked_fill(absent & ~none, float("-inf")).softmax(-1) * (~none)
        t = (gates.unsqueeze(-1) * torch.stack(parts, 1)).sum(1)
        gamma, beta = self.film(t).chunk(2, -1)
        return (1 + gamma) * a + beta, t, gates


class MoEHead(nn.Module):
    """K expert MLPs; per target a router mixes them, added to the unmodulated a (a residual branch) and
    read by that target's linear head. A target the text informs routes on [a', t] and its experts run
    on a'; the others route on, and run on, the unmodulated a. With `text_head`, the text projections
    are also read linearly into the targets the text informs."""

    def __init__(self, cfg: ModelConfig, text: list[str]):
        super().__init__()
        h = cfg.hidden
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(cfg.dropout),
                                                   nn.Linear(h, h)) for _ in range(cfg.experts))
        # Per target: does the text inform it? Where it does not, the router reads the unmodulated a
        # and the experts run on it too: text that carries no evidence for a target (arousal on the
        # demo) otherwise moved it by noise alone, and FM-MoE trailed concat on arousal (docs/trainer.md).
        self.reads_text = [bool(text) and d in cfg.text_targets for d in TARGETS]
        self.routers = nn.ModuleList(nn.Linear(h * (2 if r else 1), cfg.experts) for r in self.reads_text)
        self.heads = nn.ModuleList(nn.Linear(h, 1) for _ in range(3))
        self.text_head: nn.Linear | None = None
        if any(self.reads_text) and cfg.text_head:
            # Evidence that is the text's alone (lexical sentiment, the emphasised word, the phrasing's
            # mood) reaches the predictions directly, read from each source's projection: through FiLM
            # alone it had to be re-encoded into the acoustic vector, and the gated mix scales each
            # source by its gate (docs/trainer.md).
            self.text_head = nn.Linear(h * len(text), len(TARGETS))
            self.register_buffer("text_mask", torch.tensor(self.reads_text, dtype=torch.float32), persistent=False)

    def forward(self, a_raw: torch.Tensor, a_mod: torch.Tensor, t: torch.Tensor | None,
                parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions B x 3 (before the label mean) and router probabilities B x 3 x K."""
        route_in = torch.cat([a_mod, t], -1) if t is not None else a_raw
        expert_out = torch.stack([e(a_mod) for e in self.experts], 1)  # B x K x H
        # without text a' is a, and one pass of the experts serves every target
        expert_raw = (torch.stack([e(a_raw) for e in self.experts], 1) if t is not None and not all(self.reads_text)
                      else expert_out)
        preds, probs = [], []
        for router, head, reads in zip(self.routers, self.heads, self.reads_text):
            r = router(route_in if reads else a_raw).softmax(-1)
            probs.append(r)
            mixed = (r.unsqueeze(-1) * (expert_out if reads else expert_raw)).sum(1)
            preds.append(head(a_raw + mixed))  # residual over the unmodulated a
        y = torch.cat(preds, -1)
        if self.text_head is not None:
            y = y + self.text_head(torch.cat(parts, -1)) * self.text_mask
        return y, torch.stack(probs, 1)


class MsfSer(nn.Module):
    """The model, top-down: the acoustic branch (plus the prosody vector), the text projections, then
    gated FiLM fusion and the MoE head (FM-MoE), or the concatenation head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.register_buffer("label_mean", torch.zeros(3))  # predictions are offsets from the training mean
        self.acoustic = AcousticBranch(cfg)
        if "prosody" in cfg.sources:
            # BatchNorm without affine: semitones, dB and log-ratios on one scale, from the training data
            self.prosody = nn.Sequential(nn.BatchNorm1d(cfg.vector_dims["prosody"], affine=False),
                                         nn.Linear(cfg.vector_dims["prosody"], h), nn.GELU(), nn.Linear(h, h))
        self.text = [s for s in TEXT if s in cfg.sources]
        self.proj = nn.ModuleDict({s: nn.Sequential(nn.LayerNorm(cfg.vector_dims[s]), nn.Dropout(cfg.dropout),
                                                    nn.Linear(cfg.vector_dims[s], h), nn.GELU())
                                   for s in self.text})
        if cfg.fusion == "concat":
            self.concat = nn.Sequential(nn.Linear(h * (1 + len(self.text)), h), nn.GELU(), nn.Dropout(cfg.dropout),
                                        nn.Linear(h, len(TARGETS)))
            return
        self.fusion = GatedFiLM(h, len(self.text)) if self.text else None
        self.moe = MoEHead(cfg, self.text)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor, vectors: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Predictions B x 3 (V, A, D) and auxiliaries: gate weights, router probabilities. `masks`:
        per source, B bools (or 0/1 floats) saying whether it takes part for each utterance (no
        stressed word for LES; a text stage that failed for the utterance)."""
        masks = {s: m.to(frames.dtype) for s, m in masks.items()}
        a = self.acoustic(frames, lengths)
        if "prosody" in vectors and hasattr(self, "prosody"):
            a = a + self.prosody(vectors["prosody"]) * masks["prosody"][:, None]
        p = {s: self.proj[s](vectors[s]) for s in self.text}
        if self.training and self.cfg.modality_dropout > 0 and p:
            # some utterances train with the text hidden, so the audio path must stand on its own
            keep = (torch.rand(a.shape[0], 1, device=a.device) >= self.cfg.modality_dropout).to(a.dtype)
            p = {s: v * keep for s, v in p.items()}
        parts = [p[s] * masks[s][:, None] for s in self.text]  # a source that takes no part: zeros
        aux: dict[str, torch.Tensor] = {}
        if self.cfg.fusion == "concat":
            return self.concat(torch.cat([a, *parts], -1)) + self.label_mean, aux
        a_mod, t = a, None
        if self.fusion is not None:
            a_mod, t, aux["gates"] = self.fusion(a, [p[s] for s in self.text], [masks[s] for s in self.text])
        y, aux["router"] = self.moe(a, a_mod, t, parts)
        return y + self.label_mean, aux

    def loss(self, pred: torch.Tensor, gold: torch.Tensor, aux: dict[str, torch.Tensor],
             balance_weight: float) -> torch.Tensor:
        """The training objective: 1 - mean CCC over V, A, D, plus the routers' load balance (FM-MoE)."""
        out = 1 - ccc(pred.float(), gold).mean()
        if "router" in aux:
            out = out + balance_weight * load_balance(aux["router"].float())
        return out


# The CCC figures every table and JSON of msf gives, in this order.
CCC_COLUMNS = (*(f"ccc_{t}" for t in TARGETS), "ccc_mean")
# Fewer utterances give no CCC: with one the variances are 0, with two any two distinct predictions score +-1.
MIN_CCC_UTTERANCES = 3


def ccc_scores(pred: "np.ndarray | list", gold: "np.ndarray | list") -> dict[str, float | None]:
    """CCC per target and their mean, rounded as every report shows them; None (not defined) when
    there are fewer than MIN_CCC_UTTERANCES utterances."""
    if len(pred) < MIN_CCC_UTTERANCES:
        return dict.fromkeys(CCC_COLUMNS)
    c = ccc(torch.as_tensor(pred), torch.as_tensor(gold)).numpy()
    return {**{f"ccc_{t}": round(float(v), 4) for t, v in zip(TARGETS, c)}, "ccc_mean": round(float(c.mean()), 4)}


def ccc(pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient per column."""
    pm, gm = pred.mean(0), gold.mean(0)
    pv, gv = pred.var(0, unbiased=False), gold.var(0, unbiased=False)
    cov = ((pred - pm) * (gold - gm)).mean(0)
    return 2 * cov / (pv + gv + (pm - gm) ** 2 + 1e-8)


def load_balance(router: torch.Tensor) -> torch.Tensor:
    """K * sum_k mean_prob_k^2 per router, averaged: 1 when the experts are used evenly."""
    usage = router.mean(0)  # 3 x K
    return (usage.shape[-1] * (usage**2).sum(-1)).mean()
