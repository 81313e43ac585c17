"""The `msf` command line: a thin typer app over library functions that return data.

Diagnostics and progress go to stderr; data (JSON, tables) to stdout.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, NoReturn, Optional

import numpy as np
import pydantic
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msf.pipeline.corpus import TARGETS
from msf.pipeline.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE, UsageError

# Click's own help layout: options with readable metavars (FILE, N, A,B), literal brackets ("[train]"),
# whole lines in 100 columns; typer's rich panels label options with Python types and eat brackets as markup.
# Typer (0.2x) also prints an argument's Python type after its name ("AUDIO... <list[Path]>"); the
# argument's own name says what it takes.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
HELP = {"rich_markup_mode": None, "context_settings": {"max_content_width": 100, "help_option_names": ["-h", "--help"]}}
app = typer.Typer(no_args_is_help=True, add_completion=False, help="MSF-SER feature extraction, caching and training.",
                  **HELP)  # type: ignore[arg-type]
cache_app = typer.Typer(no_args_is_help=True, help="Check and tidy a cache.", **HELP)  # type: ignore[arg-type]
corpus_app = typer.Typer(no_args_is_help=True, help="Build corpora.", **HELP)  # type: ignore[arg-type]
app.add_typer(cache_app, name="cache")
app.add_typer(corpus_app, name="corpus")

OUT = Console()
JSON_HELP = "Print the result as one JSON object (the last stdout line)."
LABELS_HELP = "A manifest to take labels and splits from (matched by id)."
DEVICE_HELP = "cpu, cuda, cuda:N or mps."
RUNS_HELP = ("Run directory; several (repeat --run), or an ensemble folder (msf ensemble): their predictions "
             "averaged per target.")
ERR = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs


@contextmanager
def user_errors() -> Iterator[None]:
    """msf's own errors (a user mistake, an unusable input) become one clear line and exit 2; anything
    else is a bug in msf: it says so, with the traceback, and exits 1."""
    from msf.pipeline.errors import MsfError

    try:
        yield
    except MsfError as e:
        ERR.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except pydantic.ValidationError as e:  # the trainer's settings, checked when TrainConfig is built
        from msf.pipeline.config import validation_problems
        from msf.trainer.train import TrainConfig

        model = TrainConfig if e.title == TrainConfig.__name__ else None
        ERR.print(f"[bold red]error:[/] settings: {escape(validation_problems(e, model))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as e:
        if (why := _path_problem(e)) is None:
            _internal_error()
        ERR.print(f"[bold red]error:[/] {escape(why)}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception:  # noqa: BLE001 - a bug: never dressed up as a user mistake
        _internal_error()


def _path_problem(e: OSError) -> str | None:
    """What the user can fix about a path given to msf (a file where a folder goes, no permission, a
    full or read-only disk), in one line; None for any other OSError, which stays a bug."""
    import errno

    where = f" {e.filename}" if e.filename else ""
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        return f"cannot create the folder{where}: a file stands where a folder is needed ({e.strerror})"
    if isinstance(e, (PermissionError, IsADirectoryError)) or e.errno == errno.EROFS:
        return f"cannot use{where}: {e.strerror}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left writing{where} ({e.strerror}); everything committed before it is kept: "
                "free some space (`msf cache gc` removes unreferenced entries) and rerun")
    return None


def _internal_error() -> NoReturn:
    import traceback

    ERR.print("[bold red]internal error[/] (a bug in msf; please report it with the traceback below):",
              highlight=False)
    ERR.print(traceback.format_exc(), highlight=False, markup=False)
    raise typer.Exit(EXIT_BUG) from None


def renamed(new: Any, old: Any, old_flag: str, new_flag: str) -> Any:
    """An option's old spelling, kept for one release: it works, with a warning naming the new one."""
    if old is None:
        return new
    if new is not None:
        raise UsageError(f"{old_flag} is the old name of {new_flag}: give {new_flag} only")
    ERR.print(f"[yellow]warning:[/] {old_flag} is now {new_flag}; the old form works until the next release",
              highlight=False)
    return old


# Commands that took their output folder as an argument before --out: one extra argument is that folder.
OLD_OUT = {"allow_extra_args": True, **HELP["context_settings"]}  # type: ignore[dict-item]


def old_positional(ctx: typer.Context) -> Optional[Path]:
    if len(ctx.args) > 1 or any(a.startswith("-") for a in ctx.args):
        raise UsageError(f"unexpected arguments: {' '.join(ctx.args)}")
    return Path(ctx.args[0]) if ctx.args else None


def print_markdown_tables(text: str) -> None:
    """Markdown tables (ablation.md's) as terminal tables that fit the terminal: a narrow one wraps
    each row's cells within their columns, never a header line in the middle; other lines as they are."""
    block: list[list[str]] = []

    def flush() -> None:
        if block:
            table = Table(box=None, header_style="bold")
            for k, name in enumerate(block[0]):  # the first column (the variant) whole, the others folded
                table.add_column(name, no_wrap=k == 0, overflow="fold", min_width=max(map(len, name.split() or [""])))
            for cells in block[2:]:  # block[1] is the |---| rule
                table.add_row(*cells)
            OUT.print(table)
            block.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            flush()
            OUT.print(line, highlight=False, markup=False)
    flush()


