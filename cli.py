"""The `msf` command line: a thin typer app over library functions that return data.

Diagnostics and progress go to stderr; data (JSON, tables) to stdout.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MSF-SER feature extraction, caching and training.")
cache_app = typer.Typer(no_args_is_help=True, help="Check and tidy a cache.")
corpus_app = typer.Typer(no_args_is_help=True, help="Build corpora.")
app.add_typer(cache_app, name="cache")
app.add_typer(corpus_app, name="corpus")

OUT = Console()
ERR = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs


@contextmanager
def user_errors() -> Iterator[None]:
    """msf's own errors (a user mistake, an unusable input) become one clear line and exit 2; anything
    else is a bug in msf: it says so, with the traceback, and exits 1."""
    from msf.pipeline.errors import MsfError

    try:
        yield
    except MsfError as e:
        ERR.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - a bug: never dressed up as a user mistake
        import traceback

        ERR.print("[bold red]internal error[/] (a bug in msf; please report it with the traceback below):",
                  highlight=False)
        ERR.print(traceback.format_exc(), highlight=False, markup=False)
        raise typer.Exit(1) from None


def _report_problems(problems: list[Any]) -> None:
    if not problems:
        return
    ERR.print(f"[yellow]{len(problems)} manifest row(s) need attention:[/]")
    for p in problems[:20]:
        ERR.print(f"  {p}", highlight=False, markup=False)
    if len(problems) > 20:
        ERR.print(f"  … and {len(problems) - 20} more")


def _require_cache(cache: Path) -> None:
    from msf.pipeline.runner import require_cache

    require_cache(cache)


def _open_cache(cache: Path):  # -> tuple[Extraction, list[str]]
    from msf.pipeline.runner import Extraction

    return Extraction.from_cache(cache)


@app.command()
def extract(
    config: Optional[Path] = typer.Option(None, help="msf.toml to read (default: ./msf.toml if present)."),
    corpus: Optional[str] = typer.Option(None, help="Manifest path, or msp-podcast:PATH, iemocap:PATH, demo:PATH."),
    cache: Optional[Path] = typer.Option(None, help="Cache directory."),
    stage: List[str] = typer.Option([], "--stage", help="Stage to bring up to date (repeatable; default: all)."),
    profile: Optional[str] = typer.Option(None, help="offline | default."),
    set_: List[str] = typer.Option([], "--set", help="STAGE.KEY=VALUE parameter override (repeatable)."),
    workers: Optional[int] = typer.Option(None, help="Local Dask worker processes."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing Dask scheduler."),
    wait: float = typer.Option(0.0, help="Seconds to wait for another run holding the cache lock."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-stage summary as JSON (last line)."),
) -> None:
    """Bring the requested stages up to date in the cache, computing only what changed."""
    from msf.pipeline.config import load_config
    from msf.pipeline.runner import Extraction, reports_json
    from msf.pipeline.stage import REGISTRY, stage_class

    with user_errors():
        cfg = load_config(config, set_, corpus=corpus, cache=cache, profile=profile, workers=workers,
                          scheduler=scheduler)
        stage_class("audio")  # registers the built-in stages
        stages = stage or sorted(REGISTRY)
        for s in stages:
            stage_class(s)
        ex = Extraction(cfg)
        _report_problems(ex.corpus.problems)
        try:
            reports = ex.run(stages, progress=True, wait_s=wait)
        finally:
            ex.close()
    if as_json:
        print(reports_json(reports))
        return
    table = Table("stage", "computed", "reused", "failed", "seconds", title=f"cache {cfg.cache_dir()}")
    for name, r in reports.items():
        table.add_row(name, str(r.computed), str(r.reused), str(r.failed), f"{r.seconds:.1f}")
    OUT.print(table)
    if any(r.failed for r in reports.values()):
        ERR.print("[yellow]some utterances failed; `msf status --failed` lists them (they are retried next run)[/]")


@app.command()
def status(
    cache: Path = typer.Option(Path("cache"), help="Cache directory."),
    as_json: bool = typer.Option(False, "--json"),
    failed: bool = typer.Option(False, "--failed", help="List failed utterances with their errors."),
) -> None:
    """How much of each stage is fresh, stale, missing or failed for the corpus last extracted."""
    with user_errors():
        ex, stages = _open_cache(cache)
        try:
            counts = ex.status(stages)
            failures = ex.store.index.failures() if failed else []
            problems = ex.corpus_problems() if failed else []
        finally:
            ex.close()
    if as_json:
        data: dict[str, Any] = {"stages": counts}
        if failed:
            data["failed"] = [{"utterance": f.utt, "stage": f.stage, "error": f.error} for f in failures]
            data["corpus_problems"] = problems
        print(json.dumps(data))
        return
    table = Table("stage", "total", "fresh", "stale", "missing", "failed", title=f"cache {cache}")
    for name, c in counts.items():
        table.add_row(name, *(str(c[k]) for k in ("total", "fresh", "stale", "missing", "failed")))
    OUT.print(table)
    if failed:
        ft = Table("utterance", "stage", "error", title="failed")
        for f in failures:
            ft.add_row(f.utt, f.stage, f.error)
        OUT.print(ft)
        for p in problems:
            OUT.print(f"manifest: {p}", highlight=False, markup=False)


def _describe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return value.tolist()
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    return value


@app.command()
def show(
    utt: str = typer.Argument(..., help="Utterance id."),
    cache: Path = typer.Option(..., help="Cache directory."),
    stage: str = typer.Option(..., help="Stage name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One cached entry: arrays as shape and dtype, scalars and strings as values."""
    from msf.pipeline.shard_store import ShardStore

    with user_errors():
        _require_cache(cache)
        store = ShardStore(cache)
        try:
            record = {k: _describe(v) for k, v in store.read(stage, utt).items()}
        finally:
            store.close()
    if as_json:
        print(json.dumps(record))
        return
    table = Table("field", "value", title=f"{stage} / {utt}")
    for k, v in record.items():
        table.add_row(k, json.dumps(v) if not isinstance(v, str) else v)
    OUT.print(table)


