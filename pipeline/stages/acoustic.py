"""`acoustic`: frame features from a self-supervised speech encoder (transformers) or a Whisper encoder
(CTranslate2), batched by length, long audio in overlapping chunks, stored as float16 T x D (one
layer) or T x L x D (several, for a learned weighted sum)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from msf.pipeline.audio_io import TARGET_SR as SR, chunk_bounds
from msf.pipeline.backends.device import (ComputeType, Device, Precision, place, precision_fingerprint,
                                  resolve_compute_type, torch_dtype)
from msf.pipeline.backends.model_loading import (BUNDLED_TINY_EN, OFFLINE_ACOUSTIC, load_transformers, load_whisper,
                                                 transformers_config, whisper_dims)
from msf.pipeline.backends.whisper_windows import WhisperWindow, group_by_window, padded_features, window_fingerprint
from msf.pipeline.errors import UsageError
from msf.pipeline.quantized import quantize
from msf.pipeline.stage import Item, ModelNeed, OutputField, Record, Stage, StageParams, UtteranceError, register



class AcousticParams(StageParams):
    backend: Literal["transformers", "whisper"] = "transformers"
    model: str = "microsoft/wavlm-large"
    # Hidden-state indices to keep (0 = the CNN/embedding output, -1 = the last layer), or "all".
    layers: list[int] | Literal["all"] = [-1]
    chunk_s: float = 30.0  # longer audio is encoded in chunks of this length ...
    overlap_s: float = 2.0  # ... overlapping by this much; each frame comes from the chunk it is central in
    # As stored. int8: one byte a value with a float32 scale per frame and layer (msf.pipeline.quantized),
    # read back as float32 by every reader; half float16's bytes (bench/frames_storage.py).
    dtype: Literal["float16", "float32", "int8"] = "float16"
    # The dtype the encoder runs in (transformers backend); auto: bfloat16 on CUDA, float32 on CPU.
    precision: Precision = "auto"
    compute_type: ComputeType = "auto"  # CTranslate2 (whisper backend); auto: int8 on CPU, float16 on CUDA
    device: Device = "cpu"
    # The whisper backend's window: "fitted" (each utterance, or each chunk of a long one, in a window
    # fitted to its length: msf.pipeline.backends.whisper_windows, measured in docs/scaling.md) or
    # seconds; 30 is Whisper's own and the fingerprint of before. The transformers backend has none.
    whisper_window: WhisperWindow = "fitted"
    # 0 = automatic: 1 on CPU, where padding only costs time and memory (bench/acoustic.py: batches
    # of 8 run at about 0.7x the speed of single files), 16 on a GPU, which batching keeps busy.
    batch_size: int = 0


class _Encoder:
    frame_rate: float  # frames per second

    def forward(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Frames (T x L x D float32) for each chunk of 16 kHz audio."""
        raise NotImplementedError


