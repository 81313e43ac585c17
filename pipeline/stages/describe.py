"""`describe`: the ES text. An LLM reads a prompt (a template file) with the transcript, the stressed
words and the delivery relative to the speaker, so a text-only model hears what the audio says: behind
any OpenAI-compatible endpoint (`openai`), or a small instruct model run in-process (`local`); or the
offline knowledge describer writes it from lexicons (`knowledge`). With `audio = true` the endpoint is
an audio-language model (as the paper's Kimi-Audio): each request carries the utterance's audio too,
and the model describes what it hears.

Nothing is sent anywhere by default: the `openai` backend needs an endpoint named in msf.toml or with
`--set describe.base_url=...`, and stops the run before anything is computed when there is none."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.backends.device import Device
from msf.pipeline.errors import UsageError
from msf.pipeline.backends.knowledge_describer import KnowledgeDescriber
from msf.pipeline.backends.llm_client import AnswerCache, ChatEndpoint
from msf.pipeline.backends.local_chat import LocalChatModel
from msf.pipeline.backends.model_loading import BUNDLED_SMOLLM2, OFFLINE_DESCRIBER
from msf.pipeline.speaker_baseline import MIN_SPEAKER_UTTERANCES
from msf.pipeline.stage import Egress, Item, ModelNeed, OutputField, Record, Stage, StageParams, UtteranceError, register
from msf.pipeline.stages.global_semantics import transcript_of

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT = PROMPTS / "describe.txt"
DEFAULT_AUDIO_PROMPT = PROMPTS / "describe_audio.txt"  # the listener hears the speech
SPEECH_MARGIN_S = 0.25  # kept around the first and last word when long audio is trimmed
AUDIO_ONLY_PARAMS = ("audio", "max_audio_s")

NO_ENDPOINT = (
    "describe: no endpoint named, and msf sends no corpus's words or audio anywhere unasked. Choose one: "
    "a local server (--set describe.base_url=http://127.0.0.1:8000/v1, e.g. vLLM), the local model "
    "(--set describe.backend=local), the offline knowledge describer (--set describe.backend=knowledge, "
    "or --profile offline), or name a remote endpoint yourself (--set describe.base_url=https://api.openai.com/v1, "
    "or base_url under [stages.describe] in msf.toml)")


class DescribeParams(StageParams):
    backend: Literal["openai", "knowledge", "local"] = "openai"
    # The OpenAI-compatible endpoint; "" = none named: the run stops and says how to name one.
    base_url: str = ""
    # "" = the backend's default: gpt-4o-mini (openai), gpt-4o-audio-preview (openai with audio), the
    # bundled SmolLM2-135M-Instruct (local). For local: a directory, a .gguf file or a hub id in the
    # local cache, loaded through transformers.
    model: str = ""
    # Send each utterance's audio (16 kHz mono WAV) with the prompt, to an audio-language model.
    audio: bool = False
    # Audio longer than this is trimmed to the span around its words (the stretch with the most
    # speech when even that is longer); the record says what was sent.
    max_audio_s: float = Field(30.0, gt=0)
    temperature: float = 0.0
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable; the key itself is never stored
    prompt: str = ""  # a template file with {transcript}, {emphasized}, {prosody}; "" = the built-in one
    max_tokens: int = 200
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    local_batch_size: int = 8  # prompts per generate call (backend local)
    local_device: Device = "cpu"

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("model"):
            default = (BUNDLED_SMOLLM2 if values.get("backend") == "local"
                       else "gpt-4o-audio-preview" if values.get("audio") else "gpt-4o-mini")
            values = {**values, "model": default}
        return values

    @model_validator(mode="after")
    def _audio_needs_an_endpoint(self) -> "DescribeParams":
        if self.audio and self.backend != "openai":
            raise ValueError(f"describe.audio=true needs describe.backend=openai (an audio-language model behind an "
                             f"OpenAI-compatible endpoint): backend {self.backend!r} reads text only and no "
                             "audio-capable model is bundled")
        return self


def speech_window(starts: np.ndarray, ends: np.ndarray, duration: float, max_s: float) -> tuple[float, float]:
    """The stretch of audio to send: all of it when it fits in `max_s`; else the span from the first
    word to the last (with a margin); else the `max_s` window, starting at a word, that holds the
    most word time (the earliest of equals)."""
    if duration <= max_s:
        return 0.0, duration
    if len(starts) == 0:
        return 0.0, max_s
    t0, t1 = max(0.0, float(starts.min()) - SPEECH_MARGIN_S), min(duration, float(ends.max()) + SPEECH_MARGIN_S)
    if t1 - t0 <= max_s:
        return t0, t1
    best, best_t0 = -1.0, t0
    for a in np.maximum(0.0, np.minimum(starts - SPEECH_MARGIN_S, duration - max_s)):
        covered = float(np.clip(np.minimum(ends, a + max_s) - np.maximum(starts, a), 0, None).sum())
        if covered > best + 1e-9:
            best, best_t0 = covered, float(a)
    return best_t0, best_t0 + max_s


def wav_clip(waveform: np.ndarray, start_s: float, end_s: float) -> bytes:
    """16 kHz mono 16-bit WAV bytes of [start_s, end_s)."""
    import soundfile as sf

    buf = io.BytesIO()
    clip = waveform[int(round(start_s * TARGET_SR)) : int(round(end_s * TARGET_SR))]
    sf.write(buf, clip, TARGET_SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def prosody_summary(e: Record) -> str:
    """The utterance's delivery in words a text-only reader can use: relative to its speaker where it has
    a speaker baseline (pipeline/speaker_baseline.py), otherwise its own measures, saying there is no
    baseline (never "usual" for a speaker whose usual was not measured)."""
    if not e.get("speaker_baseline", True):
        f0 = float(e["f0_median_hz"])
        pitch = f"median pitch {f0:.0f} Hz" if np.isfinite(f0) and f0 > 0 else "no voiced pitch"
        return (f"no baseline for this speaker (unknown, or fewer than {MIN_SPEAKER_UTTERANCES} utterances), "
                f"so only absolute measures: {pitch}, {float(e['rate_syl_s']):.1f} syllables per second")
    rate, pitch, loud = float(e["rate_ratio"]), float(e["pitch_st"]), float(e["loudness_db"])
    pace = "faster than usual" if rate > 1.08 else "slower than usual" if rate < 0.92 else "at the usual pace"
    tone = "higher than usual" if pitch > 1 else "lower than usual" if pitch < -1 else "as high as usual"
    volume = "louder than usual" if loud > 1.5 else "softer than usual" if loud < -1.5 else "as loud as usual"
    return (f"speaks {pace} ({rate:.2f}x their typical rate), pitch {tone} ({pitch:+.1f} semitones), "
            f"{volume} ({loud:+.1f} dB)")


@register
class DescribeStage(Stage):
    name = "describe"
    needs = ("audio", "align", "emphasis")
    version = "2"  # 2: the delivery summary follows the speaker baseline rule
    fields = {"text": OutputField("str"), "source": OutputField("str", doc="backend:model"),
              "audio_offset_s": OutputField("float", optional=True), "audio_s": OutputField("float", optional=True),
              "audio_trimmed": OutputField("bool", optional=True)}
    Params = DescribeParams
    reads = ("transcript",)
    # How requests are made cannot change an accepted answer.
    volatile = frozenset({"api_key_env", "concurrency", "timeout_s", "max_retries", "local_batch_size",
                          "local_device"})
    profiles = {"offline": {"backend": "knowledge"}}
    batch_size = 64  # requests in flight together, bounded by `concurrency`

    def __init__(self, params: StageParams, workdir: Path | None = None):
        super().__init__(params, workdir)
        self.reads_waveform = params.audio  # type: ignore[attr-defined]

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        out = super().fingerprint_params(params)
        p: DescribeParams = params  # type: ignore[assignment]
        if p.backend == "knowledge":
            return {"backend": "knowledge"}
        if not p.audio:  # the text mode's fingerprints stay those it had before audio existed
            out = {k: v for k, v in out.items() if k not in AUDIO_ONLY_PARAMS}
        out["prompt"] = hashlib.blake2b(cls._template(p).encode(), digest_size=16).hexdigest()  # its text, not its path
        if p.backend == "local":  # no endpoint: its settings cannot change an answer
            out = {k: out[k] for k in ("backend", "model", "temperature", "prompt", "max_tokens")}
        return out

    def preflight(self) -> None:
        p: DescribeParams = self.params  # type: ignore[assignment]
        if p.backend == "openai" and not p.base_url.strip():
            raise UsageError(NO_ENDPOINT)

    def models(self) -> list[ModelNeed]:
        p: DescribeParams = self.params  # type: ignore[assignment]
        return [ModelNeed("describe.model", p.model, "transformers", OFFLINE_DESCRIBER)] if p.backend == "local" else []

    def egress(self) -> Egress | None:
        p: DescribeParams = self.params  # type: ignore[assignment]
        if p.backend != "openai":
            return None
        return Egress(p.base_url, p.max_audio_s if p.audio else None)

    @staticmethod
    def _template(p: DescribeParams) -> str:
        path = Path(p.prompt).expanduser() if p.prompt else DEFAULT_AUDIO_PROMPT if p.audio else DEFAULT_PROMPT
        try:
            return path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"describe.prompt: cannot read the template {path}: {e.strerror}") from None

    def setup(self) -> None:
        p: DescribeParams = self.params  # type: ignore[assignment]
        if p.backend == "knowledge":
            self.knowledge = KnowledgeDescriber()
            return
        self.template = self._template(p)
        answers = AnswerCache(self.workdir / "answers.sqlite") if self.workdir else None
        if p.backend == "local":  # (audio=true is refused for it by DescribeParams)
            self.endpoint = LocalChatModel(p.model, p.temperature, p.max_tokens, p.local_batch_size,  # type: ignore[assignment]
                                           p.local_device, answers)
            return
        self.preflight()  # a worker started by other means than `msf extract` checks too
        self.endpoint = ChatEndpoint(p.base_url, p.model, p.temperature, p.api_key_env, p.timeout_s,
                                     p.max_retries, p.concurrency, p.max_tokens, answers)

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        p: DescribeParams = self.params  # type: ignore[assignment]
        inputs: list[tuple[str, list[str], list[str], str] | Exception] = []
        for item in batch:
            try:
                words = [str(w) for w in item.inputs["align"]["words"]]
                e = item.inputs["emphasis"]
                stressed = [w for w, f in zip(words, e["emphasized"]) if f]
                inputs.append((transcript_of(item), words, stressed, prosody_summary(e)))
            except UtteranceError as err:
                inputs.append(err)
        source = "knowledge" if p.backend == "knowledge" else f"{p.backend}:{p.model}"
        if p.backend == "knowledge":
            texts: list[str | Exception] = [
                x if isinstance(x, Exception) else self.knowledge.describe(*x) for x in inputs]
            return [t if isinstance(t, Exception) else {"text": t, "source": source} for t in texts]
        heard: list[dict[str, Any] | None] = [None] * len(batch)
        if p.audio:
            for i, (item, x) in enumerate(zip(batch, inputs)):
                if not isinstance(x, Exception):
                    try:
                        heard[i] = self._audio_part(item)
                    except Exception as err:  # noqa: BLE001 - unreadable audio fails this utterance only
                        inputs[i] = UtteranceError(f"describe: cannot send the audio: {err}")
        prompts = [None if isinstance(x, Exception) else self.template.format(
            transcript=x[0], emphasized=", ".join(f'"{w}"' for w in x[2]) or "none", prosody=x[3])
            for x in inputs]
        asked = [i for i, q in enumerate(prompts) if q is not None]
        questions: list[str] = [prompts[i] for i in asked]  # type: ignore[misc]
        answers = iter(self.endpoint.complete_all(questions, [heard[i]["wav"] for i in asked])  # type: ignore[index, call-arg]
                       if p.audio else self.endpoint.complete_all(questions))
        out: list[Record | Exception] = []
        for x, h in zip(inputs, heard):
            t = x if isinstance(x, Exception) else next(answers)
            if isinstance(t, Exception):
                out.append(t)
            elif h is None:
                out.append({"text": t, "source": source})
            else:
                out.append({"text": t, "source": source, **{k: v for k, v in h.items() if k != "wav"}})
        return out

    def _audio_part(self, item: Item) -> dict[str, Any]:
        """The WAV to send and what it covers: trimmed to `max_audio_s` around the words."""
        p: DescribeParams = self.params  # type: ignore[assignment]
        wave = item.waveform
        duration = len(wave) / TARGET_SR
        a = item.inputs["align"]
        t0, t1 = speech_window(np.asarray(a["start"], float), np.asarray(a["end"], float), duration, p.max_audio_s)
        return {"wav": wav_clip(wave, t0, t1), "audio_offset_s": round(t0, 3), "audio_s": round(t1 - t0, 3),
                "audio_trimmed": t1 - t0 < duration - 1e-3}