@app.command()
def inspect(
    utt: str = typer.Argument(..., help="Utterance id."),
    cache: Path = typer.Option(..., help="Cache directory."),
    out: Path = typer.Option(..., help="PNG to write."),
) -> None:
    """Plot one utterance: waveform, F0 and intensity, word boundaries, emphasised words highlighted."""
    from msf.pipeline.emphasis_figure import draw_emphasis
    from msf.pipeline.errors import NotFound
    from msf.pipeline.stages.emphasis import EmphasisStage

    with user_errors():
        ex, _ = _open_cache(cache)
        try:
            u = next((u for u in ex.corpus.utterances if u.id == utt), None)
            if u is None:
                raise NotFound(f"no utterance {utt!r} in the corpus of {cache}")
            align, emphasis = ex.store.read("align", utt), ex.store.read("emphasis", utt)
            params = ex.config.params_for(EmphasisStage)
            from msf.pipeline.audio_io import load_waveform

            title = f"{utt}: {align['transcript']}"
            draw_emphasis(load_waveform(u.audio), align, emphasis, params, title, out)  # type: ignore[arg-type]
        finally:
            ex.close()
    OUT.print(f"wrote {out}")


@contextmanager
def _locked_store(cache: Path) -> Iterator[Any]:
    """The cache's ShardStore, under the writer lock, with user errors made clear."""
    from msf.pipeline.lock import CacheLock
    from msf.pipeline.shard_store import ShardStore

    with user_errors():
        _require_cache(cache)
        with CacheLock(cache):
            store = ShardStore(cache)
            try:
                yield store
            finally:
                store.close()