class TransformersEncoder(_Encoder):
    def __init__(self, p: AcousticParams):
        import transformers

        self.model, source = load_transformers(p.model, "AutoModel", "acoustic.model",
                                               offline=OFFLINE_ACOUSTIC)
        place(self.model, p.device, "acoustic.device")
        self.dtype = torch_dtype(p.precision, p.device)
        self.model.to(self.dtype)  # type: ignore[attr-defined]
        self.device = p.device
        try:
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(str(source), local_files_only=True)
        except Exception:  # noqa: BLE001 - some checkpoints ship no preprocessor: wav2vec2's standard one
            self.extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        cfg = self.model.config  # type: ignore[attr-defined]
        self.frame_rate = SR / float(np.prod(cfg.conv_stride))
        # Group-norm feature encoders (wav2vec2-base, HuBERT-base) normalise over time, padding
        # included, so a padded batch changes their output: they run one utterance at a time.
        self.pad_ok = getattr(cfg, "feat_extract_norm", "layer") == "layer"
        self.index = hidden_state_indices(p.layers, cfg.num_hidden_layers)
        self._stop_at(max(self.index), cfg)

    def _stop_at(self, deepest: int, cfg: object) -> None:
        """Drop the transformer layers above the deepest hidden state kept: hidden state 6 of a 24-layer
        WavLM-Large then costs 1/2.6 of the whole forward on CPU (bench/acoustic.py --only truncation). Hidden state k is the output of layer k, as in
        the full forward, bit for bit; only a pre-LN ("stable layer norm") encoder's final LayerNorm,
        which the full model applies to its last hidden state alone, must not touch a truncated one."""
        encoder = self.model.encoder  # type: ignore[attr-defined]
        pre_ln = bool(getattr(cfg, "do_stable_layer_norm", False))
        # The only hidden state kept is the last one computed: take the model's last output instead of
        # asking for all of them, unless a final LayerNorm sits between the two.
        self.last_only = self.index == [deepest] and not (pre_ln and deepest >= len(encoder.layers))
        if deepest >= len(encoder.layers):
            return
        import torch

        encoder.layers = encoder.layers[:deepest]
        if pre_ln:
            encoder.layer_norm = torch.nn.Identity()

    def forward(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        if not self.pad_ok and len(chunks) > 1:
            return [f for c in chunks for f in self.forward([c])]
        import torch

        inp = self.extractor(chunks, sampling_rate=SR, return_tensors="pt", padding=True,
                             return_attention_mask=self.pad_ok)
        kwargs = {"input_values": inp.input_values.to(self.device, self.dtype)}
        if self.pad_ok and "attention_mask" in inp:
            kwargs["attention_mask"] = inp.attention_mask.to(self.device)
        with torch.inference_mode():
            if self.last_only:
                stacked = self.model(**kwargs).last_hidden_state[:, :, None]  # type: ignore[operator]
            else:
                hidden = self.model(**kwargs, output_hidden_states=True).hidden_states  # type: ignore[operator]
                stacked = torch.stack([hidden[i] for i in self.index], dim=2)
            stacked = stacked.float().cpu().numpy()  # B x T x L x D
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(c) for c in chunks]))  # type: ignore[attr-defined]
        return [stacked[b, : int(n)] for b, n in enumerate(lengths)]


def hidden_state_indices(layers: list[int] | str, num_layers: int) -> list[int]:
    """`acoustic.layers` as hidden-state indices 0..num_layers (negative counted from the end)."""
    count = num_layers + 1
    if layers == "all":
        return list(range(count))
    bad = [i for i in layers if not -count <= i < count]
    if bad:
        raise UsageError(f"acoustic.layers={list(layers)} but the model has {count} hidden states "
                         f"(0..{count - 1}, or negative from the end)")
    return [i % count for i in layers]


