"""msf's own error types: problems msf can explain in one line (a user mistake, an unusable input or
model). The CLI shows these as `error: ...` with exit 2; anything else is a bug and shows as one."""

from __future__ import annotations


class MsfError(Exception):
    """A problem the user can fix, explained in the message; never a bug in msf."""


class UsageError(MsfError, ValueError):
    """A wrong option, argument or combination of settings."""


class NotFound(MsfError, KeyError):
    """A named thing (stage, utterance, entry, feature set, file) that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CacheDamaged(MsfError):
    """The cache on disk does not match its index (a shard deleted or damaged outside msf)."""
