"""`msf inspect`: one utterance's waveform, F0 and intensity contours, word boundaries and emphasis.
Without the audio (a cache copied away from its corpus), the cached per-word prosody stands in for
the contours: each word's F0 and intensity as a bar over its time span."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from msf.pipeline.audio_io import TARGET_SR
from msf.pipeline.stage import Record
from msf.pipeline.stages.emphasis import Contours, EmphasisParams


def draw_emphasis(wave: np.ndarray | None, align: Record, emphasis: Record, params: EmphasisParams, title: str,
                  out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    fig, (ax_w, ax_f, ax_i) = plt.subplots(3, 1, figsize=(12, 7), sharex=True, height_ratios=[1.2, 1, 1])
    ref = float(emphasis["speaker_f0_hz"])
    if wave is not None:
        c = Contours(wave, params.pitch_floor, params.pitch_ceiling)
        ax_w.plot(np.arange(len(wave)) / TARGET_SR, wave, lw=0.4, color="0.3")
        ax_f.plot(c.f0_t, c.f0, ".", ms=2.5, color="tab:blue")
        ax_i.plot(c.int_t, c.intensity, lw=1, color="tab:orange")
    else:  # the cached word-level prosody: F0 mean re the speaker, intensity mean re the utterance
        ax_w.set_ylim(-1, 1)
        ax_w.text(0.5, 0.5, "audio not available: cached word-level prosody only", transform=ax_w.transAxes,
                  ha="center", color="0.5")
        for s, e, f0, db, v in zip(align["start"], align["end"], emphasis["f0_mean_st"],
                                   emphasis["intensity_mean_db"], emphasis["voiced"]):
            if v:
                ax_f.hlines(ref * 2 ** (float(f0) / 12), s, e, color="tab:blue", lw=3)
            ax_i.hlines(float(db), s, e, color="tab:orange", lw=3)
    ax_f.axhline(ref, ls=":", color="tab:blue", lw=1, label="speaker median F0")
    for w, s, e, score, flag in zip(align["words"], align["start"], align["end"], emphasis["score"],
                                    emphasis["emphasized"]):
        for ax in (ax_w, ax_f, ax_i):
            if flag:
                ax.axvspan(s, e, color="tab:red", alpha=0.18, lw=0)
            ax.axvline(s, color="0.6", lw=0.6)
            ax.axvline(e, color="0.6", lw=0.6, ls="--")
        ax_w.text((s + e) / 2, ax_w.get_ylim()[1] * 0.85, f"{w}\n{score:.2f}", ha="center", va="top", fontsize=8,
                  color="tab:red" if flag else "black", fontweight="bold" if flag else "normal")
    ax_w.set_ylabel("waveform")
    ax_f.set_ylabel("F0 (Hz)")
    ax_f.legend(loc="upper right", fontsize=8)
    ax_i.set_ylabel("intensity (dB)" if wave is not None else "intensity (dB re utterance)")
    ax_i.set_xlabel("time (s); red: emphasised words; labels: word and emphasis score")
    ax_w.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def inspect_utterance(cache: Path, name: str, utt: str, out: Path) -> bool:
    """`msf inspect`: one utterance's figure from a cache's feature set, written to `out`; whether its
    audio was there (without it, a copied cache: the words and their cached prosody only)."""
    from msf.pipeline.audio_io import load_waveform
    from msf.pipeline.cache.view import open_view
    from msf.pipeline.errors import NotFound
    from msf.pipeline.stages.emphasis import EmphasisStage

    check_figure_path(out, utt)
    with open_view(cache, name) as view:
        u = next((u for u in view.utterances if u.id == utt), None)
        if u is None:
            raise NotFound(f"no utterance {utt!r} in feature set {name!r} of {cache}")
        (align, _), (emphasis, _) = view.read("align", utt), view.read("emphasis", utt)
        wave = load_waveform(u.audio) if os.path.isfile(u.audio) else None
        draw_emphasis(wave, align, emphasis, view.config.params_for(EmphasisStage),  # type: ignore[arg-type]
                      f"{utt}: {align['transcript']}", out)
    return wave is not None


def check_figure_path(out: Path, utt: str) -> None:
    """matplotlib would write OUT/.png for a folder and PATH.png for a name without a suffix, and
    raise a bare ValueError for a suffix it cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    from msf.pipeline.errors import UsageError

    kinds = FigureCanvasBase.get_supported_filetypes()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name the file to write, e.g. {out / (utt + '.png')}")
    if out.suffix.lstrip(".").lower() not in kinds:
        raise UsageError(f"--out {out}: the figure is written as .png, .pdf, .svg or another of "
                         f"{', '.join(sorted(kinds))}; end the name with one")
