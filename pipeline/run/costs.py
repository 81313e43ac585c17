"""What an extraction would cost before it runs: the dry run's estimate per stage (what would be
computed and why, bytes and wall time from a short calibration), every model and setting it needs,
and the free-space guard a real run checks first. A part of `Extraction` (extraction.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from msf.pipeline.cache.planning import Plan, reasons
from msf.pipeline.corpus import Corpus
from msf.pipeline.errors import UsageError
from msf.pipeline.run.estimate import (Estimate, Sends, StageCost, audio_durations, calibrate as calibrate_stages,
                                       estimate_stage, pick_for_calibration)
from msf.pipeline.run.executors import Executor
from msf.pipeline.run.requirements import Requirement, blocked_stages, requirements
from msf.pipeline.stage import stage_class, stage_order

if TYPE_CHECKING:
    from msf.pipeline.run.extraction import Extraction


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or would, once created)."""
    import shutil

    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def remote_tainted(plan: Plan) -> set[str]:
    """The stages that send words or audio to a host off this machine, and those downstream of them
    (computing them would send too)."""
    out: set[str] = set()
    for name in plan.order:
        cls = plan[name].stage
        egress = cls(plan[name].params).egress()
        if (egress is not None and not egress.loopback) or any(up in out for up in cls.needs):
            out.add(name)
    return out


class RunCosts:
    """The estimating half of an `Extraction` (it supplies `config`, `store`, `root`, `plan`, `planner`
    and `_chunk_plans`)."""

    def dry_run(self, stages: list[str], calibrate: int = 5) -> dict[str, Estimate]:
        """Per stage: what would be computed and why, and its estimated bytes and wall time. Computes
        and writes nothing in the cache (open it with `dry_run=True`), and sends nothing off this
        machine: stages that would are not calibrated (their time is unknown), only counted."""
        plan = self.plan(stages)
        blocked = blocked_stages(self.requirements(stages), plan.order)  # listed, not calibrated
        planner = self.planner(plan)
        work = {name: planner.work(name) for name in plan.order}
        need = {u for w in work.values() for u in w.compute}
        durations = audio_durations(plan.sources[u].utt.audio for u in need)
        costs: dict[str, StageCost] = {}
        remote = remote_tainted(plan)
        busy = [n for n in plan.order if work[n].compute and n not in remote and n not in blocked]
        if calibrate > 0 and busy:
            utts = [plan.sources[u].utt for u in need]
            costs = calibrate_stages(self._calibration_extraction, pick_for_calibration(utts, durations, calibrate),
                                     busy, self.config.params_for)
        out: dict[str, Estimate] = {}
        for name in plan.order:
            w = work[name]
            us = w.compute
            stage = plan[name].stage(plan[name].params)
            why = {r: len(u) for r, u in reasons(plan, self.store.index, name, w.state).items()}
            out[name] = estimate_stage(stage, [durations[plan.sources[u].utt.audio] for u in us],
                                       len(w.state.fresh) - w.recomputed, why, costs.get(name), len(w.tasks),
                                       self.config.workers, None if self.config.scheduler else os.cpu_count())
            out[name].blocked = blocked.get(name)
            egress = stage.egress()
            if egress is not None:
                audio = (None if egress.max_audio_s is None
                         else sum(min(durations[plan.sources[u].utt.audio], egress.max_audio_s) for u in us))
                out[name].sends = Sends(egress.host, len(us), audio, egress.loopback)
        return out

    def requirements(self, stages: list[str]) -> list[Requirement]:
        """Every model and setting the stages need, present or missing (nothing loaded)."""
        return requirements(self.config, stages)

    def _calibration_extraction(self, root: Path, corpus: Corpus, executor: Executor) -> "Extraction":
        settings = self.config.model_copy(update={"cache": root, "name": "calibration", "shard_size": 1, "workers": 1,
                                                  "scheduler": None})
        return type(self)(settings, corpus=corpus, executor=executor)  # type: ignore[call-arg]

    def _check_free_space(self, stages: list[str]) -> None:
        """Stop before a run whose declared output would not fit on the cache's filesystem (a pass over
        the chunks' plans, when a stage declares its output size)."""
        declared = [name for name in stage_order(stages)
                    if stage_class(name)(self.config.params_for(stage_class(name))).declared_bytes(1.0) is not None]
        if not declared:
            return
        free = free_bytes(self.root)
        total = 0.0
        need = dict.fromkeys(declared, 0.0)
        plans = self._chunk_plans(stages)
        try:
            for plan in plans:
                planner = self.planner(plan)
                durations: dict[str, float] | None = None
                for name in declared:
                    us = planner.work(name).compute
                    if not us:
                        continue
                    if durations is None:
                        durations = audio_durations(s.utt.audio for s in plan.sources.values())
                    stage = plan[name].stage(plan[name].params)
                    more = sum(stage.declared_bytes(durations[plan.sources[u].utt.audio]) or 0.0 for u in us)
                    need[name] += more
                    total += more
                    if total > free:
                        raise UsageError(
                            f"stage {name!r} would write about {human_bytes(need[name])} or more ({human_bytes(total)} "
                            f"for this run so far), but the filesystem of {self.root} has {human_bytes(free)} free. "
                            "Free some space, keep fewer layers or float16, extract to another --cache, or pass "
                            "--force to go on; `msf extract --dry-run` shows the whole estimate.")
        finally:
            plans.close()

