"""Small deterministic stages for testing the framework (registered as a plugin module)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from msf.pipeline.stage import Item, Record, Stage, StageParams, UtteranceError, register


class EnergyParams(StageParams):
    hop: int = 160
    gain: float = 1.0


@register
class ToyEnergy(Stage):
    """Ragged (T, 2) float16 frames: log energy and zero-crossing rate."""

    name = "toy_energy"
    needs = ("audio",)
    Params = EnergyParams

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        out: list[Record | Exception] = []
        for item in batch:
            x = item.waveform
            hop = self.params.hop  # type: ignore[attr-defined]
            frames = x[: len(x) // hop * hop].reshape(-1, hop)
            energy = np.log(np.mean(frames**2, axis=1) + 1e-9) * self.params.gain  # type: ignore[attr-defined]
            zcr = np.mean(np.abs(np.diff(np.sign(frames), axis=1)) > 0, axis=1)
            out.append({"frames": np.stack([energy, zcr], axis=1).astype(np.float16), "hop": hop})
        return out

    def declared_bytes(self, seconds: float) -> float | None:
        return seconds * 16000 / self.params.hop * 2 * 2  # type: ignore[attr-defined]  # (T, 2) float16


class SummaryParams(StageParams):
    scale: float = 1.0


@register
class ToySummary(Stage):
    name = "toy_summary"
    needs = ("toy_energy",)
    Params = SummaryParams

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        return [
            {
                "mean": np.asarray(it.inputs["toy_energy"]["frames"], np.float32).mean(0) * self.params.scale,  # type: ignore[attr-defined]
                "n_frames": int(len(it.inputs["toy_energy"]["frames"])),
                "speaker": it.utt.speaker,
                "tags": np.asarray([it.utt.id, it.utt.split]),
            }
            for it in batch
        ]


class GroupParams(StageParams):
    offset: float = 0.0


@register
class ToySpeakerRelative(Stage):
    """Each utterance's mean energy minus its speaker's: a group stage (computed with its whole group)."""

    name = "toy_speaker_relative"
    needs = ("toy_energy",)
    group_by = "speaker"
    Params = GroupParams

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        means = {it.utt.id: float(np.asarray(it.inputs["toy_energy"]["frames"], np.float32)[:, 0].mean())
                 for it in batch}
        groups: dict[str, list[float]] = {}
        for it in batch:
            groups.setdefault(it.utt.speaker, []).append(means[it.utt.id])
        return [{"relative": means[it.utt.id] - float(np.mean(groups[it.utt.speaker])) + self.params.offset,  # type: ignore[attr-defined]
                 "group_size": len(groups[it.utt.speaker])} for it in batch]


class SlowParams(StageParams):
    delay: float = 0.0
    device: str = "cpu"


@register
class ToySlow(Stage):
    """Like toy_energy, but slow on purpose (for interruption tests); delay cannot change results."""

    name = "toy_slow"
    needs = ("audio",)
    Params = SlowParams
    volatile = frozenset({"delay", "device"})

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        time.sleep(self.params.delay * len(batch))  # type: ignore[attr-defined]
        out: list[Record | Exception] = []
        for item in batch:
            x = item.waveform
            frames = x[: len(x) // 320 * 320].reshape(-1, 320)
            out.append({"frames": np.stack([frames.mean(1), frames.std(1)], 1).astype(np.float16),
                        "rms": float(np.sqrt(np.mean(x**2)))})
        return out


class FragileParams(StageParams):
    die_on: str = ""  # the utterance whose first visit SIGKILLs the worker process computing it
    marker: str = ""  # a file that records the kill, so the retried task survives


@register
class ToyFragile(Stage):
    """toy_summary's twin that kills its own worker process once, at a fixed point (a fault injected
    at a chosen utterance, never after a random sleep); its fault settings cannot change results."""

    name = "toy_fragile"
    needs = ("toy_energy",)
    Params = FragileParams
    volatile = frozenset({"die_on", "marker"})

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        p: FragileParams = self.params  # type: ignore[assignment]
        for it in batch:
            if it.utt.id == p.die_on and p.marker and not os.path.exists(p.marker):
                with open(p.marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        return [{"mean": np.asarray(it.inputs["toy_energy"]["frames"], np.float32).mean(0)} for it in batch]


class PickyParams(StageParams):
    refuse: str = ""  # the utterance this setting cannot process


@register
class ToyPicky(Stage):
    """A stage whose success depends on a setting: one variant fails an utterance that another computes."""

    name = "toy_picky"
    needs = ("audio",)
    Params = PickyParams

    def compute(self, batch: list[Item]) -> list[Record | Exception]:
        refuse = self.params.refuse  # type: ignore[attr-defined]
        return [UtteranceError(f"refused by this setting (refuse={refuse})") if it.utt.id == refuse
                else {"rms": float(np.sqrt(np.mean(it.waveform**2)))} for it in batch]
