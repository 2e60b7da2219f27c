"""The one exception type of the data pipeline: a user-facing, one-line problem."""

from __future__ import annotations


class DataPipelineError(Exception):
    """A problem the user can fix (bad input, bad option, conflicting output).

    The CLI prints ``str(err)`` as a single line without a traceback, so the message must name
    the offending path or option and say what was expected.
    """


class ShardVerifyError(DataPipelineError):
    """A shard's bytes do not match its index.json (a failed check, not a bad argument)."""