class WhisperEncoder(_Encoder):
    """The encoder of a CTranslate2 Whisper model: 50 frames per second, its final layer only. Each
    chunk is encoded in the window `whisper_window` gives it; chunks of one window go through together."""

    frame_rate = 50.0

    def __init__(self, p: AcousticParams):
        if p.layers not in ([-1], "all"):
            raise ValueError("acoustic.backend=whisper gives the encoder's last layer only: use layers=[-1]")
        self.whisper = load_whisper(p.model, p.device, resolve_compute_type(p.compute_type, p.device), role="acoustic")
        self.window = p.whisper_window

    def forward(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        frames: dict[int, np.ndarray] = {}
        for window_s, idx in group_by_window(chunks, self.window).items():
            out = self.whisper.encode(np.stack([padded_features(self.whisper, chunks[i], window_s)[0] for i in idx]))
            if out.device != "cpu":  # B x (50 x window) x D
                import ctranslate2

                out = out.to_device(ctranslate2.Device.cpu)
            arr = np.array(out, dtype=np.float32)
            for b, i in enumerate(idx):
                frames[i] = arr[b, : int(np.ceil(len(chunks[i]) / SR * self.frame_rate)), None, :]
        return [frames[i] for i in range(len(chunks))]


def stored_frames(frames: np.ndarray, dtype: str) -> Record:
    """The record's frames in the storage dtype: int8 values with their scale per frame and layer, or a float cast."""
    if dtype == "int8":
        return {"frames": quantize(frames)}
    return {"frames": frames.astype(np.float16 if dtype == "float16" else np.float32)}


@register
class AcousticStage(Stage):
    name = "acoustic"
    needs = ("audio",)
    version = "1"
    fields = {"frames": OutputField("float16", ("T", "L", "D"), "hidden states; T x D when one layer is kept; "
                                                               "float32 with acoustic.dtype=float32 or int8"),
              "frame_rate": OutputField("float", doc="frames per second")}
    Params = AcousticParams
    volatile = frozenset({"device", "batch_size"})
    profiles = {"offline": {"backend": "whisper", "model": BUNDLED_TINY_EN}}
    reads_waveform = True

    def __init__(self, params: StageParams, workdir: Path | None = None):
        super().__init__(params, workdir)
        p: AcousticParams = params  # type: ignore[assignment]
        self.batch_size = p.batch_size or (1 if p.device == "cpu" else 16)

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        p: AcousticParams = params  # type: ignore[assignment]
        out = super().fingerprint_params(params)
        out["compute_type"] = resolve_compute_type(p.compute_type, p.device)
        out = window_fingerprint(out, runs_whisper=p.backend == "whisper")
        return precision_fingerprint(out, p.precision, p.device)

    def models(self) -> list[ModelNeed]:
        p: AcousticParams = self.params  # type: ignore[assignment]
        kind = "whisper" if p.backend == "whisper" else "transformers"
        return [ModelNeed("acoustic.model", p.model, kind, OFFLINE_ACOUSTIC)]

    def declared_bytes(self, seconds: float) -> float | None:
        """frames x layers x width x dtype size, from the model's config (or model.bin for Whisper)."""
        p: AcousticParams = self.params  # type: ignore[assignment]
        if p.backend == "whisper":
            width, rate = whisper_dims(p.model)
            layers = 1
        else:
            cfg = transformers_config(p.model, "acoustic.model", OFFLINE_ACOUSTIC)
            width, rate = cfg.hidden_size, SR / float(np.prod(cfg.conv_stride))
            layers = cfg.num_hidden_layers + 1 if p.layers == "all" else len(p.layers)
        frames = np.ceil(seconds * rate)
        per_value = {"float16": 2, "float32": 4, "int8": 1}[p.dtype]
        scale = 4 if p.dtype == "int8" else 0  # a float32 scale per frame and layer
        return float(frames * layers * (width * per_value + scale))

    def setup(self) -> None:
        p: AcousticParams = self.params  # type: ignore[assignment]
        self.encoder: _Encoder = WhisperEncoder(p) if p.backend == "whisper" else TransformersEncoder(p)
        self._chunk_s = min(p.chunk_s, 30.0) if p.backend == "whisper" else p.chunk_s  # Whisper's window

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        p: AcousticParams = self.params  # type: ignore[assignment]
        chunk, overlap = int(self._chunk_s * SR), int(p.overlap_s * SR)
        if overlap >= chunk:
            raise ValueError("acoustic.overlap_s must be shorter than chunk_s")
        waves: list[np.ndarray | Exception] = []
        for item in batch:
            try:
                waves.append(item.waveform)
            except Exception as e:  # noqa: BLE001
                waves.append(UtteranceError(f"cannot read audio: {e}"))
        # Short files go through in one padded forward; long ones chunk by chunk, so memory is
        # bounded by the chunk length, not the file length.
        short = [i for i, w in enumerate(waves) if isinstance(w, np.ndarray) and len(w) <= chunk]
        frames: dict[int, np.ndarray] = {}
        if short:
            for i, f in zip(short, self.encoder.forward([waves[i] for i in short])):  # type: ignore[misc]
                frames[i] = f
        for i, w in enumerate(waves):
            if isinstance(w, np.ndarray) and len(w) > chunk:
                frames[i] = self._long(w, chunk, overlap)
        out: list[Record | Exception] = []
        for i, w in enumerate(waves):
            if isinstance(w, Exception):
                out.append(w)
                continue
            f = frames[i]
            if len(f) == 0:
                out.append(UtteranceError(f"too short for the encoder: {len(w) / SR:.3f} s gives no frame"))
                continue
            f = f[:, 0, :] if f.shape[1] == 1 else f
            out.append({**stored_frames(f, p.dtype), "frame_rate": self.encoder.frame_rate})
        return out

    def _long(self, wave: np.ndarray, chunk: int, overlap: int) -> np.ndarray:
        hop = int(round(SR / self.encoder.frame_rate))
        parts = []
        for s, e, keep_from, keep_to in chunk_bounds(len(wave), chunk, overlap, hop):
            f = self.encoder.forward([wave[s:e]])[0]
            # chunk frame j is the file's frame s/hop + j; keep those starting inside the kept span
            lo = -(-(keep_from - s) // hop)
            hi = -(-(keep_to - s) // hop)
            parts.append(f[lo:hi])
        return np.concatenate(parts)
