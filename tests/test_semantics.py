"""The text stages: GS and LES pooling against a direct forward of a tiny BERT, the knowledge describer,
and `describe` against a real HTTP chat-completions server that hangs, 429s, 500s and talks garbage."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from chat_server import ChatServer

from msf.pipeline.config import load_config
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.corpus import Utterance
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stage import Item
from msf.pipeline.stages.global_semantics import GlobalStage
from msf.pipeline.stages.local_semantics import LocalParams, LocalStage
from msf.pipeline.backends.text_encoder import TextEncoderParams

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "music", "was", "terrible", "but", "garden",
         "love", "##ly", ",", "."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(d)
    return d


def _forward(model_dir: Path, text: str) -> tuple[np.ndarray, list]:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(text.split(), is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        h = AutoModel.from_pretrained(model_dir).eval()(**enc).last_hidden_state[0].numpy()
    return h, enc.word_ids(0)


def test_global_and_local_pool_the_right_tokens(tiny_bert: Path) -> None:
    text = "the music was terrible but the garden was lovely"
    words = text.split()
    h, word_ids = _forward(tiny_bert, text)
    emphasis = {"emphasized": np.array([w == "lovely" for w in words]), "score": np.linspace(0, 1, len(words))}
    item = Item(Utterance("u", "", transcript=text), {"align": {"words": np.array(words), "transcript": text},
                                                      "emphasis": emphasis})
    gs = GlobalStage(TextEncoderParams(model=str(tiny_bert)))
    gs.setup()
    np.testing.assert_allclose(gs.compute([item])[0]["embedding"], h.mean(0), atol=1e-5)
    les = LocalStage(LocalParams(model=str(tiny_bert)))
    les.setup()
    rec = les.compute([item])[0]
    lovely = [i for i, w in enumerate(word_ids) if w == words.index("lovely")]
    assert len(lovely) == 2  # "love" "##ly": a word's subword tokens are pooled together
    np.testing.assert_allclose(rec["embedding"], h[lovely].mean(0), atol=1e-5)
    assert rec["mask"] and rec["n_emphasized"] == 1
    weighted = LocalStage(LocalParams(model=str(tiny_bert), pooling_words="weighted"))
    weighted.setup()
    w = np.array([emphasis["score"][i] if i is not None else 0.0 for i in word_ids])
    np.testing.assert_allclose(weighted.compute([item])[0]["embedding"], (w[:, None] * h).sum(0) / w.sum(), atol=1e-5)
    none = Item(item.utt, {**item.inputs, "emphasis": {**emphasis, "emphasized": np.zeros(len(words), bool)}})
    rec = les.compute([none])[0]
    assert not rec["mask"] and not rec["embedding"].any()


def _cfg(corpus: Path, cache: Path, url: str, *extra: str) -> Extraction:
    sets = ["align.backend=provided", "describe.backend=openai", f"describe.base_url={url}", "describe.model=m",
            "describe.api_key_env=MSF_TEST_KEY", "describe.timeout_s=1", "describe.max_retries=2", *extra]
    return Extraction(load_config(None, sets, corpus=f"demo:{corpus}", cache=str(cache), workers=1, profile="offline"))


def test_describe_retries_caches_and_never_pays_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSF_TEST_KEY", "sk-secret-4242")
    corpus = build_demo_corpus(tmp_path / "corpus", n=6, seed=1, progress=False)
    order: list[str] = []
    attempts: dict[str, int] = {}
    endpoint_up = {"E": False}

    def script(n: int, prompt: str):  # noqa: ANN202
        if prompt not in order:
            order.append(prompt)
        who = "ABCDEF"[order.index(prompt)]
        k = attempts[prompt] = attempts.get(prompt, 0) + 1
        plan = {
            "A": [("hang", 3.0)],  # longer than timeout_s: the client gives up and retries
            "B": [("status", 429, {"Retry-After": "1"})],
            "C": [("status", 500, {}), ("status", 503, {})],
            "D": [("garbage", "<html>not json"), ("answer", "ok")],  # malformed, then too short
            "E": [("status", 500, {})] * 10 if not endpoint_up["E"] else [],
            "F": [],
        }[who]
        return plan[k - 1] if k <= len(plan) else ("answer", f"The speaker sounds calm and sure, case {who}.")

    with ChatServer(script) as server:
        ex = _cfg(corpus, tmp_path / "cache", server.url)
        r = ex.run(["describe"], progress=False)["describe"]
        assert (r.computed, r.failed) == (5, 1), [f.error for f in ex.store.index.failures("describe")] + [
            f"{'ABCDEF'[order.index(p)]}:{attempts[p]}" for p in order]
        by_prompt = {p: [t for t, _, b in server.requests if b["messages"][-1]["content"] == p] for p in order}
        counts = {"ABCDEF"[i]: len(by_prompt[p]) for i, p in enumerate(order)}
        assert counts == {"A": 2, "B": 2, "C": 3, "D": 3, "E": 3, "F": 1}
        b_times = by_prompt[order[1]]
        assert b_times[1] - b_times[0] >= 0.95  # Retry-After honoured
        assert all(h.get("authorization") == "Bearer sk-secret-4242" for _, h, _ in server.requests)
        failed = ex.store.index.failures("describe")
        assert len(failed) == 1 and "HTTP 500 after 3 attempts" in failed[0].error
        stored = {u: r["text"] for u, r in ex.view().records("describe").items()}
        assert set(stored) == {u.id for u in ex.corpus.utterances} - {failed[0].utt}
        assert all(t.startswith("The speaker sounds calm") for t in stored.values())
        ex.close()

        # The endpoint recovers: the rerun asks only for the failed utterance.
        endpoint_up["E"] = True
        before = len(server.requests)
        ex = _cfg(corpus, tmp_path / "cache", server.url)
        r = ex.run(["describe"], progress=False)["describe"]
        assert (r.computed, r.reused, r.failed, len(server.requests) - before) == (1, 5, 0, 1)
        ex.close()

        # Upstream recomputed, same prompts: every answer comes from the answer cache.
        before = len(server.requests)
        ex = _cfg(corpus, tmp_path / "cache", server.url, "emphasis.min_word_s=0.031")
        r = ex.run(["describe"], progress=False)["describe"]
        assert r.computed == 6 and len(server.requests) == before
        ex.close()

    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert b"sk-secret-4242" not in path.read_bytes(), path


def test_describe_prompt_carries_transcript_stress_and_delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSF_TEST_KEY", raising=False)
    corpus = build_demo_corpus(tmp_path / "corpus", n=14, seed=2, progress=False)
    template = tmp_path / "t.txt"
    template.write_text("T={transcript} | E={emphasized} | P={prosody}")
    with ChatServer(lambda n, p: ("answer", "A described utterance, in words.")) as server:
        ex = _cfg(corpus, tmp_path / "cache", server.url, f"describe.prompt={template}")
        ex.run(["describe"], progress=False)
        prompts = [b["messages"][-1]["content"] for _, _, b in server.requests]
        ex.close()
    assert len(prompts) == 14
    # the delivery is relative to the speaker where the speaker has 3 utterances or more, and otherwise
    # the utterance's own measures, saying so (pipeline/speaker_baseline.py)
    rows = list(csv.DictReader(open(corpus / "manifest.csv")))
    count = {r["speaker"]: sum(q["speaker"] == r["speaker"] for q in rows) for r in rows}
    by_text = {r["transcript"]: count[r["speaker"]] for r in rows}
    assert set(by_text.values()) & {1, 2} and max(by_text.values()) >= 3  # both cases occur in this corpus
    for p in prompts:
        if by_text[p.split(" | ")[0][2:]] >= 3:
            assert re.fullmatch(r'T=.+ \| E=(none|"[a-z]+") \| P=speaks .+ semitones\), .+ dB\)', p), p
        else:
            assert re.fullmatch(r'T=.+ \| E=(none|"[a-z]+") \| P=no baseline for this speaker \(unknown, or fewer '
                                r'than 3 utterances\), so only absolute measures: median pitch \d+ Hz, '
                                r'\d\.\d syllables per second', p), p
    # this corpus (seed 2) has stressed words, and the prompts name them
    stressed = {w["word"] for t in map(json.loads, open(corpus / "truth.jsonl")) for w in t["words"] if w["emphasized"]}
    assert stressed and {m for p in prompts for m in re.findall(r'E="([a-z]+)"', p)} & stressed


def test_knowledge_describer_is_deterministic_and_reads_stance(tmp_path: Path) -> None:
    corpus = build_demo_corpus(tmp_path / "corpus", n=10, seed=0, progress=False)
    cfg = load_config(None, ["align.backend=provided"], corpus=f"demo:{corpus}", cache=str(tmp_path / "c"),
                      workers=1, profile="offline")
    texts = []
    for cache in ("c1", "c2"):
        ex = Extraction(cfg.model_copy(update={"cache": tmp_path / cache}))
        ex.run(["extended"], progress=False)
        view = ex.view()
        texts.append({u: r["text"] for u, r in view.records("describe").items()})
        assert len(texts[-1]) == len(ex.corpus.utterances)
        assert all(r["embedding"].shape == (384,) for r in view.records("extended").values())
        ex.close()
    assert texts[0] == texts[1]
    checked = {"hedge": 0, "question": 0, "command": 0}
    for u in ex.corpus.utterances:
        t = texts[0][u.id]
        assert t.startswith("The wording is") and ("Delivery: speaks" in t or "Delivery: no baseline for this speaker" in t)
        if u.transcript.startswith("Perhaps"):
            assert "hedges (perhaps, maybe)" in t
            checked["hedge"] += 1
        if u.transcript.endswith("?"):
            assert "asks a question" in t
            checked["question"] += 1
        if u.transcript.startswith("Listen"):
            assert 'gives a command ("listen")' in t
            checked["command"] += 1
    assert all(checked.values()), checked  # every stance case occurs in this corpus (seed 0, 10 utterances)


def test_global_embeds_a_transcript_whose_alignment_failed(tmp_path: Path, demo_corpus: Path) -> None:
    """GS needs only the transcript: an utterance the aligner refuses still gets its GS; one with no
    transcript needs the (ASR) alignment, and says so when there is none."""
    import csv

    rows = list(csv.DictReader(open(demo_corpus / "manifest.csv")))[:3]
    rows[1]["transcript"] = "the committee will reconvene on thursday afternoon to discuss the budget in detail"
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "audio": str(demo_corpus / r["audio"])} for r in rows)
    cfg = load_config(None, ["align.backend=sphinx"], corpus=str(tmp_path / "m.csv"), cache=str(tmp_path / "c"),
                      workers=1, profile="offline")
    ex = Extraction(cfg)
    reports = ex.run(["global", "emphasis"], progress=False)
    assert reports["align"].failed == 1 and reports["global"].computed == 3 and reports["global"].failed == 0
    assert reports["emphasis"].failed == 1  # emphasis does need the word times
    failed = ex.store.index.failures("align")[0]
    assert failed.utt == rows[1]["id"] and "does not match the audio" in failed.error
    assert ex.view().records("global", [rows[1]["id"]])[rows[1]["id"]]["embedding"].shape == (384,)
    ex.close()


LM_WORDS = ["<unk>", "<pad>", "<eos>", "user", "assistant", "the", "speaker", "sounds", "calm", "angry", "sure",
            "and", "tired", "but", "warm", "voice", "is", "low", "high", "fast", "slow", "very", "quite", "happy"]


@pytest.fixture(scope="module")
def tiny_chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama over a vocabulary of words, with a chat template: whatever it generates is prose
    (words joined by spaces), so the acceptance check passes on real generated text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-chat-lm")
    vocab = {w: i for i, w in enumerate(LM_WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant {% endif %}")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(LM_WORDS), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=1024, pad_token_id=1, eos_token_id=2, bos_token_id=2))
    lm.generation_config.suppress_tokens = [0, 1, 2]  # never a special token: every answer is a full line of words
    lm.save_pretrained(d)
    return d


def test_describe_with_a_local_model_batches_and_caches(tmp_path: Path, tiny_chat_lm: Path) -> None:
    from msf.pipeline.backends.llm_client import AnswerCache
    from msf.pipeline.backends.local_chat import LocalChatModel

    corpus = build_demo_corpus(tmp_path / "corpus", n=5, seed=3, progress=False)
    sets = ["align.backend=provided", "describe.backend=local", f"describe.model={tiny_chat_lm}",
            "describe.max_tokens=12", "describe.local_batch_size=2"]
    ex = Extraction(load_config(None, sets, corpus=f"demo:{corpus}", cache=str(tmp_path / "cache"), workers=1,
                                profile="offline"))
    r = ex.run(["describe"], progress=False)["describe"]
    assert (r.computed, r.failed) == (5, 0), [f.error for f in ex.store.index.failures("describe")]
    texts = ex.view().records("describe")
    assert len(texts) == 5
    ex.close()
    for rec in texts.values():
        assert rec["source"] == f"local:{tiny_chat_lm}"
        assert len(rec["text"].split()) >= 3 and set(rec["text"].split()) <= set(LM_WORDS[3:])

    # the same prompts, one at a time and then in one batch of 5 (left padding): the same greedy answers
    from msf.pipeline.stages.describe import DescribeStage
    prompts = [p for p, in AnswerCache(tmp_path / "cache" / "_work" / "describe" / "answers.sqlite").db.execute(
        "SELECT key FROM answers")]
    assert len(prompts) == 5  # every accepted answer is cached, keyed by model and prompt
    template = DescribeStage._template(DescribeStage.Params(backend="local"))
    asks = [template.format(transcript=f"the speaker {w}", emphasized="none", prosody="as usual")
            for w in ("is calm", "sounds very tired and slow", "is", "sounds angry")]
    one = LocalChatModel(str(tiny_chat_lm), 0.0, 10, 1, "cpu", None)
    five = LocalChatModel(str(tiny_chat_lm), 0.0, 10, 4, "cpu", AnswerCache(tmp_path / "answers.sqlite"))
    assert one.complete_all(asks) == five.complete_all(asks) and five.generated == 4
    again = LocalChatModel(str(tiny_chat_lm), 0.0, 10, 4, "cpu", AnswerCache(tmp_path / "answers.sqlite"))
    assert again.complete_all(asks) == one.complete_all(asks) and again.generated == 0 and again.lm is None


def test_describe_with_a_local_model_that_is_not_there_fails_with_one_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msf.cli import app

    corpus = build_demo_corpus(tmp_path / "corpus", n=2, seed=3, progress=False)
    r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(tmp_path / "cache"),
                                 "--profile", "offline", "--stage", "describe", "--set", "align.backend=provided",
                                 "--set", "describe.backend=local", "--set", f"describe.model={tmp_path / 'no-such-model'}"])
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    assert "(describe.model): not on this machine" in r.stderr and "no-such-model" in r.stderr
    assert "--profile offline: the knowledge describer" in " ".join(r.stderr.split())


def test_the_text_encoder_in_half_precision_is_within_the_documented_tolerance() -> None:
    """The bundled MiniLM (real weights) in bfloat16 against float32: every sentence embedding at cosine
    >= 0.999 (docs/scaling.md, "Precision")."""
    from msf.pipeline.backends.model_loading import BUNDLED_MINILM
    from msf.pipeline.stages.global_semantics import GlobalStage
    from msf.pipeline.backends.text_encoder import TextEncoder, TextEncoderParams

    texts = ["I can't believe you did that again.", "Thank you so much, this is wonderful news!",
             "Fine. Whatever you say.", "The meeting is moved to Tuesday at noon."]
    emb = {p: np.stack(TextEncoder(TextEncoderParams(model=BUNDLED_MINILM, precision=p), "global.model").embed(texts))
           for p in ("float32", "bfloat16")}
    cos = (emb["float32"] * emb["bfloat16"]).sum(1) / np.linalg.norm(emb["float32"], axis=1) / np.linalg.norm(
        emb["bfloat16"], axis=1)
    assert cos.min() >= 0.999 and np.abs(emb["float32"] - emb["bfloat16"]).max() > 0, cos
    assert "precision" not in GlobalStage.fingerprint_params(GlobalStage.Params())
