"""What a run needs before it starts: every model its stages would load and every setting they cannot
run without (a describe endpoint), checked all at once and without loading anything. The dry run lists
them, present or missing; a real run that lacks any stops before any work with all of them in one
message, not one model per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from msf.pipeline.backends.model_loading import model_present, remedy
from msf.pipeline.config import MsfConfig
from msf.pipeline.errors import UsageError
from msf.pipeline.stage import ModelNeed, stage_class, stage_order


@dataclass(frozen=True)
class Requirement:
    """One model (named by one or more settings) or one setting a run's stages need."""

    what: str  # "model 'roberta-large' (global.model, local.model)" or "describe"
    short: str  # "roberta-large missing", "describe settings incomplete": what the dry run's table says
    stages: tuple[str, ...]  # the stages that need it
    present: bool
    remedy: str = ""  # what to do, when missing
    when: str = ""  # "" = every run needs it; else when it is loaded: listed, never a blocker

    @property
    def blocking(self) -> bool:
        return not self.present and not self.when

    def line(self) -> str:
        when = f", needed {self.when}" if self.when else ""
        return f"{self.what}{when}: " + ("present" if self.present else f"MISSING: {self.remedy}")


class MissingRequirements(UsageError):
    """Models or settings a run cannot start without; the message lists every one of them."""

    def __init__(self, missing: list[Requirement]):
        self.missing = missing
        lines = "\n".join(f"  - {r.what}: {r.remedy}" for r in missing)
        super().__init__(f"cannot start: {len(missing)} thing(s) missing (nothing was computed):\n{lines}")


def requirements(config: MsfConfig, stages: list[str]) -> list[Requirement]:
    """Every model and setting that `stages` and everything upstream of them need, with their state.
    A model named by several stages (RoBERTa for GS, LES and ES) is one requirement."""
    out: list[Requirement] = []
    needs: dict[tuple[str, str], list[tuple[str, ModelNeed]]] = {}  # (model, kind) -> (stage, need) of each
    for name in stage_order(stages):
        cls = stage_class(name)
        stage = cls(config.params_for(cls))
        try:
            stage.preflight()
        except UsageError as e:
            out.append(Requirement(name, f"{name} settings incomplete", (name,), False,
                                   str(e).removeprefix(f"{name}: ")))
        for need in stage.models():
            needs.setdefault((need.model, need.kind), []).append((name, need))
    for (model, kind), users in needs.items():
        first = users[0][1]
        present = model_present(model, kind)
        # needed by every run of one of its stages: always; else when the first stage says
        when = "" if any(not n.when for _, n in users) else first.when
        out.append(Requirement(f"model {model!r} ({', '.join(n.param for _, n in users)})", f"{model} missing",
                               tuple(s for s, _ in users), present,
                               "" if present else f"not on this machine; {remedy(first.param, first.offline, kind)}",
                               when))
    return out


def blocked_stages(found: list[Requirement], order: list[str]) -> dict[str, str]:
    """Stage -> why it cannot run: something it needs is missing, or a stage upstream of it cannot run."""
    out: dict[str, str] = {}
    for r in found:
        if r.blocking:
            for s in r.stages:
                out.setdefault(s, r.short)
    for name in order:  # upstream first
        if name not in out:
            up = next((u for u in stage_class(name).needs if u in out), None)
            if up is not None:
                out[name] = f"upstream {up} blocked"
    return out


def require_all(config: MsfConfig, stages: list[str]) -> None:
    """Raise MissingRequirements listing everything missing that a run of `stages` would stop on."""
    missing = [r for r in requirements(config, stages) if r.blocking]
    if missing:
        raise MissingRequirements(missing)
