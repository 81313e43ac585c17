"""The built-in stages; importing this package registers them."""

from msf.pipeline.stages import align, audio  # noqa: F401