@cache_app.command("verify")
def cache_verify(cache: Path = typer.Option(..., help="Cache directory."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-read every entry against its checksum; corrupt ones are dropped so the next extract redoes them."""
    with _locked_store(cache) as store:
        report = store.verify()
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        OUT.print(f"checked {report.checked} entries: " + ("[green]all intact[/]" if report.ok else "[red]corruption found[/]"))
        for stage, shards in report.bad.items():
            for shard, utts in shards.items():
                why = report.errors.get(f"{stage}/{shard}", "checksum mismatch")
                OUT.print(f"  {stage}/{shard}: {len(utts)} entries ({why}): {', '.join(utts[:10])}"
                          + (" …" if len(utts) > 10 else ""), highlight=False, markup=False)
        if not report.ok:
            OUT.print("the affected entries were dropped from the index; `msf extract` recomputes them")
        if report.unreferenced:
            OUT.print(f"{len(report.unreferenced)} unreferenced shard file(s); `msf cache gc` removes them")
    if not report.ok:
        raise typer.Exit(1)


@cache_app.command("compact")
def cache_compact(cache: Path = typer.Option(...), shard_size: int = typer.Option(512)) -> None:
    """Rewrite live entries into full shards and delete the old ones."""
    with _locked_store(cache) as store:
        result = store.compact(shard_size)
    for stage, n in result.items():
        OUT.print(f"{stage}: {n} shard(s)")


@cache_app.command("gc")
def cache_gc(cache: Path = typer.Option(...)) -> None:
    """Delete shard files that no index entry references."""
    with _locked_store(cache) as store:
        removed = store.gc()
    OUT.print(f"removed {len(removed)} unreferenced file(s)")


@corpus_app.command("demo")
def corpus_demo(
    out: Path = typer.Argument(..., help="Directory to write manifest.csv, truth.jsonl and wavs/ into."),
    n: int = typer.Option(300, help="Number of utterances."),
    seed: int = typer.Option(0, help="Seed: the same seed gives byte-identical files."),
    workers: Optional[int] = typer.Option(None, help="Synthesis processes (default: all cores)."),
) -> None:
    """Synthesise the demo corpus with eSpeak NG: known word timings, emphasis and V/A/D labels."""
    import time

    from msf.pipeline.corpora.demo import build_demo_corpus

    with user_errors():
        t0 = time.perf_counter()
        build_demo_corpus(out, n=n, seed=seed, workers=workers)
    ERR.print(f"{n} utterances in {time.perf_counter() - t0:.1f} s -> {out}/manifest.csv")


@app.command()
def train(
    features: Path = typer.Option(..., help="Cache directory with the extracted features."),
    out: Path = typer.Option(..., help="Run directory (resumed when it holds the same run)."),
    sources: str = typer.Option("audio,gs,les,es", help="Comma-separated: audio, gs, les, es."),
    fusion: str = typer.Option("fm-moe", help="fm-moe or concat."),
    fold: int = typer.Option(None, help="IEMOCAP leave-one-session-out fold (1-5)."),
    device: str = typer.Option("cpu"),
    seed: int = typer.Option(0),
    epochs: int = typer.Option(60),
) -> None:
    """Train the MSF-SER model on cached features; writes RUN/metrics.json, curves and usage statistics."""
    from msf.trainer.train import TrainConfig, train as run_training

    with user_errors():
        cfg = TrainConfig(features=features, sources=sources, fusion=fusion, fold=fold, device=device, seed=seed,
                          epochs=epochs)
        metrics = run_training(cfg, out)
    print(json.dumps(metrics))


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="Run directory."),
    features: Path = typer.Option(..., help="Cache directory to evaluate on."),
    device: str = typer.Option("cpu"),
) -> None:
    """CCC of a trained run on the dev and test utterances of a cache."""
    from msf.trainer.data import FeatureSet, parse_sources
    from msf.trainer.train import evaluate as run_eval, load_run

    with user_errors():
        model, cfg = load_run(run, device)
        data = FeatureSet(features, parse_sources(cfg.sources), cfg.fold)
        result = {s: run_eval(model, data, s, device).ccc for s in ("dev", "test") if data.splits[s].ids}
    print(json.dumps(result))


@app.command()
def predict(
    audio: list[Path] = typer.Argument(..., help="Audio files."),
    run: Path = typer.Option(..., help="Run directory."),
    transcript: str = typer.Option(None, help="The words spoken (else Whisper transcribes them)."),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Valence, arousal and dominance for new audio, through the same stages as the run's features."""
    from msf.trainer.predict import predict as run_predict

    with user_errors():
        results = run_predict(audio, run, transcript, device, progress=not as_json)
    if as_json:
        print(json.dumps(results))
        return
    table = Table("audio", *TARGET_COLUMNS, title=f"predictions of {run}")
    for r in results:
        table.add_row(r["audio"], *([f"{r[t]:.2f}" for t in TARGET_COLUMNS] if "error" not in r
                                    else [r["error"], "", ""]))
    OUT.print(table)


TARGET_COLUMNS = ("valence", "arousal", "dominance")


@app.command()
def ablate(
    features: Path = typer.Option(..., help="Cache directory with the extracted features."),
    out: Path = typer.Option(..., help="Directory for the variants' runs and ablation.json."),
    fold: int = typer.Option(None, help="IEMOCAP fold."),
    device: str = typer.Option("cpu"),
    seed: int = typer.Option(0, help="First training seed."),
    seeds: int = typer.Option(3, help="Seeds per variant; the table gives their mean."),
) -> None:
    """The five variants (audio, audio+gs, audio+gs+les, full, concat): ablation.json and a table."""
    from msf.trainer.ablate import ablate as run_ablation, table

    with user_errors():
        results = run_ablation(features, out, seeds=seeds, seed=seed, fold=fold, device=device)
    OUT.print(table(results))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory."),
    n: int = typer.Option(300, help="Utterances in the demo corpus."),
    seed: int = typer.Option(0),
    workers: int = typer.Option(2, help="Local Dask workers for extraction."),
) -> None:
    """The whole product on a synthetic corpus: build it, extract with the offline profile, report."""
    from msf.trainer.demo import run_demo

    with user_errors():
        run_demo(out, n=n, seed=seed, workers=workers)


@app.callback()
def options(verbose: bool = typer.Option(False, "--verbose", envvar="MSF_VERBOSE",
                                          help="Show the libraries' own logs, warnings and progress bars.")) -> None:
    """MSF-SER feature extraction, caching and training."""
    quiet_libraries(not verbose)


def quiet_libraries(quiet: bool) -> None:
    """What a user reads on stderr is msf's own: transformers' loading bars, Hugging Face progress bars,
    Python warnings from torch and friends are off unless asked for. Environment variables, so the
    Dask worker processes started later make the same choice; a user's own settings win when quiet."""
    import os
    import warnings

    settings = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    for key, value in settings.items():
        if quiet:
            os.environ.setdefault(key, value)
        else:
            os.environ.pop(key, None)
    warnings.simplefilter("ignore" if quiet else "default")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        ERR.print("interrupted; everything committed so far is kept and the next run resumes from it")
        sys.exit(130)


if __name__ == "__main__":
    main()