def required_out(out: Optional[Path]) -> Path:
    if out is None:
        raise UsageError("give the folder to write with --out DIR")
    return out


def _report_problems(problems: list[Any]) -> None:
    if not problems:
        return
    ERR.print(f"[yellow]{len(problems)} manifest row(s) need attention:[/]")
    for p in problems[:20]:
        ERR.print(f"  {p}", highlight=False, markup=False)
    if len(problems) > 20:
        ERR.print(f"  … and {len(problems) - 20} more")


@app.command()
def extract(
    config: Optional[Path] = typer.Option(None, metavar="FILE",
                                          help="msf.toml to read (default: ./msf.toml if present)."),
    corpus: Optional[str] = typer.Option(None, metavar="SPEC",
                                         help="Manifest path, or msp-podcast:PATH, iemocap:PATH, demo:PATH."),
    cache: Optional[Path] = typer.Option(None, metavar="DIR", help="Cache directory."),
    stage: List[str] = typer.Option([], "--stage", metavar="STAGE",
                                    help="Stage to bring up to date (repeatable; default: all)."),
    profile: Optional[str] = typer.Option(None, metavar="offline|default", help="offline | default."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="STAGE.KEY=VALUE parameter override (repeatable)."),
    name: Optional[str] = typer.Option(None, metavar="NAME",
                                       help="Feature-set name to record these settings under (default: default)."),
    workers: Optional[int] = typer.Option(None, metavar="N", help="Local Dask worker processes."),
    scheduler: Optional[str] = typer.Option(None, metavar="ADDRESS", help="Address of an existing Dask scheduler."),
    wait: float = typer.Option(0.0, metavar="SECONDS", help="Seconds to wait for another run holding the cache lock."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be computed, why, and its cost; compute "
                                                          "and write nothing."),
    calibrate: int = typer.Option(5, metavar="N",
                                  help="With --dry-run: utterances of the corpus to time the stages on (0: none)."),
    force: bool = typer.Option(False, "--force", help="Run even when the estimate exceeds the free disk space."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-stage summary as JSON (last line)."),
) -> None:
    """Bring the requested stages up to date in the cache, computing only what changed."""
    from msf.pipeline.config import load_config
    from msf.pipeline.run.extraction import Extraction, preflight, reports_json
    from msf.pipeline.stage import REGISTRY, stage_class

    with user_errors():
        cfg = load_config(config, set_, corpus=corpus, cache=cache, profile=profile, workers=workers,
                          scheduler=scheduler, name=name)
        stage_class("audio")  # registers the built-in stages
        stages = stage or sorted(REGISTRY)
        for s in stages:
            stage_class(s)
        if not dry_run:  # before the cache is created: a run that cannot start leaves nothing
            preflight(cfg, stages)
        ex = Extraction(cfg, dry_run=dry_run)
        try:
            if dry_run:
                return _print_dry_run(ex, stages, calibrate, as_json)
            reports = ex.run(stages, progress=True, wait_s=wait, force=force)
        finally:
            _report_problems(ex.corpus_problems())
            ex.close()
    if as_json:
        print(reports_json(reports))
    else:
        table = Table("stage", "computed", "reused", "failed", "seconds",
                      title=f"cache {cfg.cache_dir()}, feature set {cfg.name!r}")
        for stage_name, r in reports.items():
            table.add_row(stage_name, str(r.computed), str(r.reused), str(r.failed), f"{r.seconds:.1f}")
        OUT.print(table)
    failed = {s: r.failed for s, r in reports.items() if r.failed}
    if failed:  # one line, and an exit status of its own: a script can tell a partial run from a clean one
        ERR.print(f"[yellow]finished with failures[/] ({', '.join(f'{s} {n}' for s, n in failed.items())}): "
                  f"`msf status --cache {escape(str(cfg.cache_dir()))} --failed` lists each root cause once; "
                  "they are retried next run", highlight=False)
        raise typer.Exit(EXIT_PARTIAL)


def _print_dry_run(ex: Any, stages: list[str], calibrate: int, as_json: bool) -> None:
    from msf.pipeline.run.costs import free_bytes, human_bytes

    from msf.pipeline.run.requirements import MissingRequirements

    needs = ex.requirements(stages)
    estimates = ex.dry_run(stages, calibrate=calibrate)
    free = free_bytes(ex.root)
    missing = [r for r in needs if r.blocking]
    if as_json:
        print(json.dumps({"stages": {k: e.to_dict() for k, e in estimates.items()}, "free_bytes": free,
                          "calibrated_on": calibrate, "workers": ex.config.workers,
                          "requirements": [asdict(r) for r in needs]}))
    else:
        table = Table("stage", "to compute", "reused", "audio", "est. size", "est. time", "why",
                      title=f"dry run: cache {ex.root}, feature set {ex.config.name!r} (nothing computed or written)")
        unknown = "unknown until calibrated" if calibrate else "unknown (--calibrate 0)"
        for stage_name, e in estimates.items():
            why = "; ".join(f"{r} ({n:,})" for r, n in list(e.why.items())[:3])
            blocked = f"cannot run: {e.blocked} (below)" if e.blocked else None
            table.add_row(stage_name, f"{e.to_compute:,}", f"{e.reused:,}", f"{e.audio_seconds / 3600:.2f} h",
                          "?" if e.bytes is None else human_bytes(e.bytes),
                          "?" if e.seconds is None else f"{e.seconds / 60:.1f} min", blocked or why)
        OUT.print(table)
        known = [e.bytes for e in estimates.values() if e.bytes is not None]
        todo = [s for s, e in estimates.items() if e.bytes is None and e.to_compute]
        why_unknown = "unknown: a model or setting is missing" if missing else unknown
        size = (f"about {human_bytes(sum(known))} to write" if not todo
                else f"size {why_unknown} ({', '.join(todo)})" if not known
                else f"about {human_bytes(sum(known))} to write, and {', '.join(todo)} {why_unknown}")
        OUT.print(f"{size}; {human_bytes(free)} free on the cache's filesystem; time on {ex.config.workers} "
                  f"worker(s), from a calibration on {calibrate} utterance(s) of this corpus", highlight=False)
        for stage_name, e in estimates.items():
            if e.sends is not None and not e.blocked:
                untimed = "" if e.sends.loopback else "; not calibrated, so nothing was sent by this dry run"
                OUT.print(f"{stage_name} would send {e.sends}{untimed}", highlight=False)
        OUT.print("needs:", highlight=False)
        for r in needs:
            OUT.print(f"  {r.line()}", highlight=False, markup=False)
    if missing:  # planned in full above; a real run would stop before any work with all of them
        raise UsageError(f"{len(missing)} thing(s) missing (listed under `needs`): a run would stop before "
                         "computing anything" if not as_json else str(MissingRequirements(missing)))


@app.command()
def status(
    cache: Path = typer.Option(Path("cache"), metavar="DIR", help="Cache directory."),
    name: str = typer.Option("default", metavar="NAME", help="Feature set."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    failed: bool = typer.Option(False, "--failed", help="List failed utterances with their errors."),
    why: bool = typer.Option(False, "--why", help="Group stale and missing entries by reason."),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="Compare with the settings of this msf.toml."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Compare with these settings (STAGE.KEY=VALUE)."),
    corpus: Optional[str] = typer.Option(None, metavar="SPEC",
                                         help="Compare with this corpus (its audio is hashed again)."),
) -> None:
    """How much of each stage of a feature set is fresh, stale, missing or failed, and the bytes it takes.
    Needs only the cache; --config/--set/--corpus compare it with other settings or a changed corpus."""
    from msf.pipeline.cache.index import root_causes
    from msf.pipeline.cache.view import open_view
    from msf.pipeline.run.costs import human_bytes

    with user_errors():
        view = open_view(cache, name, config, set_, corpus)
        try:
            counts = view.status(why=why)
            failures = view.failures() if failed else []
            problems = view.corpus_problems() if failed else []
            sets = view.store.index.feature_sets()
        finally:
            view.close()
    if as_json:
        data: dict[str, Any] = {"stages": counts, "name": name, "feature_sets": sets}
        if failed:
            data["failed"] = [{"utterance": f.utt, "stage": f.stage, "kind": f.kind, "error": f.error, "blocked": b}
                              for f, b in root_causes(failures)]
            data["corpus_problems"] = problems
        print(json.dumps(data))
        return
    table = Table("stage", "total", "fresh", "stale", "missing", "failed", "size", "all variants",
                  title=f"cache {cache}, feature set {name!r}")
    for stage_name, c in counts.items():
        table.add_row(stage_name, *(str(c[k]) for k in ("total", "fresh", "stale", "missing", "failed")),
                      human_bytes(c["bytes"]), human_bytes(c["bytes_all"]))
    OUT.print(table)
    if len(sets) > 1:
        OUT.print(f"feature sets in this cache: {', '.join(sets)}", highlight=False)
    if why:
        for stage_name, c in counts.items():
            for reason, n in c["why"].items():
                OUT.print(f"  {stage_name}: {reason} ({n:,})", highlight=False, markup=False)
    if failed:
        roots = root_causes(failures)
        OUT.print(f"failed: {len(roots)} root cause(s), one line each (utterance, stage, kind: error; what it blocked)",
                  highlight=False)
        for f, blocked in roots:  # whole lines, for grep
            also = f"; blocked {', '.join(blocked)}" if blocked else ""
            OUT.print(f"  {f.utt}  {f.stage}  {f.kind}: {f.error}{also}", highlight=False, markup=False, soft_wrap=True)
        for p in problems:  # a missing file is kept as a row: its failure is listed above, once
            if not p.endswith(" (kept)"):
                OUT.print(f"manifest: {p}", highlight=False, markup=False)


def _describe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "U":
            return value.tolist()
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    return value


@app.command()
def show(
    utt: str = typer.Argument(..., metavar="UTT", help="Utterance id."),
    cache: Path = typer.Option(..., metavar="DIR", help="Cache directory."),
    stage: str = typer.Option(..., metavar="STAGE", help="Stage name."),
    name: str = typer.Option("default", metavar="NAME", help="Feature set."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One cached entry (the feature set's, else the newest): arrays as shape and dtype, scalars and
    strings as values."""
    from msf.pipeline.cache.view import open_view

    with user_errors():
        view = open_view(cache, name)
        try:
            rec, stale = view.read(stage, utt)
        finally:
            view.close()
    record = {k: _describe(v) for k, v in rec.items()}
    if stale:
        ERR.print(f"[yellow]not the fresh entry of feature set {name!r} ({stale}); showing the newest one[/]",
                  highlight=False)
    if as_json:
        print(json.dumps(record))
        return
    table = Table("field", "value", title=f"{stage} / {utt}")
    for k, v in record.items():
        table.add_row(k, json.dumps(v) if not isinstance(v, str) else v)
    OUT.print(table)


@app.command()
def inspect(
    utt: str = typer.Argument(..., metavar="UTT", help="Utterance id."),
    cache: Path = typer.Option(..., metavar="DIR", help="Cache directory."),
    out: Path = typer.Option(..., metavar="FILE.png", help="PNG to write."),
    name: str = typer.Option("default", metavar="NAME", help="Feature set."),
) -> None:
    """Plot one utterance: waveform, F0 and intensity, word boundaries, emphasised words highlighted.
    Without the audio (a copied cache), the words and their cached prosody only."""
    from msf.pipeline.emphasis_figure import inspect_utterance

    with user_errors():
        had_audio = inspect_utterance(cache, name, utt, out)
    OUT.print(f"wrote {out}" + ("" if had_audio else " (audio not found: words and cached prosody only)"))


@contextmanager
def _locked_store(cache: Path) -> Iterator[Any]:
    """The cache's store under the writer lock (`locked_store`), with user errors made clear."""
    from msf.pipeline.cache.view import locked_store

    with user_errors(), locked_store(cache) as store:
        yield store


@cache_app.command("verify")
def cache_verify(cache: Path = typer.Option(..., metavar="DIR", help="Cache directory."),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
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
        raise typer.Exit(EXIT_PARTIAL)


@cache_app.command("compact")
def cache_compact(cache: Path = typer.Option(..., metavar="DIR", help="Cache directory."),
                  shard_size: int = typer.Option(512, metavar="N", help="Entries per rewritten shard.")) -> None:
    """Rewrite the entries into full shards and delete the old ones (reclaims what gc freed inside shards)."""
    with _locked_store(cache) as store:
        result = store.compact(shard_size)
    for stage, n in result.items():
        OUT.print(f"{stage}: {n} shard(s)")


@cache_app.command("gc")
def cache_gc(cache: Path = typer.Option(..., metavar="DIR",
                                        help="Cache directory."), yes: bool = typer.Option(False, "--yes", help="Remove (default: show)."),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Remove the entries no named feature set references (earlier variants, dropped utterances) and the
    shard files left empty. Shows what it would remove unless --yes."""
    from msf.pipeline.cache.gc import collect_garbage, gc_plan
    from msf.pipeline.run.costs import human_bytes

    with _locked_store(cache) as store:
        plan = gc_plan(store)
        removed = collect_garbage(store, plan) if yes else None
    if as_json:
        print(json.dumps({**plan.to_dict(), "removed": removed is not None}))
        return
    d = plan.to_dict()
    verb = "removed" if yes else "would remove"
    OUT.print(f"{verb} {d['entries']:,} entries no feature set references ({human_bytes(d['entry_bytes'])}) "
              f"and {d['files']} shard file(s) ({human_bytes(d['file_bytes'])} of disk)"
              + (f"; by stage: {', '.join(f'{s} {n:,}' for s, n in d['by_stage'].items())}" if d["by_stage"] else ""),
              highlight=False)
    if d["kept_in_shared_shards"]:
        OUT.print(f"{human_bytes(d['kept_in_shared_shards'])} of them sit in shards that also hold kept entries: "
                  "`msf cache compact` reclaims that space", highlight=False)
    if not yes:
        OUT.print("nothing removed: run `msf cache gc --yes` to remove it", highlight=False)


@cache_app.command("forget")
def cache_forget(name: str = typer.Argument(..., metavar="NAME", help="Feature set to forget."),
                 cache: Path = typer.Option(..., metavar="DIR", help="Cache directory.")) -> None:
    """Stop keeping a named feature set: `msf cache gc` may then remove the entries only it used."""
    from msf.pipeline.errors import NotFound

    with _locked_store(cache) as store:
        if not store.index.forget_set(name):
            raise NotFound(f"no feature set {name!r} in {cache}")
    OUT.print(f"forgot feature set {name!r}; `msf cache gc` shows what it frees")


@corpus_app.command("demo", context_settings=OLD_OUT)
def corpus_demo(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, metavar="DIR",
                                       help="Directory to write manifest.csv, truth.jsonl and wavs/ into."),
    n: int = typer.Option(300, metavar="N", help="Number of utterances."),
    seed: int = typer.Option(0, metavar="S", help="Seed: the same seed gives byte-identical files."),
    workers: Optional[int] = typer.Option(None, metavar="N", help="Synthesis processes (default: all cores)."),
) -> None:
    """Synthesise the demo corpus with eSpeak NG: known word timings, emphasis and V/A/D labels."""
    import time

    from msf.pipeline.corpora.demo import build_demo_corpus

    with user_errors():
        out = required_out(renamed(out, old_positional(ctx), "the output folder as an argument", "--out DIR"))
        t0 = time.perf_counter()
        build_demo_corpus(out, n=n, seed=seed, workers=workers)
    ERR.print(f"{n} utterances in {time.perf_counter() - t0:.1f} s -> {escape(str(out))}/manifest.csv")


@app.command(context_settings=OLD_OUT)
def export(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, metavar="DIR",
                                       help="Directory to write the .npy files and manifest.csv into."),
    features: Path = typer.Option(..., metavar="DIR", help="Cache directory."),
    name: str = typer.Option("default", metavar="NAME", help="The cache's feature set."),
    fmt: str = typer.Option("npy", "--format", metavar="npy", help="npy: one file per utterance and field."),
    fields: Optional[str] = typer.Option(None, metavar="F,F,...",
                                         help="Comma-separated fields (default: acoustic.frames, "
                                         "global.embedding, local.embedding, extended.embedding where extracted)."),
    layers: Optional[str] = typer.Option(None, metavar="L,L,...",
                                         help="Hidden states of acoustic.frames to export, e.g. 6,12."),
) -> None:
    """One .npy per utterance and field plus manifest.csv (the layout EmoBox and s3prl consume);
    streamed, and resumable: a rerun writes only the files that are missing."""
    from msf.pipeline.cache.export import export_npy
    from msf.pipeline.cache.view import CacheView

    with user_errors():
        out = required_out(renamed(out, old_positional(ctx), "the output folder as an argument", "--out DIR"))
        if fmt != "npy":
            raise UsageError(f"--format {fmt!r}: msf exports --format npy")
        with CacheView.open(features, name) as cache:
            done = export_npy(cache, out, fields.split(",") if fields else None, parse_layers(layers))
    ERR.print(f"{done['written']} written, {done['kept']} kept ({done['utterances']} utterances x {done['fields']} "
              f"fields) -> {escape(str(out))}/manifest.csv")


@corpus_app.command("layout", context_settings=OLD_OUT)
def corpus_layout(
    ctx: typer.Context,
    demo: Path = typer.Argument(..., metavar="DEMO", help="A demo corpus (msf corpus demo DIR)."),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="Directory to lay it out in."),
    kind: str = typer.Option(..., "--as", metavar="msp-podcast|iemocap", help="msp-podcast or iemocap."),
) -> None:
    """The demo corpus laid out exactly as MSP-Podcast or IEMOCAP ship (splits, unknown speakers, a long
    segment, IEMOCAP's markers), to try the paper's protocol: then `--corpus msp-podcast:OUT` or
    `iemocap:OUT`."""
    from msf.pipeline.corpora.layouts import lay_out

    with user_errors():
        out = required_out(renamed(out, old_positional(ctx), "the output folder as an argument", "--out DIR"))
        lay_out(demo, out, kind)
    ERR.print(f"{kind} layout -> {escape(str(out))} (use --corpus {kind}:{escape(str(out))})")


AVERAGE_HELP = ("Evaluate and keep a moving average of the weights over about this many epochs (0: off; "
                "default: the trainer's, docs/trainer.md).")


def parse_layers(spec: str | None) -> list[int] | None:

    if spec is None:
        return None
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layers takes hidden-state numbers separated by commas (e.g. 6,12), not {spec!r}") from None


TRAIN_SET_HELP = ("train.KEY=VALUE for any training setting (hidden, lr, batch_size, experts, dropout, patience, "
                  "text_targets, ...; repeatable); msf.toml's [train] section gives them too.")


@app.command()
def train(
    features: Path = typer.Option(..., metavar="DIR", help="Cache directory with the extracted features."),
    out: Path = typer.Option(..., metavar="DIR", help="Run directory (resumed when it holds the same run)."),
    name: Optional[str] = typer.Option(None, metavar="NAME",
                                       help="The cache's feature set to train on (default: default)."),
    sources: Optional[str] = typer.Option(None, metavar="A,B,...",
                                          help="Comma-separated: audio, gs, les, es, prosody (pitch, loudness "
                                          "and rate relative to the speaker, from emphasis). Default "
                                          "audio,gs,les,es,prosody."),
    fusion: Optional[str] = typer.Option(None, metavar="fm-moe|concat", help="fm-moe (default) or concat."),
    fold: int = typer.Option(None, metavar="K", help="IEMOCAP leave-one-session-out fold (1-5)."),
    folds: Optional[str] = typer.Option(None, metavar="all|K,K,...",
                                        help="`all` (or e.g. 1,3): every IEMOCAP fold in OUT/fold-K, then "
                                        "OUT/folds.json (mean, sd and pooled CCC over folds)."),
    labels: Optional[str] = typer.Option(None, metavar="MANIFEST", help=LABELS_HELP),
    corpus_old: Optional[str] = typer.Option(None, "--corpus", hidden=True),
    device: Optional[str] = typer.Option(None, metavar="DEVICE", help=f"{DEVICE_HELP} Default: cpu."),
    seed: Optional[int] = typer.Option(None, metavar="S",
                                       help="Training seed (default 0): initial weights, batch order, dropout."),
    epochs: Optional[int] = typer.Option(None, metavar="N", help="Default 60."),
    speaker_norm: Optional[bool] = typer.Option(None, "--speaker-norm/--no-speaker-norm", help="Standardise the "
                                                "acoustic frames per speaker (on by default; population statistics for "
                                                "speakers without enough audio)."),
    preset: Optional[str] = typer.Option(None, metavar="msf|paper",
                                         help="msf (the default settings) or paper (the model as the paper "
                                         "describes it; docs/trainer.md)."),
    average_epochs: Optional[float] = typer.Option(None, metavar="EPOCHS", help=AVERAGE_HELP),
    max_batch_frames: Optional[int] = typer.Option(None, metavar="N",
                                                   help="At most this many padded frames (utterances x the "
                                                              "longest) per batch; 0: no bound (default 32000)."),
    bucket: Optional[bool] = typer.Option(None, "--bucket", help="Training batches of similar lengths (less padding; "
                                          "off by default: it cost CCC on the demo, docs/trainer.md)."),
    layers: Optional[str] = typer.Option(None, metavar="L,L,...",
                                         help="Hidden states of the cached frames to train on, e.g. 6,12 "
                                         "(a cache extracted with acoustic.layers=\"all\"; nothing re-extracted)."),
    require_full_coverage: Optional[bool] = typer.Option(None, "--require-full-coverage", help="Fail before "
                                                         "training when a scored split lost a labelled utterance."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=TRAIN_SET_HELP),
) -> None:
    """Train the MSF-SER model on cached features; writes RUN/metrics.json, curves, usage statistics and
    RUN/dropped.csv (what was not trained or scored on, and why)."""
    from msf.trainer.folds import chosen_folds, train_folds
    from msf.trainer.train import TrainConfig, train as run_training, train_settings

    with user_errors():
        cfg = TrainConfig(features=features, **train_settings(
            set_, preset=preset, name=name, labels=renamed(labels, corpus_old, "--corpus", "--labels"), sources=sources, fusion=fusion, fold=fold, device=device, seed=seed,
            epochs=epochs, speaker_norm=speaker_norm, bucket=bucket, average_epochs=average_epochs,
            max_batch_frames=max_batch_frames, layers=parse_layers(layers), require_full_coverage=require_full_coverage))
        if folds is None:
            print(json.dumps(run_training(cfg, out)))
            return
        chosen = chosen_folds(folds, fold, features, cfg.name, "trains")
        summary = train_folds(chosen, out, lambda k, o: run_training(cfg.model_copy(update={"fold": k}), o))
    print(json.dumps(summary))


@app.command()
def evaluate(
    run: List[Path] = typer.Option(..., metavar="DIR", help=RUNS_HELP),
    features: Path = typer.Option(..., metavar="DIR", help="Cache directory to evaluate on."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="Feature set (default: the run's)."),
    labels: Optional[str] = typer.Option(None, metavar="MANIFEST", help=LABELS_HELP),
    corpus_old: Optional[str] = typer.Option(None, "--corpus", hidden=True),
    device: str = typer.Option("cpu", metavar="DEVICE", help=DEVICE_HELP),
) -> None:
    """CCC of a trained run (or an ensemble of runs) on the dev and test utterances of a cache. Features
    made with other settings than the run's (another aligner, say) are allowed, and named on stderr."""
    from msf.trainer.ensemble import as_ensemble, fold_ensembles, score, score_folds
    from msf.trainer.train import evaluate_run

    with user_errors():
        labels = renamed(labels, corpus_old, "--corpus", "--labels")
        if len(run) > 1 or not (run[0] / "config.json").is_file():  # an ensemble: runs, or an ensemble folder
            folds = fold_ensembles(run)
            result = score_folds(folds, features, device, name, labels) if folds else \
                score(as_ensemble(run), features, device, name, labels)
        else:
            result, changes = evaluate_run(run[0], features, name, labels, device)
            if changes:
                ERR.print("note: these features differ from the run's training features in "
                          + "; ".join(changes), highlight=False, markup=False)
    print(json.dumps(result))


@app.command()
def predict(
    inputs: Optional[List[Path]] = typer.Argument(None, metavar="AUDIO...", help="Audio files, folders of audio, or manifests (.csv/"
                                                  ".jsonl: id, audio, optional speaker, transcript, gender)."),
    run: List[Path] = typer.Option(..., metavar="DIR", help=RUNS_HELP),
    features: Optional[Path] = typer.Option(None, metavar="DIR",
                                            help="Predict a split of this cache instead of audio files "
                                            "(with --split and --out)."),
    split: Optional[str] = typer.Option(None, metavar="SPLIT",
                                        help="With --features: the split (test, test2, test3, ...)."),
    transcript: str = typer.Option(None, metavar="TEXT",
                                   help="The words spoken in the one file given (else Whisper transcribes)."),
    device: str = typer.Option("cpu", metavar="DEVICE", help=DEVICE_HELP),
    out: Optional[Path] = typer.Option(None, metavar="FILE",
                                       help="Write one row per file as it is predicted (.csv or .jsonl)."),
    keep_features: Optional[Path] = typer.Option(None, metavar="DIR",
                                                 help="Keep the features extracted from the audio in this "
                                                 "cache: a rerun (after a crash, or with another run's model) "
                                                 "recomputes nothing it holds."),
    cache_old: Optional[Path] = typer.Option(None, "--cache", hidden=True),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="STAGE.KEY=VALUE for settings that cannot change a result "
                                   "(e.g. acoustic.device=cuda)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Valence, arousal and dominance for new audio, through the same stages as the run's features. Each
    file's prediction depends on that file alone (and the speaker and transcript given)."""
    from msf.trainer.ensemble import as_ensemble
    from msf.trainer.predict import parse_volatile, predict as run_predict, predict_cached, predict_ensemble

    with user_errors():
        ensemble = as_ensemble(run) if len(run) > 1 or not (run[0] / "config.json").is_file() else None
        if features is not None:
            if inputs or split is None or out is None:
                raise UsageError("--features predicts a split of a cache: give --split and --out, and no audio")
            n = predict_cached(ensemble or as_ensemble(run), features, split, out, device)
            ERR.print(f"{n} predictions of {split} -> {escape(str(out))}")
            return
        if not inputs:
            raise UsageError("give audio files, folders or manifests to predict (or --features CACHE --split S)")
        keep = renamed(keep_features, cache_old, "--cache", "--keep-features")
        if ensemble is not None:
            results = predict_ensemble(inputs, ensemble, transcript, device, progress=not as_json, cache=keep,
                                       out=out, settings=parse_volatile(set_))
        else:
            results = run_predict(inputs, run[0], transcript, device, progress=not as_json, cache=keep, out=out,
                                  settings=parse_volatile(set_))
    errors = sum("error" in r for r in results)
    if as_json:
        print(json.dumps(results))
    elif out is not None and len(results) > 20:
        OUT.print(f"{len(results)} predictions in {out} ({errors} with an error)")
    else:
        table = Table("audio", *TARGETS, title=f"predictions of {', '.join(map(str, run))}")
        for r in results:
            table.add_row(r["audio"], *([f"{r[t]:.2f}" for t in TARGETS] if "error" not in r
                                        else [r["error"], "", ""]))
        OUT.print(table)
    if errors:
        ERR.print(f"[yellow]finished with failures[/]: {errors} of {len(results)} file(s) have no prediction "
                  "(their `error` says why)", highlight=False)
        raise typer.Exit(EXIT_PARTIAL)




@app.command()
def ablate(
    features: Path = typer.Option(..., metavar="DIR", help="Cache directory with the extracted features."),
    out: Path = typer.Option(..., metavar="DIR", help="Directory for the variants' runs and ablation.json."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="The cache's feature set (default: default)."),
    labels: Optional[str] = typer.Option(None, metavar="MANIFEST", help=LABELS_HELP),
    corpus_old: Optional[str] = typer.Option(None, "--corpus", hidden=True),
    fold: int = typer.Option(None, metavar="K", help="IEMOCAP fold."),
    folds: Optional[str] = typer.Option(None, metavar="all|K,K,...",
                                        help="`all` (or e.g. 1,3): the ablation of every IEMOCAP fold in "
                                        "OUT/fold-K, then OUT/folds.json and a table (mean ± sd, pooled CCC)."),
    device: Optional[str] = typer.Option(None, metavar="DEVICE", help=f"{DEVICE_HELP} Default: cpu."),
    seed: int = typer.Option(0, metavar="S", help="First training seed."),
    seeds: int = typer.Option(3, metavar="N", help="Seeds per variant; the table gives their mean and their ensemble."),
    epochs: Optional[int] = typer.Option(None, metavar="N", help="Epochs per run (default 60)."),
    variants: Optional[str] = typer.Option(None, metavar="A,B,...",
                                           help="Some of the variants, e.g. audio,full,concat (default: all "
                                           "five)."),
    prosody: Optional[bool] = typer.Option(None, "--prosody/--no-prosody", help="Add the speaker-relative prosody "
                                           "source to every variant (on with msf's settings, off with the paper's)."),
    speaker_norm: Optional[bool] = typer.Option(None, "--speaker-norm/--no-speaker-norm", help="Standardise the "
                                                "acoustic frames per speaker (on by default; docs/trainer.md)."),
    preset: Optional[str] = typer.Option(None, metavar="msf|paper",
                                         help="msf (the default settings) or paper (the model as the paper "
                                         "describes it; docs/trainer.md)."),
    average_epochs: Optional[float] = typer.Option(None, metavar="EPOCHS", help=AVERAGE_HELP),
    layers: Optional[str] = typer.Option(None, metavar="L,L,...",
                                         help="Hidden states of the cached frames to train on, e.g. 6,12."),
    require_full_coverage: Optional[bool] = typer.Option(None, "--require-full-coverage", help="Fail before "
                                                         "training when a scored split lost a labelled utterance."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=TRAIN_SET_HELP),
) -> None:
    """The five variants (audio, audio+gs, audio+gs+les, full, concat): ablation.json and a table."""
    from msf.trainer.ablate import ablate as run_ablation, chosen_variants, tables
    from msf.trainer.folds import ablate_folds, chosen_folds, folds_table
    from msf.trainer.train import train_settings

    with user_errors():
        options = train_settings(set_, preset=preset, fold=fold, device=device, name=name, epochs=epochs,
                                 labels=renamed(labels, corpus_old, "--corpus", "--labels"),
                                 speaker_norm=speaker_norm, average_epochs=average_epochs,
                                 layers=parse_layers(layers), require_full_coverage=require_full_coverage)
        chosen = chosen_variants(None if variants is None else [v.strip() for v in variants.split(",")])
        if folds is None:
            print_markdown_tables(tables(run_ablation(features, out, seeds=seeds, seed=seed, prosody=prosody,
                                                      variants=chosen, **options)))
            return
        chosen_k = chosen_folds(folds, fold, features, options.get("name", "default"), "ablates")
        summary = ablate_folds(chosen_k, out, lambda k, o: run_ablation(
            features, o, seeds=seeds, seed=seed, prosody=prosody, variants=chosen, **{**options, "fold": k}))
    print_markdown_tables(folds_table(summary))


@app.command()
def ensemble(
    run: List[Path] = typer.Option(..., metavar="DIR", help="A member run (repeat --run for each); runs trained "
                                   "with --folds make an ensemble per fold."),
    out: Path = typer.Option(..., metavar="DIR", help="The ensemble folder to write (then `--run DIR` in predict "
                                                   "and evaluate)."),
    weights: str = typer.Option("equal", metavar="equal|dev", help="equal: the members averaged; dev: per target, "
                                "non-negative weights summing to one fitted on the dev split of --features (the "
                                "test split is never read to choose them)."),
    features: Optional[Path] = typer.Option(None, metavar="DIR", help="A cache to fit dev weights on and to score "
                                            "the ensemble on (OUT/metrics.json, OUT/predictions.csv)."),
    name: Optional[str] = typer.Option(None, metavar="NAME", help="The cache's feature set (default: each run's)."),
    labels: Optional[str] = typer.Option(None, metavar="MANIFEST", help=LABELS_HELP),
    device: str = typer.Option("cpu", metavar="DEVICE", help=DEVICE_HELP),
) -> None:
    """Several trained runs as one predictor: OUT records its members by path and fingerprint (a member
    changed or missing is refused by name) and their weights; predict and evaluate take it as one --run."""
    from msf.trainer.ensemble import make_ensemble

    with user_errors():
        result = make_ensemble(run, out, weights, features, device, name, labels)
    print(json.dumps(result))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), metavar="DIR", help="Output directory."),
    n: int = typer.Option(300, metavar="N", help="Utterances in the demo corpus."),
    seed: int = typer.Option(0, metavar="S", help="Corpus seed: the same seed gives byte-identical audio."),
    workers: int = typer.Option(2, metavar="N", help="Local Dask workers for extraction."),
    alignment: str = typer.Option("automatic", metavar="automatic|provided",
                                  help="automatic (PocketSphinx forced alignment) or provided "
                                                    "(the synthesiser's word times: the upper bound)."),
) -> None:
    """The whole product on a synthetic corpus: build it, extract with the offline profile, report."""
    from msf.trainer.demo import run_demo

    with user_errors():
        if alignment not in ("automatic", "provided"):
            raise UsageError(f"--alignment is automatic or provided, not {alignment!r}")
        run_demo(out, n=n, seed=seed, workers=workers, alignment=alignment)  # type: ignore[arg-type]


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
        _interrupted()
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a silent exit 130
            _interrupted()
        raise


def _interrupted() -> None:
    ERR.print("interrupted; everything committed so far is kept and the next run resumes from it")
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
