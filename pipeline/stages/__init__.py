"""The built-in stages; importing this package registers them."""

from msf.pipeline.stages import (  # noqa: F401
    acoustic, align, audio, describe, emphasis, extended_semantics, global_semantics, local_semantics,
)
