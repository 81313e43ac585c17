"""msf's own error types: problems msf can explain in one line (a user mistake, an unusable input or
model). The CLI shows these as `error: ...` with exit 2; anything else is a bug and shows as one."""

from __future__ import annotations

# The exit status of every `msf` command (README, "Exit status"): a script tells a clean run from a partial one.
EXIT_OK = 0
EXIT_BUG = 1  # an internal error: a bug in msf, reported with its traceback
EXIT_USAGE = 2  # msf's own error: a wrong option, an unusable corpus, a model missing; nothing was run
# finished, but some utterances failed (extract: recorded, `msf status --failed`, retried next run;
# predict: rows with an `error`) or damaged entries were found and dropped (cache verify)
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130  # Ctrl-C: everything committed so far is kept


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
