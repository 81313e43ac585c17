"""msf: offline feature extraction, caching and training for MSF-SER speech emotion recognition.

The public read API: `msf.open_cache(path, name)` (docs/api.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the view here would import the whole pipeline with `import msf`
    from msf.pipeline.cache.view import CacheView

# oneDNN caches compiled CPU kernels per input shape (1024 by default). Audio batches come in ever
# new lengths, so that cache alone grew an extraction to 10 GB RSS; 16 keeps the speed
# (bench/acoustic.py) at a flat ~0.7 GB. Set before torch first runs; a user's own value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__version__ = "0.1.0"
__all__ = ["open_cache", "MsfError", "UsageError", "NotFound", "CacheDamaged", "__version__"]

# The errors the read API raises, catchable as msf.NotFound etc. (docs/api.md); a light module.
from msf.pipeline.errors import CacheDamaged, MsfError, NotFound, UsageError  # noqa: E402


def open_cache(path: str | os.PathLike[str], name: str = "default") -> CacheView:
    """A read-only view of one named feature set of an msf cache: its utterances, settings and
    fingerprints, records, array columns and torch Datasets (docs/api.md). Close it, or use `with`."""
    from pathlib import Path

    from msf.pipeline.cache.view import CacheView

    return CacheView.open(Path(path), name)
