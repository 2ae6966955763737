"""The one exception type for user mistakes.

A `SaexError` names the bad value and what is allowed; the CLI prints its message without a traceback
and exits non-zero. Bugs stay ordinary exceptions so that they keep their tracebacks.
"""


class SaexError(ValueError):
    """A user-facing error: bad input, a missing package, a store that does not match."""
