"""Seven cheap stages for bench/scale.py: a chain after `audio` whose compute costs next to nothing, so
the figures measure msf's own overhead per entry (planning, tasks, shards, the index). `scale_d` ends
the five-stage chain of the 100k row; `scale_g` the eight-stage one of the MSP-Podcast-shaped row."""

from __future__ import annotations

import numpy as np

from msf.pipeline.stage import Item, Record, Stage, StageParams, register


class ChainParams(StageParams):
    factor: float = 1.0


def _chain(name: str, needs: tuple[str, ...]) -> type[Stage]:
    def compute(self: Stage, batch: list[Item]) -> list[Record | Exception]:
        f = self.params.factor  # type: ignore[attr-defined]
        return [{"value": f * float(np.mean([it.inputs[n]["duration" if n == "audio" else "value"] for n in needs])),
                 "trace": np.full(4, f, np.float32)} for it in batch]

    cls = type(name, (Stage,), {"name": name, "needs": needs, "Params": ChainParams, "batch_size": 256,
                                "compute": compute, "__module__": __name__})
    return register(cls)


_chain("scale_a", ("audio",))
_chain("scale_b", ("scale_a",))
_chain("scale_c", ("scale_b",))
_chain("scale_d", ("scale_c", "scale_a"))
_chain("scale_e", ("scale_d",))
_chain("scale_f", ("scale_e", "audio"))
_chain("scale_g", ("scale_f",))
