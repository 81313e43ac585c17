"""The built-in stages; importing this package registers them."""

from msf.pipeline.stages import audio  # noqa: F401
