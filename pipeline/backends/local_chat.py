"""Chat completions from a small instruct model run in-process through transformers, batched, with
every accepted answer cached: the `describe.backend = "local"` path, for machines with no endpoint.

The answers go through the same acceptance check and the same answer cache as an endpoint's, so a
rerun never generates twice. A model that produces no usable answer for a prompt is not asked again
(greedy decoding would say the same thing): the utterance fails with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from msf.pipeline.backends.llm_client import AnswerCache, check_answer, split_cached
from msf.pipeline.backends.device import place
from msf.pipeline.backends.model_loading import OFFLINE_DESCRIBER, load_transformers
from msf.pipeline.stage import UtteranceError


class LocalChatModel:
    def __init__(self, model: str, temperature: float, max_tokens: int, batch_size: int, device: str,
                 answers: AnswerCache | None):
        self.model_id, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.batch_size, self.device, self.answers = max(1, batch_size), device, answers
        self.cache_key = f"local:{model}"  # never shares answers with an endpoint's model of the same name
        self.tokenizer = None
        self.lm = None
        self.generated = 0  # prompts sent through the model (the answer cache's hits are not counted)

    def _load(self) -> None:
        if self.lm is not None:
            return
        self.tokenizer = load_transformers(self.model_id, "AutoTokenizer", "describe.model", offline=OFFLINE_DESCRIBER,
                                           weights=False)[0]
        self.lm = load_transformers(self.model_id, "AutoModelForCausalLM", "describe.model", offline=OFFLINE_DESCRIBER)[0]
        place(self.lm, self.device, "describe.local_device")
        self.tokenizer.padding_side = "left"  # type: ignore[attr-defined]  # generation continues at the right end
        if self.tokenizer.pad_token is None:  # type: ignore[attr-defined]
            self.tokenizer.pad_token = self.tokenizer.eos_token  # type: ignore[attr-defined]

    def complete_all(self, prompts: Sequence[str]) -> list[str | Exception]:
        """One accepted answer, or the UtteranceError that explains its failure, per prompt."""
        out, todo = split_cached(self.answers, self.cache_key, prompts)
        if todo:
            self._load()
            todo.sort(key=lambda i: len(prompts[i]))  # similar lengths together: less padding per batch
            for start in range(0, len(todo), self.batch_size):
                part = todo[start:start + self.batch_size]
                for i, text in zip(part, self._generate([prompts[i] for i in part])):
                    try:
                        out[i] = check_answer(text)
                    except ValueError as e:
                        out[i] = UtteranceError(f"local model {self.model_id!r} gave no usable description: {e}")
                        continue
                    if self.answers:
                        self.answers.put(self.cache_key, prompts[i], out[i])  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        tok, lm = self.tokenizer, self.lm
        chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,  # type: ignore[union-attr]
                                         add_generation_prompt=True) for p in prompts]
        enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)  # type: ignore[misc]
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        if self.temperature > 0:
            torch.manual_seed(0)  # a rerun of the same batch samples the same answers
        with torch.inference_mode():
            ids = lm.generate(**enc, max_new_tokens=self.max_tokens, pad_token_id=tok.pad_token_id,  # type: ignore[union-attr]
                              top_p=None, top_k=None, **sampling)
        self.generated += len(prompts)
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)  # type: ignore[union-attr]
