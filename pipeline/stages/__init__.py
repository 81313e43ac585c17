"""The built-in stages; importing this package registers them."""

from msf.pipeline.stages import acoustic, align, audio, emphasis  # noqa: F401
