"""`describe`: the ES text. An LLM reads a prompt (a template file) with the transcript, the stressed
words and the delivery relative to the speaker, so a text-only model hears what the audio says: behind
any OpenAI-compatible endpoint (`openai`), or a small instruct model run in-process (`local`); or the
offline knowledge describer writes it from lexicons (`knowledge`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from msf.pipeline.device import Device
from msf.pipeline.errors import UsageError
from msf.pipeline.knowledge_describer import KnowledgeDescriber
from msf.pipeline.llm_client import AnswerCache, ChatEndpoint
from msf.pipeline.local_chat import LocalChatModel
from msf.pipeline.model_loading import BUNDLED_SMOLLM2
from msf.pipeline.stage import Item, Record, Stage, StageParams, UtteranceError, register
from msf.pipeline.stages.global_semantics import transcript_of

DEFAULT_PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "describe.txt"


class DescribeParams(StageParams):
    backend: Literal["openai", "knowledge", "local"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    # "" = the backend's default: gpt-4o-mini (openai), the bundled SmolLM2-135M-Instruct (local). For
    # local: a directory, a .gguf file or a hub id in the local cache, loaded through transformers.
    model: str = ""
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
            values = {**values, "model": BUNDLED_SMOLLM2 if values.get("backend") == "local" else "gpt-4o-mini"}
        return values


def prosody_summary(e: Record) -> str:
    """The utterance's delivery relative to its speaker, in words a text-only reader can use."""
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
    version = "1"
    Params = DescribeParams
    reads = ("transcript",)
    # How requests are made cannot change an accepted answer.
    volatile = frozenset({"api_key_env", "concurrency", "timeout_s", "max_retries", "local_batch_size",
                          "local_device"})
    profiles = {"offline": {"backend": "knowledge"}}
    batch_size = 64  # requests in flight together, bounded by `concurrency`

    @classmethod
    def fingerprint_params(cls, params: StageParams) -> dict[str, Any]:
        out = super().fingerprint_params(params)
        p: DescribeParams = params  # type: ignore[assignment]
        if p.backend == "knowledge":
            return {"backend": "knowledge"}
        out["prompt"] = hashlib.blake2b(cls._template(p).encode(), digest_size=16).hexdigest()  # its text, not its path
        if p.backend == "local":  # no endpoint: its settings cannot change an answer
            out = {k: out[k] for k in ("backend", "model", "temperature", "prompt", "max_tokens")}
        return out

    @staticmethod
    def _template(p: DescribeParams) -> str:
        path = Path(p.prompt).expanduser() if p.prompt else DEFAULT_PROMPT
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
        if p.backend == "local":
            self.endpoint = LocalChatModel(p.model, p.temperature, p.max_tokens, p.local_batch_size,  # type: ignore[assignment]
                                           p.local_device, answers)
            return
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
        if p.backend == "knowledge":
            texts: list[str | Exception] = [
                x if isinstance(x, Exception) else self.knowledge.describe(*x) for x in inputs]
        else:
            prompts = [None if isinstance(x, Exception) else self.template.format(
                transcript=x[0], emphasized=", ".join(f'"{w}"' for w in x[2]) or "none", prosody=x[3])
                for x in inputs]
            answers = iter(self.endpoint.complete_all([q for q in prompts if q is not None]))
            texts = [x if isinstance(x, Exception) else next(answers) for x in inputs]
        source = "knowledge" if p.backend == "knowledge" else f"{p.backend}:{p.model}"
        return [t if isinstance(t, Exception) else {"text": t, "source": source} for t in texts]
