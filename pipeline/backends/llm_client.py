"""Chat completions from any OpenAI-compatible endpoint, concurrently, with every accepted answer cached.

Transport faults (timeouts, 429 with Retry-After, 5xx, dropped connections) are retried with backoff
by the `openai` client itself; answers that arrive but are empty or malformed are retried here. An
answer is cached by (model, prompt) only once accepted, so a rerun never pays twice and a failure
is never stored as an answer. The API key is read from the environment and never written anywhere.

With audio (an audio-language model), each request is the prompt and an `input_audio` part (base64
WAV), the shape OpenAI's audio models and vLLM's audio-language models take; the answer is then cached
by (model, prompt, the WAV's content hash), so two recordings with the same words never share one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from msf.pipeline.backends.model_loading import ModelUnavailable
from msf.pipeline.stage import EndpointFailure

MIN_WORDS = 3


class AnswerCache:
    """SQLite, shared safely by the worker processes of one cache directory."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, answer TEXT, "
                        "created REAL)")

    @staticmethod
    def key(model: str, prompt: str, audio: bytes | None = None) -> str:
        """Text-only answers keep the key they always had; an answer to audio adds the audio's hash."""
        heard = "" if audio is None else "\x00audio:" + hashlib.blake2b(audio, digest_size=20).hexdigest()
        return hashlib.blake2b(f"{model}\x00{prompt}{heard}".encode(), digest_size=20).hexdigest()

    def get(self, model: str, prompt: str, audio: bytes | None = None) -> str | None:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (self.key(model, prompt, audio),)).fetchone()
        return row[0] if row else None

    def put(self, model: str, prompt: str, answer: str, audio: bytes | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                        (self.key(model, prompt, audio), model, answer, time.time()))


def split_cached(answers: AnswerCache | None, model: str, prompts: Sequence[str],
                 audio: Sequence[bytes | None] | None = None) -> tuple[list, list[int]]:
    """Per prompt its cached answer (None where there is none), and the indices still to ask."""
    heard = audio if audio is not None else [None] * len(prompts)
    out = [answers.get(model, p, a) if answers else None for p, a in zip(prompts, heard)]
    return out, [i for i, a in enumerate(out) if a is None]


def user_message(prompt: str, audio: bytes | None) -> dict:
    """The chat message: the prompt alone, or the prompt and the WAV as an `input_audio` part."""
    if audio is None:
        return {"role": "user", "content": prompt}
    return {"role": "user", "content": [
        {"type": "text", "text": prompt},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(audio).decode("ascii"), "format": "wav"}}]}


def check_answer(text: object) -> str:
    """The accepted form of an answer, or ValueError saying why it is rejected."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    text = " ".join(text.split())
    if len(text.split()) < MIN_WORDS:
        raise ValueError(f"answer too short to be a description: {text[:60]!r}")
    if sum(c.isalpha() for c in text) < len(text) / 2:
        raise ValueError(f"answer is not prose: {text[:60]!r}")
    return text


class ChatEndpoint:
    def __init__(self, base_url: str, model: str, temperature: float, api_key_env: str, timeout_s: float,
                 max_retries: int, concurrency: int, max_tokens: int, answers: AnswerCache | None):
        key = os.environ.get(api_key_env)
        if not key and "api.openai.com" in base_url:
            raise ModelUnavailable(f"describe: no API key in the environment variable {api_key_env} for {base_url}; "
                                   "set it, point describe.base_url at a local endpoint, or use "
                                   "describe.backend=knowledge (--profile offline)")
        self.base_url, self.model, self.temperature = base_url, model, temperature
        self.key = key or "unused"  # local endpoints usually ignore the key, but the client needs one
        self.timeout_s, self.max_retries, self.concurrency = timeout_s, max_retries, concurrency
        self.max_tokens = max_tokens
        self.answers = answers

    def complete_all(self, prompts: list[str], audio: list[bytes] | None = None) -> list[str | Exception]:
        """One accepted answer, or the EndpointFailure that explains its failure, per prompt; with
        `audio`, each prompt is sent with its WAV."""
        return asyncio.run(self._all(prompts, audio))

    async def _all(self, prompts: list[str], audio: list[bytes] | None) -> list[str | Exception]:
        import openai

        heard: Sequence[bytes | None] = audio if audio is not None else [None] * len(prompts)
        out, todo = split_cached(self.answers, self.model, prompts, heard)
        if todo:
            sem = asyncio.Semaphore(self.concurrency)
            async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self.key, timeout=self.timeout_s,
                                          max_retries=self.max_retries) as client:
                results = await asyncio.gather(*(self._one(client, sem, prompts[i], heard[i]) for i in todo))
            for i, r in zip(todo, results):
                out[i] = r
        return out  # type: ignore[return-value]

    async def _one(self, client, sem: asyncio.Semaphore, prompt: str,  # type: ignore[no-untyped-def]
                   audio: bytes | None) -> str | Exception:
        import openai

        message = user_message(prompt, audio)

        last = ""
        for _ in range(self.max_retries + 1):  # attempts for answers that arrive but are unusable
            try:
                async with sem:
                    r = await client.chat.completions.create(
                        model=self.model, temperature=self.temperature, max_tokens=self.max_tokens,
                        messages=[message])
                text = check_answer(r.choices[0].message.content if r.choices else None)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                # Every request would fail the same way: stop the run with one message.
                raise ModelUnavailable(f"describe endpoint {self.base_url} refused model {self.model!r}: "
                                       f"HTTP {e.status_code}") from None
            except openai.APITimeoutError:
                return EndpointFailure(f"LLM endpoint timed out ({self.timeout_s:g} s per request, "
                                      f"{self.max_retries + 1} attempts)")
            except openai.APIConnectionError as e:
                return EndpointFailure(f"LLM endpoint unreachable after {self.max_retries + 1} attempts: {e}")
            except openai.APIStatusError as e:
                return EndpointFailure(f"LLM endpoint answered HTTP {e.status_code} after {self.max_retries + 1} attempts")
            except (ValueError, TypeError, AttributeError, IndexError, openai.APIResponseValidationError) as e:
                last = str(e) or type(e).__name__  # malformed body or unusable answer: ask again
                continue
            if self.answers:
                self.answers.put(self.model, prompt, text, audio)
            return text
        return EndpointFailure(f"LLM endpoint gave no usable answer in {self.max_retries + 1} attempts (last: {last})")
