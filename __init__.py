"""msf: offline feature extraction, caching and training for MSF-SER speech emotion recognition."""

import os

# oneDNN caches compiled CPU kernels per input shape (1024 by default). Audio batches come in ever
# new lengths, so that cache alone grew an extraction to 10 GB RSS; 16 keeps the speed
# (bench/acoustic.py) at a flat ~0.7 GB. Set before torch first runs; a user's own value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__version__ = "0.1.0"
