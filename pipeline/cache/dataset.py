"""A `torch.utils.data.Dataset` over any declared fields of a feature set's split (`view.dataset(...)`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from msf.pipeline.cache.columns import ArrayColumn
from msf.pipeline.corpus import Utterance


@dataclass
class CacheDataset(torch.utils.data.Dataset):
    """Item k: a dict with `id`, `speaker`, `split`, the labels (NaN where the corpus has none) and one
    entry per field, keyed by its name (`"acoustic.frames"`). Array fields are read from the shards when
    the item is taken (float arrays as float32 tensors); other fields were read when it was made."""

    utterances: list[Utterance]
    arrays: dict[str, ArrayColumn]
    values: dict[str, list[Any]]
    max_frames: dict[str, int | None]  # per array field: frames kept from the start (max_seconds)
    variable: frozenset[str]  # array fields whose first dimension varies per utterance (frames, words)
    targets: list[str]  # every item has each, NaN where an utterance is not rated on it (corpus.target_names)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, k: int) -> dict[str, Any]:
        u = self.utterances[k]
        item: dict[str, Any] = {"id": u.id, "speaker": u.speaker, "split": u.split}
        for t in self.targets:
            v = u.targets.get(t)
            item[t] = math.nan if v is None else float(v)
        for name, column in self.arrays.items():
            a = column.read([k], [(0, self.max_frames.get(name))])[0]
            item[name] = torch.from_numpy(np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else a.copy())
        for name, values in self.values.items():
            item[name] = values[k]
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch (pass as a DataLoader's `collate_fn`): fields whose first dimension varies (frames,
        words) zero-padded to the longest, with `NAME.lengths` (B) and `NAME.mask` (B x T, True on real
        rows); other tensors stacked; numbers as a tensor; anything else (ids, strings) as a list."""
        out: dict[str, Any] = {}
        for key in items[0]:
            values = [it[key] for it in items]
            first = values[0]
            if isinstance(first, torch.Tensor) and first.ndim >= 1:
                if key not in self.variable:
                    out[key] = torch.stack(values)
                    continue
                lengths = torch.tensor([len(v) for v in values])
                padded = first.new_zeros((len(values), int(lengths.max()), *first.shape[1:]))
                for b, v in enumerate(values):
                    padded[b, : len(v)] = v
                out[key] = padded
                out[f"{key}.lengths"] = lengths
                out[f"{key}.mask"] = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
            elif isinstance(first, (bool, int, float)) and not isinstance(first, str):
                out[key] = torch.tensor(values)
            else:
                out[key] = values
        return out
