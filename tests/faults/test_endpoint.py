"""The LLM endpoint goes away in the middle of a run: bounded requests, failures recorded and nothing
wrong cached; once it is back, a rerun asks only for what is missing, and a third run asks nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chat_server import ChatServer

from msf.pipeline.config import load_config
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.run.extraction import Extraction

ANSWER = ("answer", "The speaker sounds calm and friendly about it.")


def _run(corpus: Path, cache: Path, url: str) -> tuple[Extraction, object]:
    sets = ["align.backend=provided", "describe.backend=openai", f"describe.base_url={url}", "describe.model=m",
            "describe.timeout_s=2", "describe.max_retries=1", "describe.concurrency=1"]
    ex = Extraction(load_config(None, sets, corpus=f"demo:{corpus}", cache=str(cache), workers=1, profile="offline"))
    return ex, ex.run(["describe"], progress=False)["describe"]


def test_endpoint_goes_away_mid_run_then_comes_back(tmp_path: Path) -> None:
    corpus = build_demo_corpus(tmp_path / "corpus", n=8, seed=5, progress=False)
    cache = tmp_path / "cache"
    holder: dict[str, ChatServer] = {}

    def dying(n: int, prompt: str):  # noqa: ANN202
        if n == 2:  # the third request is answered, then the endpoint disappears
            holder["s"].go_away_after_this_answer()
        return ANSWER

    with ChatServer(dying) as server:
        holder["s"] = server
        port = server.httpd.server_address[1]
        ex, report = _run(corpus, cache, server.url)
    assert (report.computed, report.failed) == (3, 5)  # type: ignore[attr-defined]
    errors = {f.error for f in ex.store.index.failures("describe")}
    assert len(errors) == 1 and next(iter(errors)).startswith("LLM endpoint unreachable after 2 attempts")
    ex.close()
    db = sqlite3.connect(cache / "_work" / "describe" / "answers.sqlite")
    assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 3  # only accepted answers
    db.close()

    with ChatServer(lambda n, p: ANSWER, port=port) as back:
        ex, report = _run(corpus, cache, back.url)
        assert (report.computed, report.reused, report.failed, len(back.requests)) == (5, 3, 0, 5)  # type: ignore[attr-defined]
        ex.close()
        ex, report = _run(corpus, cache, back.url)
        assert (report.computed, len(back.requests)) == (0, 5)  # type: ignore[attr-defined]
        ex.close()
